"""A run interrupted at many moments (seeded random, plus the awkward ones: before anything is written, during a
checkpoint write, right after the final checkpoint) by SIGKILL, SIGTERM or Ctrl-C, and resumed each time by the same
command, ends with the weights and the MLflow history of the uninterrupted run: one MLflow run, every step once, the
same values, the final checkpoint logged."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from stereo_exp.engine import checkpoint as ckpt
from tests.conftest import TINY_RUN, start_in_own_group

STEPS = 24
RUN = (
    *TINY_RUN,
    f"mix.dataset_steps=[{STEPS}]",
    "checkpoint.every=3",
    "checkpoint.keep_last=100",
    "train.log_every=2",
    "train.val_every=8",
    "loader.num_workers=2",
    "tracking=mlflow",
)
TIMINGS = ("train/samples_per_s", "train/data_wait_share", "val/seconds")  # differ between any two runs
RANDOM_POINTS = 3  # besides the three awkward moments: one per signal (the suite's time is counted)
SEED = 21  # the random points: Ctrl-C, SIGTERM and SIGKILL after steps 6, 12 and 18 of 24


@dataclass
class Attempt:
    trigger: str  # what the kill waited for
    signum: int | None  # None: the attempt ran to the end
    returncode: int = 0
    output: str = ""


def command(run_dir: Path) -> list[str]:
    uri = f"sqlite:///{run_dir.parent}/{run_dir.name}.db"
    return [sys.executable, "-m", "stereo_exp", *RUN, f"hydra.run.dir={run_dir}", f"tracking.uri={uri}"]


def attempt(run_dir: Path, trigger: str, signum: int | None, wait_for: str | None, delay: float = 0.0) -> Attempt:
    """Run the command; once ``wait_for`` (a glob under the run dir) matches, wait ``delay`` s, then send ``signum``
    to the process group (the run and its DataLoader workers, as a terminal or SLURM does)."""
    process = start_in_own_group(command(run_dir), run_dir.parent)
    record = Attempt(trigger, None)
    if wait_for is not None:
        deadline = time.monotonic() + 240
        while not list(run_dir.glob(wait_for)) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        if process.poll() is None:
            os.killpg(process.pid, signum)
            record.signum = signum
    record.output = process.communicate(timeout=300)[0]
    record.returncode = process.returncode
    return record


def history(uri: str) -> tuple[list, dict[str, list[tuple[int, float]]]]:
    """(runs of the experiment, {metric: [(step, value), ...]} of its only run, timings left out)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("stereo_exp")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if len(runs) != 1:
        return runs, {}
    run_id = runs[0].info.run_id
    keys = [key for key in runs[0].data.metrics if key not in TIMINGS]
    return runs, {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def same_weights(a: Path, b: Path) -> bool:
    first, second = ckpt.load_checkpoint(a)["model"], ckpt.load_checkpoint(b)["model"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_a_run_interrupted_at_many_moments_ends_with_the_weights_and_history_of_an_uninterrupted_run(tmp_path):
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "interrupted"
    done = attempt(straight_dir, "none", None, None)
    assert done.returncode == 0, done.output[-3000:]
    straight_runs, straight_history = history(f"sqlite:///{tmp_path}/straight.db")

    rng = random.Random(SEED)
    checkpoints = sorted(rng.sample(range(3, STEPS, 3), RANDOM_POINTS))
    signals = rng.sample([signal.SIGKILL, signal.SIGTERM, signal.SIGINT], RANDOM_POINTS)
    plan = [("before anything is written (run.json)", signal.SIGKILL, "run.json", 0.0)]
    plan += [
        (f"{delay:.2f} s after step_{step:07d}.pth", signum, f"checkpoints/step_{step:07d}.pth", delay)
        for step, signum in zip(checkpoints, signals, strict=True)
        for delay in [rng.uniform(0, 0.6)]
    ]
    plan.insert(3, ("during a checkpoint write (.tmp)", signal.SIGKILL, "checkpoints/*.tmp", 0.0))
    plan.append(("right after the final checkpoint", signal.SIGKILL, f"checkpoints/step_{STEPS:07d}.pth", 0.0))

    attempts, weights_ok, histories_ok = [], 0, 0
    for trigger, signum, wait_for, delay in [*plan, ("none", None, None, 0.0)]:
        result = attempt(run_dir, trigger, signum, wait_for, delay)
        attempts.append(result)
        assert "DataLoader worker" not in result.output, result.output[-3000:]
        if result.signum is None:
            assert result.returncode == 0, f"{trigger}:\n{result.output[-3000:]}"
        elif "checkpoint written at step" in result.output:  # handled: checkpoint, then the exit the signal asks
            assert result.returncode == 128 + result.signum and "Traceback" not in result.output, result.output
        # Every checkpoint so far equals the uninterrupted run's at that step (steps of a stop signal have none).
        written = {p.name: p for p in ckpt.list_checkpoints(run_dir)}
        reference = {p.name: p for p in ckpt.list_checkpoints(straight_dir)}
        common = sorted(set(written) & set(reference))
        weights_ok += all(same_weights(written[name], reference[name]) for name in common)
        # One MLflow run; every value logged so far equals the uninterrupted run's value at that step.
        runs, logged = history(f"sqlite:///{tmp_path}/interrupted.db")
        consistent = len(runs) <= 1 and all(
            len({s for s, _ in points}) == len(points) and set(points) <= set(straight_history.get(key, []))
            for key, points in logged.items()
        )
        histories_ok += consistent
        assert consistent, f"after {trigger}: {len(runs)} runs; {logged}"
        if result.signum == signal.SIGINT and "checkpoint written at step" in result.output:
            assert runs[0].info.status == "KILLED"  # Ctrl-C ends the MLflow run; the resume continues it
    kills = [a for a in attempts if a.signum is not None]
    print(
        f"\nkill points tried: {len(kills)} ({', '.join(signal.Signals(a.signum).name for a in kills)}); "
        f"checkpoints identical after {weights_ok}/{len(attempts)} attempts; "
        f"MLflow histories consistent after {histories_ok}/{len(attempts)} attempts"
    )
    print(json.dumps([(a.trigger, a.signum and signal.Signals(a.signum).name, a.returncode) for a in attempts]))

    assert len(kills) >= len(plan) - 1  # at most one moment missed (e.g. a .tmp that came and went between polls)
    assert weights_ok == histories_ok == len(attempts)
    final = f"checkpoints/step_{STEPS:07d}.pth"
    assert same_weights(straight_dir / final, run_dir / final)
    runs, logged = history(f"sqlite:///{tmp_path}/interrupted.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert logged == straight_history  # the same keys, every step once, the same values
    client = MlflowClient(f"sqlite:///{tmp_path}/interrupted.db")
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "checkpoints")] == [final]
    where = ("paths.output", "tracking.uri")  # the two runs differ only in where they write
    assert {k: v for k, v in straight_runs[0].data.params.items() if k not in where} == {
        k: v for k, v in runs[0].data.params.items() if k not in where
    }
    assert not list(run_dir.rglob("*.tmp"))
