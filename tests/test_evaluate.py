"""Cascade evaluation (evaluation/cascade.py, table.py, evaluate.py): layout, invariance to batching and processes,
and whole runs on a tiny Middlebury-layout folder and on the embedded motorcycle pair."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from stereo_exp.config import register_configs
from stereo_exp.data import build_eval_dataset
from stereo_exp.distributed import DistEnv
from stereo_exp.engine.checkpoint import save_checkpoint
from stereo_exp.evaluate import evaluate
from stereo_exp.evaluation.cascade import evaluate_grid, run_validation, shard_indices
from stereo_exp.evaluation.config import EvalConfig
from stereo_exp.evaluation.metrics import CORE_METRICS
from stereo_exp.evaluation.model_source import load_model
from stereo_exp.evaluation.table import format_protocol, format_table, format_tables, results_to_json
from stereo_exp.models import build_model
from stereo_exp.models.inference import predict_disparity
from stereo_exp.testing.dataset_replicas import write_middlebury2014
from stereo_exp.tracking import MlflowTracker, TrackingConfig
from tests.conftest import CONF_DIR, start_in_own_group, subprocess_env

# ---- the published log layout ---------------------------------------------------------------------------------

_NAMES = ("mae", "rmse", "1px", "3px", "5px", "relepe", "fl-all")
_GRID = {
    1: {
        2: dict(zip(_NAMES, (2.36349, 3.7104, 0.6105, 0.8281, 0.891, 0.1764, 64.5), strict=True)),
        10: dict(zip(_NAMES, (1.4161, 3.53, 0.777, 0.896, 0.933, 0.148, 78.3884), strict=True)),
    },
    2: {
        2: dict(zip(_NAMES, (1.9716, 4.125, 0.73, 0.865, 0.908, 0.169, 74.3961), strict=True)),
        10: dict(zip(_NAMES, (1.3124, 3.368, 0.799, 0.912, 0.943, 0.148, 80.379), strict=True)),
    },
}


def test_the_table_follows_the_published_log_layout_with_three_decimals():
    # rounding: 2.36349 -> 2.363, 3.7104 -> 3.71 (repr drops the trailing zero), 78.3884 -> 78.388
    expected = (
        "Dataset: middlebury2014-train @size: [384, 512]:\n"
        "{\n"
        "\t1: {\n"
        "\t\t2: {'mae': 2.363, 'rmse': 3.71, '1px': 0.611, '3px': 0.828, '5px': 0.891, 'relepe': 0.176, "
        "'fl-all': 64.5}\n"
        "\t\t10: {'mae': 1.416, 'rmse': 3.53, '1px': 0.777, '3px': 0.896, '5px': 0.933, 'relepe': 0.148, "
        "'fl-all': 78.388}\n"
        "\t},\n"
        "}\n"
        "{\n"
        "\t2: {\n"
        "\t\t2: {'mae': 1.972, 'rmse': 4.125, '1px': 0.73, '3px': 0.865, '5px': 0.908, 'relepe': 0.169, "
        "'fl-all': 74.396}\n"
        "\t\t10: {'mae': 1.312, 'rmse': 3.368, '1px': 0.799, '3px': 0.912, '5px': 0.943, 'relepe': 0.148, "
        "'fl-all': 80.379}\n"
        "\t},\n"
        "}\n"
    )
    assert format_table("middlebury2014-train", [384, 512], _GRID) == expected


def test_native_resolution_is_written_as_native_and_datasets_follow_each_other():
    text = format_tables({"a": {1: {5: {"mae": 1.0}}}, "b": {1: {5: {"mae": float("nan")}}}}, None)
    assert text == (
        "Dataset: a @size: native:\n{\n\t1: {\n\t\t5: {'mae': 1.0}\n\t},\n}\n\n"
        "Dataset: b @size: native:\n{\n\t1: {\n\t\t5: {'mae': nan}\n\t},\n}\n"
    )


def test_the_protocol_line_names_the_ground_truth_resize():
    assert format_protocol(None, "reference_2022") == "Ground truth: native resolution, not resized\n"
    assert format_protocol([384, 512], "valid") == (
        "Ground truth: resized with eval.gt_resize=valid: bilinear among valid pixels only\n"
    )


def test_json_keeps_full_precision_and_turns_nan_into_null():
    grid = {1: {2: {"mae": 2.36349, "rmse": math.nan}}}
    doc = json.loads(results_to_json({"m": grid}, [384, 512], extra={"step": 7}))
    assert doc == {"size": [384, 512], "datasets": {"m": {"1": {"2": {"mae": 2.36349, "rmse": None}}}}, "step": 7}


# ---- the grid: batching, processes, sharding ------------------------------------------------------------------

# Small procedural pairs: 5 samples (an odd count, so two processes get unequal shards) of 32 x 48 pixels.
SYNTHETIC = ["datasets.synthetic.height=32", "datasets.synthetic.width=48", "datasets.synthetic.val_samples=5"]


def compose_evaluate(tmp_path: Path, *overrides: str) -> DictConfig:
    """conf/evaluate.yaml shrunk for a CPU test: tiny model, tiny size, one grid cell, no MLflow."""
    register_configs()
    base = [
        "model=raft_stereo_tiny",
        "tracking=none",
        f"paths.output={tmp_path / 'out'}",
        f"checkpoints={tmp_path / 'outputs'}",
        "progress=false",
        "device=cpu",
        "num_threads=1",
        "eval.size=[32,48]",
        "eval.n_cascades=[1]",
        "eval.n_iterations=[2]",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        return compose("evaluate", overrides=[*base, *overrides])


def write_checkpoint(path: Path, model_name: str = "raft_stereo_tiny", *, seed: int = 0, step: int = 3) -> Path:
    """A training checkpoint of ours (model, step, config) holding a seeded tiny model."""
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        model_cfg = compose("evaluate", overrides=[f"model={model_name}", "tracking=none"]).model
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    config = {"model": OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)}
    return save_checkpoint(path, {"model": model.state_dict(), "step": step, "config": config})


def test_shards_are_disjoint_cover_every_sample_once_and_never_pad():
    shards = [shard_indices(5, rank, 2) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert shard_indices(1, 1, 4) == []  # more processes than samples: some get nothing


def test_batch_size_one_and_four_give_the_same_results(tmp_path):
    cfg = compose_evaluate(tmp_path, *SYNTHETIC, "eval.n_cascades=[1,2]")
    loaded = load_model(str(write_checkpoint(tmp_path / "m.pth")), cfg.model, checkpoints="", tracking_uri="")
    dataset = build_eval_dataset("synthetic-val", data_root="unused", dataset_options=cfg.datasets, size=(32, 48))
    grids = {}
    for batch_size in (1, 4):
        grids[batch_size] = evaluate_grid(
            loaded.model,
            dataset,
            n_cascades=[1, 2],
            n_iterations=[2],
            batch_size=batch_size,
            dist=DistEnv(),
            device=torch.device("cpu"),
            progress=False,
        )
    assert grids[1].num_images == grids[4].num_images == 5
    # The metric sums are batch-invariant bit for bit (test_metrics.py); the network's batched float32 kernels
    # are not, by ~1e-8 relative: far below the 3 decimals of the table, which must be identical.
    assert format_table("s", None, grids[1]) == format_table("s", None, grids[4])
    for n_casc in (1, 2):
        assert grids[1][n_casc][2] == pytest.approx(grids[4][n_casc][2], rel=1e-6, abs=1e-9)


@pytest.mark.slow  # two torchrun processes start Python, torch and Hydra: ~15 s alone, more on a busy machine
def test_one_and_two_processes_under_torchrun_write_the_same_table(tmp_path):
    weights = write_checkpoint(tmp_path / "m.pth")
    overrides = [
        "model=raft_stereo_tiny",
        "tracking=none",
        f"weights={weights}",
        "progress=false",
        "device=cpu",
        "num_threads=1",
        "dataset=synthetic-val",
        "eval.size=[32,48]",
        "eval.n_cascades=[1]",
        "eval.n_iterations=[2]",
        "eval.save_images=2",
        *SYNTHETIC,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher in (
        ("one", [sys.executable, "-m", "stereo_exp.evaluate"]),
        (
            "two",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                "-m",
                "stereo_exp.evaluate",
            ],
        ),
    ):
        out = tmp_path / name
        done = subprocess.run(
            [*launcher, *overrides, f"paths.output={out}", f"hydra.run.dir={out}/hydra"],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        processes = 1 if name == "one" else 2
        assert f"Evaluating on {processes} process(es)" in done.stdout + done.stderr
    assert (tmp_path / "one" / "eval.log").read_text() == (tmp_path / "two" / "eval.log").read_text()
    # Samples 0 and 1 live on ranks 0 and 1; rank 0 gathers both pictures and alone writes them.
    for name in ("one", "two"):
        pictures = sorted(p.name for p in (tmp_path / name / "pictures" / "synthetic-val").iterdir())
        assert pictures == ["0000_c1_i2.png", "0001_c1_i2.png"]
    one, two = (json.loads((tmp_path / name / "eval.json").read_text()) for name in ("one", "two"))
    assert one["counts"] == two["counts"] == {"synthetic-val": {"images": 5, "skipped_images": 0}}
    cell_one, cell_two = one["datasets"]["synthetic-val"]["1"]["2"], two["datasets"]["synthetic-val"]["1"]["2"]
    assert cell_one == pytest.approx(cell_two, rel=1e-12)  # float64 sums added in another order


def test_samples_of_different_sizes_in_one_batch_are_an_error_that_says_what_to_set():
    class TwoSizes(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict:
            h = 16 + 8 * i
            return {
                "left": torch.zeros(3, h, 16),
                "right": torch.zeros(3, h, 16),
                "disparity": torch.ones(1, h, 16),
                "valid": torch.ones(1, h, 16, dtype=torch.bool),
            }

    torch.manual_seed(0)
    model = build_model(compose_evaluate(Path("/nonexistent")).model)
    with pytest.raises(ValueError, match=r"eval.batch_size=1 .*eval.size"):
        evaluate_grid(
            model,
            TwoSizes(),
            n_cascades=[1],
            n_iterations=[1],
            batch_size=2,
            dist=DistEnv(),
            device=torch.device("cpu"),
            progress=False,
        )


# ---- whole evaluations --------------------------------------------------------------------------------------------


def metrics_by_definition(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """The core metrics and d1 of one (H, W) image, written out from their definitions (evaluation/metrics.py's
    docstring, the published tables' conventions) in NumPy, over the valid pixels."""
    d = np.abs(pred.double().numpy() - gt.double().numpy())[valid.numpy()]
    g = gt.double().numpy()[valid.numpy()]
    return {
        "mae": d.mean(),
        "rmse": np.sqrt((d**2).mean()),
        "1px": (d < 1).mean(),
        "3px": (d < 3).mean(),
        "5px": (d < 5).mean(),
        "relepe": (d / g).mean(),
        "fl-all": 100 * ((d < 3) & (d < 0.05 * g)).mean(),
        "d1": 100 * ((d > 3) & (d > 0.05 * g)).mean(),
    }


def test_evaluate_on_a_tiny_middlebury_folder_writes_the_table_json_pictures_and_mlflow_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's SQLite store keeps artifacts in ./mlruns
    write_middlebury2014(tmp_path / "data", calibrations=("perfect",))  # 2 scenes of 24 x 32, 20 % without truth
    weights = write_checkpoint(tmp_path / "m.pth", step=3)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_evaluate(
        tmp_path,
        "eval=middlebury",
        f"paths.data={tmp_path / 'data'}",
        f"weights={weights}",
        "tracking=mlflow",
        f"tracking.uri={uri}",
        "eval.n_iterations=[1,2]",
        "eval.save_images=1",
        "eval.extras=[d1]",
        "eval.gt_resize=reference_2022",
    )
    grids = evaluate(cfg)

    # Known answer: the metrics of each scene by their definitions (metrics_by_definition), one image at a time,
    # then averaged over the images.
    loaded = load_model(str(weights), cfg.model, checkpoints="", tracking_uri="")
    dataset = build_eval_dataset(
        "middlebury2014-train", data_root=tmp_path / "data", size=(32, 48), gt_resize="reference_2022"
    )
    per_image = []
    with torch.inference_mode():
        for index in range(len(dataset)):
            sample = dataset[index]
            pred = predict_disparity(loaded.model, sample["left"][None], sample["right"][None], num_iters=2)
            per_image.append(metrics_by_definition(pred[0, 0], sample["disparity"][0], sample["valid"][0]))
    expected = {name: sum(m[name] for m in per_image) / len(per_image) for name in per_image[0]}
    assert grids["middlebury2014-train"][1][2] == pytest.approx(expected, rel=1e-9)

    out = tmp_path / "out"
    log_text = (out / "eval.log").read_text()
    protocol, table = log_text.split("\n", 1)  # the first line names how the ground truth was resized
    assert protocol == (
        "Ground truth: resized with eval.gt_resize=reference_2022: bilinear with unknown pixels as 0, no antialias "
        "(torchvision's reference in 2022, the protocol of the published tables)"
    )
    assert table.startswith("Dataset: middlebury2014-train @size: [32, 48]:\n{\n\t1: {\n\t\t1: {'mae': ")
    assert log_text.endswith("'d1': " + repr(round(grids["middlebury2014-train"][1][2]["d1"], 3)) + "}\n\t},\n}\n")
    document = json.loads((out / "eval.json").read_text())
    assert document["counts"] == {"middlebury2014-train": {"images": 2, "skipped_images": 0}}
    assert document["step"] == 3 and document["model"]["name"] == "raft_stereo_tiny"
    assert document["gt_resize"] == "reference_2022"
    assert document["datasets"]["middlebury2014-train"]["1"]["2"] == pytest.approx(expected, rel=1e-9)
    pictures = sorted(p.relative_to(out).as_posix() for p in (out / "pictures").rglob("*.png"))
    assert pictures == ["pictures/middlebury2014-train/0000_c1_i1.png", "pictures/middlebury2014-train/0000_c1_i2.png"]

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["stereo_exp.task"] == "evaluate"
    (mae,) = client.get_metric_history(run.info.run_id, "eval/middlebury2014-train/c1_i2/mae")
    assert (mae.step, mae.value) == (3, pytest.approx(expected["mae"], rel=1e-9))  # at the checkpoint's step
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.log", "eval.json", "pictures"} <= artifacts


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_evaluation_stopped_by_ctrl_c_or_sigterm_ends_in_one_line_and_its_mlflow_run_reads_killed(tmp_path, signum):
    # Ctrl-C ended in a 40-line traceback; SIGTERM (scancel, `timeout`) killed the process by its default action, and
    # its MLflow run read RUNNING for good.
    weights = write_checkpoint(tmp_path / "m.pth")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # the default store, made here: the test polls it
    experiment = client.create_experiment("stereo_exp")
    many = ["dataset=synthetic-val", *SYNTHETIC[:2], "datasets.synthetic.val_samples=100000"]  # minutes: stopped first
    grid = ["eval.size=[32,48]", "eval.n_cascades=[1]", "eval.n_iterations=[2]"]
    command = [
        sys.executable,
        "-m",
        "stereo_exp.evaluate",
        "model=raft_stereo_tiny",
        f"weights={weights}",
        *many,
        *grid,
    ]
    process = start_in_own_group(command, tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not client.search_runs([experiment]):  # the evaluation is under way
        time.sleep(0.1)
    os.killpg(process.pid, signum)  # Ctrl-C reaches every process of the terminal; `kill` its own
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signum, output[-3000:]
    how = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert output.rstrip().endswith(f"Evaluation interrupted ({how}).") and "Traceback" not in output, output[-3000:]
    (run,) = client.search_runs([experiment])
    assert run.info.status == "KILLED"


# Runs a command's module with MLflow's end of its run preceded by a SIGTERM to itself: the stop arrives after the
# work, while the run is being ended (deterministic stand-in for an scancel or a second Ctrl-C at that moment).
STOP_WHILE_ENDING = """
import os, runpy, signal, sys
from stereo_exp.tracking.mlflow_tracker import MlflowTracker
end = MlflowTracker.end
def end_after_a_stop(self, status="FINISHED"):
    os.kill(os.getpid(), signal.SIGTERM)
    end(self, status)
MlflowTracker.end = end_after_a_stop
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("command", ["evaluate", "eda"])
def test_a_stop_while_the_mlflow_run_is_ended_waits_for_the_end_then_stops_the_command(tmp_path, command):
    # The stop handlers were restored before the run was ended: SIGTERM there killed the process inside MLflow's
    # call (the run read RUNNING for good, exit 143 without a word), a second Ctrl-C left a traceback.
    if command == "evaluate":
        weights = write_checkpoint(tmp_path / "m.pth")
        grid = ["eval.size=[32,48]", "eval.n_cascades=[1]", "eval.n_iterations=[2]"]
        args = ["model=raft_stereo_tiny", f"weights={weights}", "dataset=synthetic-val", *SYNTHETIC, *grid]
        what = "Evaluation"
    else:
        args = ["eda.num_crops=3", "loader.num_workers=0"]
        what = "EDA"
    done = subprocess.run(
        [sys.executable, "-c", STOP_WHILE_ENDING, f"stereo_exp.{command}", *args],
        cwd=tmp_path,  # the default store, ./mlflow.db
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert output.rstrip().endswith(f"{what} interrupted (SIGTERM).") and "Traceback" not in output, output[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert run.info.status == "FINISHED"  # the work was done when the stop came


# Runs a command's module with two Ctrl-Cs to itself as its MLflow run is started (a double Ctrl-C as the command
# starts, when the SQLite store is created too).
CTRL_C_TWICE_AT_START = """
import os, runpy, signal, sys, time
from stereo_exp.tracking.mlflow_tracker import MlflowTracker
start = MlflowTracker.start
def start_after_two_ctrl_cs(self, *args, **kwargs):
    for _ in range(2):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    return start(self, *args, **kwargs)
MlflowTracker.start = start_after_two_ctrl_cs
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def test_a_double_ctrl_c_as_the_mlflow_run_starts_waits_for_it_then_ends_it_killed(tmp_path):
    # The second Ctrl-C was raised at once, inside MLflow's calls: of 16 double Ctrl-Cs to `python -m stereo_exp.eda`
    # as it started, 3 left the store without its tables and 6 without the run it was creating.
    command = [sys.executable, "-c", CTRL_C_TWICE_AT_START, "stereo_exp.eda", "eda.num_crops=3", "loader.num_workers=0"]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 128 + signal.SIGINT, output[-3000:]
    assert output.rstrip().endswith("EDA interrupted (Ctrl-C).") and "Traceback" not in output, output[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_a_sweep_of_evaluations_over_weights_nests_its_named_runs_lists_their_mae_and_compare_ranks_them(tmp_path):
    # `-m hydra/launcher=local weights=A,B`: the evaluations' runs were neither tagged with their sweep nor nested
    # under its parent run (left empty), all were named alike, the summary said "MLflow has no run of job #0, #1"
    # and its `compare --sweep` command answered "no runs of sweep".
    weights = [write_checkpoint(tmp_path / f"{name}.pth", seed=seed) for seed, name in enumerate(["a", "b"])]
    grid = ["eval.size=[32,48]", "eval.n_cascades=[1]", "eval.n_iterations=[2]", "eval.save_images=0"]
    command = [sys.executable, "-m", "stereo_exp.evaluate", "-m", "hydra/launcher=local", "model=raft_stereo_tiny"]
    weights_swept = "weights=" + ",".join(str(w) for w in weights)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "dataset=synthetic-val", *SYNTHETIC, *grid, "num_threads=1", weights_swept],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout[done.stdout.index("Sweep ") :].splitlines()
    assert lines[1].split()[3:5] == ["mlflow", "eval/synthetic-val/c1_i2/mae"], lines
    for num, row in enumerate(lines[2:4]):
        assert row.split()[2:4] == ["COMPLETED", "FINISHED"] and row.endswith(f"weights={weights[num]}"), lines

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("stereo_exp.role") == "sweep"]
    jobs = sorted((run for run in runs if run is not parent), key=lambda run: run.data.tags["stereo_exp.job_num"])
    assert [run.info.run_name for run in jobs] == [f"eval raft_stereo_tiny synthetic-val weights={w}" for w in weights]
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    maes = [run.data.metrics["eval/synthetic-val/c1_i2/mae"] for run in jobs]
    for num, row in enumerate(lines[2:4]):
        assert row.split()[4] == f"{maes[num]:.4f}", lines  # the runs' own figures
    sweep = next(line for line in lines if line.startswith("Next: ")).split()[-1]
    compared = subprocess.run(
        [sys.executable, "-m", "stereo_exp.compare", "--sweep", sweep],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compared.returncode == 0, compared.stderr
    assert "eval/synthetic-val/c1_i2/mae of 2 runs" in compared.stdout


def test_a_sweep_of_evaluations_with_a_weights_file_that_is_not_there_is_refused_before_any_job(tmp_path):
    # It was found by job #1 itself, after the sweep folder, the MLflow store and the parent run were made.
    weights, missing = write_checkpoint(tmp_path / "a.pth"), tmp_path / "b.pth"
    command = [sys.executable, "-m", "stereo_exp.evaluate", "-m", "hydra/launcher=local", "model=raft_stereo_tiny"]
    done = subprocess.run(
        [*command, f"weights={weights},{missing}"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.startswith(f"error: job #1 (weights={missing}): weights='{missing}' is not a file. Expected")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.pth"]  # no sweep folder, no MLflow store


def test_without_weights_the_newest_checkpoint_under_outputs_is_evaluated_on_the_motorcycle_pair(tmp_path):
    old = write_checkpoint(tmp_path / "outputs/2026-01-01/10-00-00/checkpoints/step_0000005.pth", seed=0, step=5)
    new = write_checkpoint(tmp_path / "outputs/2026-01-02/10-00-00/checkpoints/step_0000002.pth", seed=1, step=2)
    os.utime(old, (1_000_000, 1_000_000))  # older by modification time, although it has more steps
    os.utime(new, (2_000_000, 2_000_000))
    grids = evaluate(compose_evaluate(tmp_path))  # the test shrinks size and grid; model and data are the defaults
    document = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert list(grids) == ["motorcycle"] and document["counts"]["motorcycle"]["images"] == 1
    assert document["weights"] == f"checkpoint {new} (step 2)"


def test_without_weights_or_checkpoints_the_configured_model_runs_with_a_warning(tmp_path, caplog):
    evaluate(compose_evaluate(tmp_path, "eval.n_iterations=[1]"))
    document = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert document["weights"] == "raft_stereo_tiny with random weights"
    assert "randomly initialised" in caplog.text


def test_an_mlflow_run_id_loads_the_newest_checkpoint_artifact_of_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(TrackingConfig(uri=uri))
    run_id = tracker.start(params={"seed": 0})
    for seed, step in ((0, 2), (1, 4)):
        path = write_checkpoint(tmp_path / f"ckpt/step_{step:07d}.pth", seed=seed, step=step)
        tracker.log_artifact(path, "checkpoints")
    tracker.end()
    model_cfg = compose_evaluate(tmp_path).model

    for spec in (f"runs:/{run_id}", run_id):
        loaded = load_model(spec, model_cfg, checkpoints="", tracking_uri=uri)
        assert loaded.step == 4 and loaded.source.startswith(f"MLflow run {run_id}")
    expected = load_model(str(tmp_path / "ckpt/step_0000004.pth"), model_cfg, checkpoints="", tracking_uri="")
    for key, value in expected.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key

    empty = MlflowTracker(TrackingConfig(uri=uri))
    empty_id = empty.start(params={"seed": 0})
    empty.end()
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/step_\*\.pth artifact"):
        load_model(f"runs:/{empty_id}", model_cfg, checkpoints="", tracking_uri=uri)


def test_weights_that_do_not_exist_or_fit_another_architecture_say_what_to_pass(tmp_path):
    model_cfg = compose_evaluate(tmp_path).model  # raft_stereo_tiny
    with pytest.raises(ValueError, match=r"published for crestereo_base.*add model=crestereo_base"):
        load_model("MEGVII_V1", model_cfg, checkpoints="", tracking_uri="")
    with pytest.raises(FileNotFoundError, match=r"weights='runs/m\.pth' is not a file"):
        load_model("runs/m.pth", model_cfg, checkpoints="", tracking_uri="")


def test_training_validation_flattens_the_metrics_and_draws_the_first_samples(tmp_path):
    cfg = compose_evaluate(tmp_path, *SYNTHETIC)
    eval_cfg = OmegaConf.structured(
        EvalConfig(datasets=["synthetic-val", "motorcycle"], size=[32, 48], max_samples=3, save_images=2)
    )
    torch.manual_seed(0)
    model = build_model(cfg.model)
    result = run_validation(
        model,
        eval_cfg,
        data_root="unused",
        dataset_options=cfg.datasets,
        num_iters=2,
        dist=DistEnv(),
        device=torch.device("cpu"),
        amp_dtype=None,
    )
    names = ("synthetic-val", "motorcycle")
    assert sorted(result.metrics) == sorted(f"val/{d}/{m}" for d in names for m in CORE_METRICS)
    assert result.counts == {
        "val/synthetic-val/images": 3,
        "val/synthetic-val/skipped_images": 0,  # max_samples=3 of 5
        "val/motorcycle/images": 1,
        "val/motorcycle/skipped_images": 0,
    }
    assert result.metrics["val/motorcycle/mae"] == result.grids["motorcycle"][1][2]["mae"]
    assert sorted(result.figures) == ["motorcycle/0000_c1_i2", "synthetic-val/0000_c1_i2", "synthetic-val/0001_c1_i2"]
    assert model.training  # the model's mode is restored for the next training step


# ---- configuration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "eval").glob("*.yaml")))
def test_every_eval_option_composes_and_passes_its_checks(option, tmp_path):
    cfg = compose_evaluate(tmp_path, f"eval={option}")
    assert isinstance(OmegaConf.to_object(cfg.eval), EvalConfig)  # runs EvalConfig.__post_init__


def test_the_evaluate_defaults_are_the_published_grid_at_384x512_on_the_motorcycle_pair():
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        cfg = compose("evaluate")
    assert list(cfg.eval.datasets) == ["motorcycle"] and list(cfg.eval.size) == [384, 512]
    assert list(cfg.eval.n_cascades) == [1, 2] and list(cfg.eval.n_iterations) == [2, 5, 10, 20]
    assert cfg.weights is None and cfg.checkpoints == "outputs"


def test_a_bad_eval_value_stops_evaluate_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"eval\.extras has unknown metrics \['bad-3'\]"):
        evaluate(compose_evaluate(tmp_path, "eval.extras=[bad-3]"))
    with pytest.raises(ValueError, match="dataset must be a catalog name or a list"):
        evaluate(compose_evaluate(tmp_path, "dataset=[]"))
