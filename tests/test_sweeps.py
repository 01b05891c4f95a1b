"""Sweeps: a 2x2 multirun through the SLURM launcher grouped in MLflow, the sweep's one parent run, and the
comparison of its runs."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest
from mlflow.tracking import MlflowClient

from stereo_exp.compare import main as compare_main
from stereo_exp.tracking.sweep import SweepInfo, get_or_create_parent_run, sweep_id_of
from tests.conftest import TINY_RUN, subprocess_env

if TYPE_CHECKING:
    from launch.mlflow_server import MlflowServer
    from tests.cluster_fixtures import SlurmCluster

pytest_plugins = ["tests.cluster_fixtures"]

# decay_after_steps only matters without the embedded schedule's warm-up (decay starts after it).
SWEEP = ("schedule.warmup_steps=0", "schedule.decay_after_steps=0,3", "optim.clip_grad_norm=null,1.0")


def training_runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(the sweep's parent runs, its job runs) of ``experiment``."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("stereo_exp.role") == "sweep"]
    return parents, [r for r in runs if r not in parents]


@pytest.mark.cluster
@pytest.mark.network
@pytest.mark.slow
def test_a_two_by_two_slurm_sweep_makes_four_runs_with_their_overrides_under_one_parent(
    slurm_cluster: SlurmCluster, shared_mlflow_server: MlflowServer, tmp_path
):
    sweep_dir = tmp_path / "multirun"
    command = [sys.executable, "-m", "stereo_exp", "-m", *TINY_RUN, "tracking=mlflow", "tracking.experiment=sweep-2x2",
               f"tracking.uri={shared_mlflow_server.uri}", f"hydra.sweep.dir={sweep_dir}",
               *slurm_cluster.hydra_launcher_overrides(), *SWEEP]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    client = MlflowClient(shared_mlflow_server.uri)
    parents, jobs = training_runs(client, "sweep-2x2")
    assert len(parents) == 1 and len(jobs) == 4
    (parent,) = parents
    array_id = slurm_cluster.multirun_job_ids(sweep_dir)[0].split("_")[0]  # all four jobs are one SLURM array
    by_num = {int(run.data.tags["stereo_exp.job_num"]): run for run in jobs}
    # Hydra numbers the points in sweep order: decay 0 | clip null, decay 0 | clip 1.0, decay 3 | null, decay 3 | 1.0
    points = [("0", "null"), ("0", "1.0"), ("3", "null"), ("3", "1.0")]  # (decay_after_steps, clip_grad_norm)
    for num, (decay, clip) in enumerate(points):
        tags, params = by_num[num].data.tags, by_num[num].data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["stereo_exp.sweep_id"] == sweep_id_of(sweep_dir) == parent.data.tags["stereo_exp.sweep_id"]
        assert tags["stereo_exp.job_id"] == f"{array_id}_{num}"
        assert tags["stereo_exp.overrides"].endswith(f"schedule.decay_after_steps={decay} optim.clip_grad_norm={clip}")
        assert params["schedule.decay_after_steps"] == decay
        assert params["optim.clip_grad_norm"] == {"null": "None", "1.0": "1.0"}[clip]  # the resolved config's value
        assert by_num[num].info.status == "FINISHED"
        assert by_num[num].info.run_name == f"crestereo_tiny-embedded-embedded #{num}"

    # The comparison of the sweep, straight from the server: one row and one curve per job.
    output = tmp_path / "compare"
    assert compare_main(["--uri", shared_mlflow_server.uri, "--experiment", "sweep-2x2", "--sweep", str(sweep_dir),
                         "-o", str(output)]) == 0  # fmt: skip
    table = (output / "val_synthetic-val_mae.md").read_text().splitlines()
    rows = [line for line in table[2:] if line.startswith("|")]
    assert len(rows) == 4
    for num, (decay, clip) in enumerate(points):
        history = client.get_metric_history(by_num[num].info.run_id, "val/synthetic-val/mae")
        assert [m.step for m in history] == [0, 3, 6]
        (row,) = [r for r in rows if f"#{num} |" in r]
        # Only the swept overrides label a row: those every job shares (TINY_RUN, tracking ...) are left out.
        assert row.split(" | ")[1] == f"schedule.decay_after_steps={decay} optim.clip_grad_norm={clip}"
        assert f"| 6 | {history[-1].value:.4f} |" in row  # last step, final value
    assert (output / "val_synthetic-val_mae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.network
def test_concurrent_jobs_of_a_sweep_create_one_parent_run(shared_mlflow_server: MlflowServer, tmp_path):
    client = MlflowClient(shared_mlflow_server.uri)
    experiment_id = client.create_experiment("parent-race")
    sweep_dir = tmp_path / "multirun"
    sweep_dir.mkdir()
    results: list[str] = []
    barrier = threading.Barrier(4)

    def job(num: int) -> None:
        sweep = SweepInfo(sweep_id=sweep_id_of(sweep_dir), sweep_dir=str(sweep_dir), job_num=num, job_id=f"7_{num}",
                          overrides=(f"seed={num}",))  # fmt: skip
        barrier.wait()  # all four ask at the same moment
        results.append(get_or_create_parent_run(MlflowClient(shared_mlflow_server.uri), experiment_id, sweep,
                                                wait_s=30))  # fmt: skip

    threads = [threading.Thread(target=job, args=(num,)) for num in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1  # every job got the same parent ...
    (parent,) = client.search_runs([experiment_id])  # ... and MLflow holds exactly one
    assert parent.info.run_id == results[0]
    assert parent.info.run_name == f"sweep {tmp_path.name}/multirun"
    # A requeued job (or the sync of an offline one) finds it again through the sweep dir.
    assert get_or_create_parent_run(client, experiment_id, SweepInfo(sweep_id_of(sweep_dir), str(sweep_dir), 0, "7_0",
                                                                     ()), wait_s=0) == results[0]  # fmt: skip


def test_a_single_run_is_not_part_of_a_sweep():
    assert SweepInfo.from_hydra() is None  # no Hydra multirun around: no sweep tags, no parent run
