"""Sweeps on the single-node SLURM test cluster: a failed job, a submitter whose terminal hangs up, a job cancelled
after a checkpoint. (In a module of CLUSTER_MODULES, tests/conftest.py: the cluster's tests share one worker.)"""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.conftest import hang_up_when, start_in_own_group, subprocess_env, wait_for_checkpoints
from tests.test_sweeps import checkpoint_step, summary_lines, sweep_command, tiny_app

if TYPE_CHECKING:
    from tests.cluster_fixtures import SlurmCluster

pytest_plugins = ["tests.cluster_fixtures"]


@pytest.mark.cluster
def test_a_slurm_job_whose_task_fails_is_failed_in_sacct_and_listed_by_the_submitter(
    slurm_cluster: SlurmCluster, tmp_path
):
    # Hydra keeps a failed task's exception in its JobReturn; without the launcher raising it again the job exits 0
    # and sacct says COMPLETED. A tiny Hydra app on the repository's launcher config: one point fails, one does not.
    task = """
        if cfg.a == 2:
            raise RuntimeError("the task failed on purpose")
    """
    command = tiny_app(tmp_path, task, *slurm_cluster.hydra_launcher_overrides())
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    ids = [job for job in slurm_cluster.multirun_job_ids(sweep) if "_" in job]  # the array tasks, not the array
    assert [slurm_cluster.wait(job_id, timeout_s=60) for job_id in ids] == ["COMPLETED", "FAILED"]
    summary = summary_lines(done.stdout)
    assert summary[0].endswith("1 of 2 jobs completed, 1 failed")
    assert re.match(rf"  #1 +{ids[1]} +FAILED +- +- +a=2$", summary[3])
    assert summary[4].startswith("      RuntimeError: the task failed on purpose")


@pytest.mark.cluster
def test_the_submitter_of_a_slurm_sweep_waits_on_after_its_terminal_hangs_up_and_keeps_its_summary(
    slurm_cluster: SlurmCluster, tmp_path
):
    # A dropped SSH connection used to end the submitter at once: the jobs went on in SLURM, but nothing was left
    # to say how the sweep ended (no summary, no table on the parent run). Now it waits on, detached from the terminal.
    task = """
        import time
        time.sleep(5)  # still running when the terminal hangs up
    """
    command = tiny_app(tmp_path, task, *slurm_cluster.hydra_launcher_overrides())
    submitted = lambda: bool(list(tmp_path.glob("multirun/*/*/.submitit/**/*_submitted.pkl")))  # noqa: E731
    assert hang_up_when(command, tmp_path, submitted) == 0  # both jobs completed
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    summary = summary_lines((sweep / "summary.txt").read_text())
    assert summary[0].endswith("2 of 2 jobs completed"), summary
    ids = [job for job in slurm_cluster.multirun_job_ids(sweep) if "_" in job]
    assert [line.split()[:3] for line in summary[2:4]] == [["#0", ids[0], "COMPLETED"], ["#1", ids[1], "COMPLETED"]]


@pytest.mark.slow
@pytest.mark.cluster
def test_a_slurm_job_cancelled_after_a_checkpoint_is_listed_as_interrupted_with_the_command_that_resumes_it(
    slurm_cluster: SlurmCluster, tmp_path
):
    # scancel sends SIGTERM: the job writes a checkpoint and stops, without a result file (SLURM may requeue it). It
    # was listed as failed (no result) with its MLflow run left RUNNING, and no command to resume it.
    command = [
        *sweep_command(*slurm_cluster.hydra_launcher_overrides(), "mix.dataset_steps=[400]", "train.val_every=400"),
        "seed=0",
    ]
    submitter = start_in_own_group(command, tmp_path)
    wait_for_checkpoints(tmp_path, "multirun/*/*/0/checkpoints/*.pth", timeout=180)
    (sweep,) = tmp_path.glob("multirun/*/*")
    (job_id,) = slurm_cluster.multirun_job_ids(sweep)
    slurm_cluster.run("scancel", job_id)
    output = submitter.communicate(timeout=180)[0]
    assert submitter.returncode == 1, output[-3000:]  # the sweep did not complete; no Ctrl-C: not 130
    summary = summary_lines(output)
    assert summary[0].endswith("0 of 1 jobs completed, 1 interrupted"), summary
    assert re.match(rf"  #0 +{job_id} +CANCELLED +KILLED +\S+ +.* seed=0$", summary[2]), summary
    checkpoint_step(summary[3], sweep, 0, stopped_by="Received SIGTERM")
    # The printed command resumes it as it resumes an interrupted local sweep (tested above; not again here: another
    # SLURM job and its queueing).
    assert summary[4].startswith(f"Run the same command with hydra.sweep.dir={sweep.relative_to(tmp_path)} to resume")
