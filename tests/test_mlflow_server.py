"""Logging to a real ``mlflow server`` on 127.0.0.1, and what happens when it is unreachable: training goes on,
one warning, the records wait in the run directory and reach MLflow afterwards (by themselves or by the sync)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from stereo_exp.engine import checkpoint as ckpt
from stereo_exp.engine.trainer import train
from stereo_exp.tracking import MlflowTracker, TrackingConfig
from stereo_exp.tracking.server import MlflowServer, free_port
from stereo_exp.tracking.spool import Spool
from stereo_exp.tracking.sync import main as sync_main
from tests.conftest import TINY_RUN, compose_train_config, subprocess_env

pytest_plugins = ["tests.cluster_fixtures"]

UNREACHABLE = "is unreachable"  # the tracker's one warning


def history(client: MlflowClient, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.network
def test_a_training_run_logs_params_metrics_and_its_checkpoint_to_the_server(shared_mlflow_server, tmp_path, capsys):
    cfg = compose_train_config(
        tmp_path / "run",
        "tracking=mlflow",
        f"tracking.uri={shared_mlflow_server.uri}",
        "tracking.experiment=server-run",
    )
    result = train(cfg)
    # The summary points at the run's page on that server; no `mlflow ui` to start for a server.
    summary = capsys.readouterr().out
    assert f"MLflow run: {shared_mlflow_server.uri}/#/experiments/" in summary and "mlflow ui" not in summary

    client = MlflowClient(shared_mlflow_server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["mix.dataset_steps"] == "[6]"
    assert [step for step, _ in history(client, result.run_id)] == [1, 2, 3, 4, 5, 6]
    assert [a.path for a in client.list_artifacts(result.run_id, "checkpoints")] == ["checkpoints/step_0000006.pth"]
    # The artifact went through the server into its own store: jobs need no file system shared with it.
    stored = shared_mlflow_server.root / "artifacts" / run.info.experiment_id / result.run_id / "artifacts"
    assert (stored / "checkpoints" / "step_0000006.pth").stat().st_size == result.checkpoint.stat().st_size
    assert not Spool(tmp_path / "run").path.exists()  # nothing had to wait


@pytest.mark.network
@pytest.mark.slow
def test_a_run_keeps_training_while_the_server_is_down_warns_once_and_its_records_are_synced_later(
    mlflow_server: MlflowServer, tmp_path
):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "stereo_exp",
        *TINY_RUN,
        f"hydra.run.dir={run_dir}",
        "mix.dataset_steps=[30]",
        "checkpoint.every=5",
        "train.val_every=15",
        "tracking=mlflow",
        f"tracking.uri={mlflow_server.uri}",
        "tracking.experiment=outage",
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 180
    while not (run_dir / "checkpoints" / "step_0000005.pth").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-4000:]
        time.sleep(0.05)
    mlflow_server.stop()  # mid-run
    output = process.communicate(timeout=240)[0]

    assert process.returncode == 0, output[-4000:]
    assert ckpt.load_checkpoint(run_dir / "checkpoints" / "step_0000030.pth")["step"] == 30  # trained to the end
    assert output.count(UNREACHABLE) == 1, output[-4000:]  # one warning for the whole outage
    assert "python -m stereo_exp.tracking.sync" in output
    waiting = Spool(run_dir)
    assert waiting.has_pending()

    mlflow_server.start()  # same port, same database
    assert sync_main([str(tmp_path)]) == 0  # finds the run dir below tmp_path; sends to the URI the run used
    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert run.info.status == "FINISHED"
    assert [step for step, _ in history(client, run.info.run_id)] == list(range(1, 31))  # every step, once
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/synthetic-val/mae")] == [0, 15, 30]
    assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not waiting.has_pending()
    assert sync_main([str(run_dir)]) == 0  # a second sync has nothing left to send


@pytest.mark.network
def test_records_of_an_outage_are_sent_at_the_first_call_once_the_server_is_back_without_repeating_steps(
    mlflow_server: MlflowServer, tmp_path, caplog
):
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="back", offline_retry_s=0.0)
    first = MlflowTracker(cfg, spool_dir=tmp_path)
    run_id = first.start(params={"seed": 0})
    for step in (1, 2, 3):  # the first attempt logs steps 1-3, its last checkpoint is at step 1
        first.log_metrics({"train/loss": float(step)}, step)

    mlflow_server.stop()
    resumed = MlflowTracker(cfg, spool_dir=tmp_path)  # the requeued job, while the server is down
    with caplog.at_level(logging.WARNING, logger="stereo_exp.tracking.mlflow_tracker"):
        assert resumed.start(params={"seed": 0}, run_id=run_id) == run_id
        for step in (2, 3, 4, 5):  # steps 2 and 3 are replayed from the checkpoint, with the same values
            resumed.log_metrics({"train/loss": float(step)}, step)
    assert resumed.offline
    assert [r.getMessage().count(UNREACHABLE) for r in caplog.records] == [1]

    mlflow_server.start()
    resumed.log_metrics({"train/loss": 6.0}, 6)  # the first call after the outage sends what waited, then itself
    assert not resumed.offline
    resumed.end()
    client = MlflowClient(mlflow_server.uri)
    assert history(client, run_id) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 6.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    state = Spool(tmp_path).read_state()
    assert (state.duplicates, state.refused) == (2, [])  # steps 2 and 3 were already in MLflow


@pytest.mark.network
def test_a_dead_server_costs_seconds_and_a_run_created_meanwhile_is_created_by_the_sync(tmp_path):
    port = free_port()  # nothing listens there yet
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{port}", experiment="late", run_name="offline start")
    tracker = MlflowTracker(cfg, spool_dir=tmp_path / "run")
    environment = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP_REQUEST_")}
    tic = time.monotonic()
    placeholder = tracker.start(params={"schedule": {"lr": 4e-4}})
    # MLflow's defaults (7 retries, backoff 2, timeout 120 s) would block here for about 4 minutes.
    assert time.monotonic() - tic < 15
    assert placeholder.startswith("offline-")
    # The tracker's HTTP settings applied to its own calls only: the environment is as it was.
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP_REQUEST_")} == environment
    tracker.log_metrics({"train/loss": 0.5}, 1)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    tracker.log_artifact(tmp_path / "config.yaml")
    tracker.end()

    with MlflowServer(tmp_path / "server", port=port) as server:
        assert sync_main([str(tmp_path / "run")]) == 0
        client = MlflowClient(server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("late").experiment_id])
        assert run.info.run_name == "offline start" and run.info.status == "FINISHED"
        assert run.data.params == {"schedule.lr": "0.0004"}
        assert history(client, run.info.run_id) == [(1, 0.5)]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
        # The checkpoint keeps the placeholder; the spool's state maps it to the run the sync created.
        assert Spool(tmp_path / "run").read_state().run_ids == {placeholder: run.info.run_id}
        resumed = MlflowTracker(cfg, spool_dir=tmp_path / "run")
        assert resumed.start(run_id=placeholder) == run.info.run_id


def test_a_refused_record_is_reported_and_the_rest_is_sent(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spool = Spool(tmp_path / "run")
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("refused")).info.run_id
    spool.append({"op": "metrics", "run": run_id, "step": 1, "timestamp": 0, "metrics": {"loss": 1.0}, "uri": uri})
    spool.append({"op": "artifact", "run": run_id, "path": str(tmp_path / "gone.txt"), "artifact_path": None})
    with spool.path.open("a") as file:
        file.write('{"op": "metrics", "run": "')  # a writer killed mid-line ...
    resumed = Spool(tmp_path / "run")  # ... and the process of the resumed run
    resumed.append({"op": "metrics", "run": run_id, "step": 2, "timestamp": 0, "metrics": {"loss": 0.5}})

    assert sync_main([str(tmp_path / "run")]) == 1  # not everything could be sent
    report = capsys.readouterr().out
    assert "3 records sent" not in report and "2 records sent" in report
    assert "2 refused" in report and "gone.txt of run" in report and "no longer exists" in report
    assert "line 3 (unreadable)" in report
    assert history(client, run_id, "loss") == [(1, 1.0), (2, 0.5)]


@pytest.mark.network
@pytest.mark.parametrize("probe_timeout_s", [0.5, 2.0])
def test_a_hung_server_costs_probe_timeout_s_at_start_then_the_records_wait_in_the_run_folder(
    tmp_path, caplog, probe_timeout_s
):
    # A real hung server on 127.0.0.1: it accepts connections (the kernel completes them into the listen backlog)
    # and never answers. Without the probe, the first call waited http_timeout_s x (1 + retries) plus back-off,
    # about 40 s with the defaults, before training could start.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        tracker = MlflowTracker(TrackingConfig(uri=uri, probe_timeout_s=probe_timeout_s), spool_dir=tmp_path)
        tic = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="stereo_exp.tracking.mlflow_tracker"):
            run_id = tracker.start(params={"seed": 0})
            tracker.log_metrics({"train/loss": 1.0}, 1)  # offline: goes to the spool, no new wait
        elapsed = time.monotonic() - tic
    assert probe_timeout_s <= elapsed < probe_timeout_s + 1.5
    assert run_id.startswith("offline-") and tracker.offline
    (warning,) = [r.getMessage() for r in caplog.records if UNREACHABLE in r.getMessage()]
    assert f"no answer to GET /health within {probe_timeout_s:g} s (tracking.probe_timeout_s)" in warning
    assert [record["op"] for _, record in Spool(tmp_path).pending(Spool(tmp_path).read_state())] == [
        "create_run",
        "params",
        "metrics",
    ]


def test_a_server_started_for_every_interface_says_to_log_to_it_by_this_machines_name(tmp_path):
    # `start --host 0.0.0.0` (README, for jobs on other nodes) said "tracking.uri=http://0.0.0.0:PORT": a job on
    # another node would log to its own machine.
    server = [sys.executable, "-m", "stereo_exp.tracking.server"]
    where = ["--dir", str(tmp_path), "--port", str(free_port())]
    run = {"capture_output": True, "text": True, "env": subprocess_env(), "timeout": 180}
    started = subprocess.run([*server, "start", *where, "--host", "0.0.0.0"], **run)
    try:
        assert started.returncode == 0, started.stderr
        uri = f"http://{socket.gethostname()}:{where[-1]}"
        assert f"log to it with: tracking.uri={uri}   or   export MLFLOW_TRACKING_URI={uri}" in started.stdout
        with urllib.request.urlopen(f"{uri}/health", timeout=10) as answer:  # the name reaches the server
            assert answer.status == 200
    finally:
        subprocess.run([*server, "stop", *where], **run)
