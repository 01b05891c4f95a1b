"""python -m stereo_exp.compare on a real MLflow store with known metric histories."""

from __future__ import annotations

import csv
import shutil

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from stereo_exp.compare import main as compare_main
from stereo_exp.tracking.sweep import SweepInfo, SweepPlan, register_sweep, sweep_id_of

MAE = "val/kitti2015-train/mae"  # the key metric of the runs below (their held-out set)
OTHER = "val/eth3d-train/mae"  # logged by some runs too; alphabetically first, but not their key metric


def add_run(client, experiment_id, name, *, sweep=None, overrides="", history=(), tags=None):
    all_tags = {**({"stereo_exp.sweep_id": sweep, "stereo_exp.overrides": overrides} if sweep else {}), **(tags or {})}
    all_tags.setdefault("stereo_exp.key_metric", MAE)
    run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
    metrics = [Metric(MAE, value, 0, step) for step, value in history]
    metrics += [Metric(OTHER, 100.0 - value, 0, step) for step, value in history]
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store: a sweep of three schedules (its folder records the store, like a launched sweep's), its parent
    run, a run of another sweep, one without val, an evaluation. Shared by the tests (they only read it): creating
    a store costs seconds."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("schedules")
    sweep_dir = tmp_path / "multirun" / "2026-11-24" / "21-45-10"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")  # what makes a folder a sweep folder (Hydra writes it)
    sweep = sweep_id_of(sweep_dir)
    plan = SweepPlan({"schedule.decay_after_steps": ["180000", "30000", "0", "60000"]}, num_jobs=4)
    info = SweepInfo(sweep, str(sweep_dir), -1, "", (), plan)
    register_sweep(client, "schedules", experiment_id, info, metrics=[MAE], wait_s=0)  # record + parent run
    common = "model=crestereo_base mix=cre_eth_mbl"  # shared by every job: not a label
    for name, decay, history in [
        ("late", 180000, [(0, 9.0), (100, 4.0), (200, 3.5)]),  # final 3.5, best 3.5 at 200
        ("early", 30000, [(0, 9.0), (100, 2.5), (200, 3.0)]),  # final 3.0, best 2.5 at 100
        ("none", 0, [(0, 9.0), (100, 5.0), (200, 4.5)]),  # final 4.5
    ]:
        add_run(
            client,
            experiment_id,
            name,
            sweep=sweep,
            overrides=f"{common} schedule.decay_after_steps={decay}",
            history=history,
        )
    add_run(client, experiment_id, "crashed", sweep=sweep, overrides=f"{common} schedule.decay_after_steps=60000")
    add_run(client, experiment_id, "other sweep", sweep="0123456789ab", overrides="seed=1", history=[(0, 1.0)])
    add_run(client, experiment_id, "evaluation", tags={"stereo_exp.task": "evaluate"}, history=[(0, 0.5)])
    return uri, sweep_dir


def test_the_table_of_a_sweep_folder_ranks_its_runs_by_the_final_key_metric_from_the_store_the_folder_records(
    store, tmp_path, monkeypatch, capsys
):
    uri, sweep_dir = store
    monkeypatch.chdir(tmp_path)  # elsewhere: the sweep folder says where its runs went, not the working directory
    assert compare_main(["--sweep", str(sweep_dir), "-o", "out"]) == 0
    table = (tmp_path / "out" / "val_kitti2015-train_mae.md").read_text()  # the key metric, not eth3d's
    printed = capsys.readouterr().out
    assert printed.startswith(table)  # what was printed is what was written, then where it came from
    assert f"{MAE} of 3 runs ({uri}, experiment schedules, sweep {sweep_id_of(sweep_dir)})" in printed
    rows = [line.split(" | ") for line in table.splitlines()[2:5]]
    assert [(r[0], r[1], r[3], r[4], r[5], r[6]) for r in rows] == [
        ("| early", "schedule.decay_after_steps=30000", "200", "3.0000", "2.5000", "100 |"),
        ("| late", "schedule.decay_after_steps=180000", "200", "3.5000", "3.5000", "200 |"),
        ("| none", "schedule.decay_after_steps=0", "200", "4.5000", "4.5000", "200 |"),
    ]
    # Reported, not dropped: the job that logged nothing. Left out: the parent run and the other sweep.
    assert table.splitlines()[-1].startswith(f"1 runs without {MAE}: crashed (")
    assert "other sweep" not in table and "sweep 2026-11-24/21-45-10" not in table
    with open(tmp_path / "out" / "val_kitti2015-train_mae.csv") as file:
        records = list(csv.DictReader(file))
    assert [(r["run"], float(r["final"]), float(r["best"]), int(r["best_step"])) for r in records] == [
        ("early", 3.0, 2.5, 100),
        ("late", 3.5, 3.5, 200),
        ("none", 4.5, 4.5, 200),
    ]
    assert records[0]["overrides"] == "model=crestereo_base mix=cre_eth_mbl schedule.decay_after_steps=30000"
    png = (tmp_path / "out" / "val_kitti2015-train_mae.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 9 * 120  # 9 in at 120 dpi
    assert not (tmp_path / "mlflow.db").exists()


def test_a_folder_of_sweeps_means_its_newest_sweep(store, tmp_path, monkeypatch, capsys):
    _, sweep_dir = store
    monkeypatch.chdir(sweep_dir.parents[1].parent)  # the folder holding multirun/
    assert compare_main(["--sweep", "multirun", "-o", str(tmp_path)]) == 0
    assert f"newest sweep in multirun: {sweep_dir.relative_to(sweep_dir.parents[2])}" in capsys.readouterr().err
    assert (tmp_path / "val_kitti2015-train_mae.md").read_text().count("| FINISHED |") == 3


def test_by_default_each_comparison_writes_to_a_folder_of_its_own(store, tmp_path, monkeypatch):
    # The default was ./compare for every comparison: comparing a second sweep replaced the first one's plot and tables.
    uri, sweep_dir = store
    monkeypatch.chdir(tmp_path)
    name = "val_kitti2015-train_mae.md"
    try:
        assert compare_main(["--sweep", str(sweep_dir)]) == 0
        first = (sweep_dir / "compare" / name).read_text()  # beside the sweep's jobs
        assert compare_main(["--uri", uri, "--experiment", "schedules", "--sweep", "0123456789ab"]) == 0
        assert compare_main(["--uri", uri, "--experiment", "schedules", "--metric", MAE]) == 0  # every training run
        assert (tmp_path / "compare" / "0123456789ab" / name).read_text().count("| other sweep |") == 1
        assert (tmp_path / "compare" / "schedules" / name).read_text().count("| FINISHED |") == 4
        assert (sweep_dir / "compare" / name).read_text() == first
    finally:
        shutil.rmtree(sweep_dir / "compare", ignore_errors=True)  # the store is shared: leave its folder as it was


def test_max_mode_ranks_shares_where_higher_is_better(store, tmp_path):
    uri, sweep_dir = store
    output = tmp_path / "out"
    assert (
        compare_main(
            [
                "--uri",
                uri,
                "--experiment",
                "schedules",
                "--sweep",
                sweep_id_of(sweep_dir),
                "--metric",
                MAE,
                "--mode",
                "max",
                "-o",
                str(output),
            ]
        )
        == 0
    )
    rows = (output / "val_kitti2015-train_mae.md").read_text().splitlines()[2:5]
    assert [row.split(" | ")[0] for row in rows] == ["| none", "| late", "| early"]  # final 4.5, 3.5, 3.0
    assert rows[0].split(" | ")[5] == "9.0000"  # the best of "none" is its highest value, at step 0


def test_without_a_sweep_every_training_run_of_the_experiment_is_compared(store, tmp_path):
    uri, _ = store
    assert compare_main(["--uri", uri, "--experiment", "schedules", "-o", str(tmp_path)]) == 0
    table = (tmp_path / "val_kitti2015-train_mae.md").read_text()
    names = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:] if line.startswith("| ")]
    assert names == ["other sweep", "early", "late", "none"]  # not the parent run, not the evaluation run


def test_an_unknown_experiment_is_an_error_that_lists_the_existing_ones(store, tmp_path, capsys):
    uri, _ = store
    assert compare_main(["--uri", uri, "--experiment", "schedule", "-o", str(tmp_path / "out")]) == 2
    assert "no MLflow experiment 'schedule'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_lookup_where_no_store_is_says_so_and_creates_none(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compare_main([]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: no MLflow store at sqlite:///mlflow.db (no file {tmp_path}/mlflow.db)")
    assert list(tmp_path.iterdir()) == []  # no empty mlflow.db, no compare/ folder


def test_a_sweep_folder_that_is_not_there_is_named_as_such(tmp_path, monkeypatch, capsys):
    # `--sweep multirun` run from another folder used to end in "experiment 'stereo_exp' ... has no runs of sweep
    # multirun", as if the runs were missing rather than the folder.
    monkeypatch.chdir(tmp_path)
    assert compare_main(["--sweep", "multirun"]) == 2
    assert capsys.readouterr().err.startswith("error: --sweep multirun: no such directory, and not a sweep id")
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_run_without_mlflow_says_so_and_where_its_summary_is(tmp_path, monkeypatch, capsys):
    # A sweep with tracking=none has no MLflow records: compare said "no MLflow store at sqlite:///mlflow.db ...;
    # pass --uri or --sweep SWEEP_DIR", which the user had just done.
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "multirun" / "2026-12-05" / "17-42-44"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("tracking:\n  backend: none\n")  # as Hydra records the sweep's config
    assert compare_main(["--sweep", "multirun"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == (
        "error: sweep multirun/2026-12-05/17-42-44 ran with tracking=none: no MLflow run to compare (its summary, "
        "with each job's final mae: multirun/2026-12-05/17-42-44/summary.txt)"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["multirun"]  # no store, no output folder
