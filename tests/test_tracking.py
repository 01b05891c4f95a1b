"""MLflow records written by the tracker, read back from a real SQLite store with MlflowClient."""

import logging
import time

import pytest
from mlflow.tracking import MlflowClient

from stereo_exp.distributed import DistEnv
from stereo_exp.tracking import MlflowTracker, TrackingConfig, flatten_config
from stereo_exp.tracking.sync import main as sync_main


def test_flatten_config_joins_nested_keys_with_dots():
    assert flatten_config({"optim": {"name": "adam", "betas": [0.9, 0.999]}, "seed": 3}) == {
        "optim.name": "adam",
        "optim.betas": "[0.9, 0.999]",
        "seed": "3",
    }


def test_params_metrics_and_artifacts_land_in_the_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="tests"))
    run_id = tracker.start(params={"schedule": {"lr": 4e-4}, "seed": 0}, default_name="first")
    for step in (10, 20):
        tracker.log_metrics({"train/loss": 1.0 / step}, step)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    tracker.log_artifact(tmp_path / "config.yaml")
    tracker.end()

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params == {"schedule.lr": "0.0004", "seed": "0"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(10, 0.1), (20, 0.05)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"


def test_a_resumed_run_continues_without_duplicating_replayed_steps(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MlflowTracker(TrackingConfig(uri=uri))
    run_id = first.start(params={"seed": 0})
    for step in (1, 2, 3):  # killed after step 3, last checkpoint at step 2
        first.log_metrics({"train/loss": float(step)}, step)

    resumed = MlflowTracker(TrackingConfig(uri=uri))
    assert resumed.start(params={"seed": 0}, run_id=run_id) == run_id
    for step in (3, 4):  # step 3 is replayed from the checkpoint, with the same value
        resumed.log_metrics({"train/loss": float(step)}, step)
    resumed.end()

    history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]


def test_only_rank_zero_writes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(TrackingConfig(uri=uri), DistEnv(rank=1, world_size=2))
    assert tracker.start(params={"seed": 0}) is None
    tracker.log_metrics({"x": 1.0}, 1)  # no-op
    assert not (tmp_path / "mlflow.db").exists()


def test_backend_none_records_nothing(tmp_path):
    tracker = MlflowTracker(TrackingConfig(backend="none", uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert tracker.start(params={"seed": 0}) is None
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("broken", ["not a database", "folder is a file"])
def test_a_store_that_cannot_be_written_keeps_the_records_in_the_run_folder_like_an_unreachable_server(
    tmp_path, caplog, broken
):
    if broken == "not a database":  # a damaged SQLite file
        (tmp_path / "mlflow.db").write_text("these bytes are no SQLite database\n" * 100)
        uri = f"sqlite:///{tmp_path}/mlflow.db"
    else:  # a store whose folder cannot be made
        (tmp_path / "file").write_text("")
        uri = f"sqlite:///{tmp_path}/file/mlflow.db"
    tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="kept"), spool_dir=tmp_path / "run")
    tic = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stereo_exp.tracking.mlflow_tracker"):
        run_id = tracker.start(params={"seed": 0})
        tracker.log_metrics({"train/loss": 1.0}, 1)
        tracker.end()
    assert time.monotonic() - tic < 10  # MLflow alone retries a database it cannot open for minutes
    assert run_id.startswith("offline-")
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "is unreachable" in warning and "python -m stereo_exp.tracking.sync" in warning

    # The records reach a store that works, sent by the sync.
    good = f"sqlite:///{tmp_path}/good.db"
    assert sync_main([str(tmp_path / "run"), "--uri", good]) == 0
    client = MlflowClient(good)
    (run,) = client.search_runs([client.get_experiment_by_name("kept").experiment_id])
    assert run.data.params == {"seed": "0"} and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(1, 1.0)]


def test_a_run_knows_its_key_metric_and_where_to_look_at_it_and_its_experiment_opens_on_its_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = MlflowTracker(TrackingConfig(uri="sqlite:///mlflow.db"))
    run_id = tracker.start(params={"eval": {"datasets": ["synthetic-val", "motorcycle"]}})
    client = MlflowClient("sqlite:///mlflow.db")
    run = client.get_run(run_id)
    assert run.data.tags["stereo_exp.key_metric"] == "val/synthetic-val/mae"  # the held-out set's, for compare
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    serve = f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"
    assert tracker.where() == f"{page}  (start the UI with: {serve})"
    # An experiment of training runs: MLflow 3's UI opens it on its runs, not on the GenAI overview.
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_sync_of_a_folder_that_does_not_exist_names_it_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sync_main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'missing'} is not a directory" in capsys.readouterr().err
