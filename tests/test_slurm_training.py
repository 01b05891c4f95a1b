"""Training through the Hydra SLURM launcher on the test cluster: one DDP run across the tasks of a job, and a job
that SLURM's time-limit signal requeues mid-run and that still ends with the weights of an uninterrupted run. First,
how a process resolves its place in a (multi-node) job from the variables SLURM and torchrun set."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from mlflow.tracking import MlflowClient

from stereo_exp.distributed import DistEnv
from stereo_exp.engine import checkpoint as ckpt
from stereo_exp.models import build_model
from stereo_exp.models.weights import checkpoint_weights
from tests.conftest import REPO_ROOT, TINY_RUN, assert_same_weights, compose_train_config, subprocess_env

if TYPE_CHECKING:
    from tests.cluster_fixtures import SlurmCluster

pytest_plugins = ["tests.cluster_fixtures"]

APP = REPO_ROOT / "tests" / "cluster_train_app.py"  # python -m stereo_exp + every rank saves its weights
# Two tasks of one sample each (a global batch of 2), long enough for a signal to land mid-run.
DDP_RUN = (
    "train.batch_size=1",
    "mix.dataset_steps=[40]",
    "checkpoint.every=5",
    "checkpoint.keep_last=10",
    "train.val_every=20",
    "tracking=mlflow",
    "tracking.experiment=slurm",
)
FINAL = "checkpoints/step_0000040.pth"


# What srun exports to task 5 of a job on nodes node03 and node04 with 4 tasks each (measured names, see
# docs/CLUSTER.md "What a job sees").
SLURM_TASK_5 = {
    "SLURM_JOB_ID": "4512",
    "SLURM_JOB_NODELIST": "node[03-04]",
    "SLURM_STEP_ID": "0",
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS_PER_NODE": "4",
}
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    *SLURM_TASK_5,
    "SLURM_STEP_NODELIST",
    "SLURM_TASKS_PER_NODE",
    "SUBMITIT_EXECUTOR",
    "SUBMITIT_LOCAL_NTASKS",
    "SUBMITIT_LOCAL_GLOBALID",
    "SUBMITIT_LOCAL_LOCALID",
    "SUBMITIT_LOCAL_JOB_ID",
)
# What submitit's local controller exports to task 1 of a 2-task job (hydra/launcher=local tasks_per_node=2).
LOCAL_TASK_1 = {
    "SUBMITIT_EXECUTOR": "local",
    "SUBMITIT_LOCAL_NTASKS": "2",
    "SUBMITIT_LOCAL_GLOBALID": "1",
    "SUBMITIT_LOCAL_LOCALID": "1",
    "SUBMITIT_LOCAL_JOB_ID": "31337",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_task_of_a_two_node_job_takes_its_rank_from_slurm_and_meets_the_others_on_the_first_node(clean_env):
    for name, value in SLURM_TASK_5.items():
        clean_env.setenv(name, value)
    dist = DistEnv.from_environment("cpu")
    assert (dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == (5, 8, 1, 4)
    assert (dist.source, dist.backend, dist.is_main) == ("slurm", "gloo", False)
    # Every task computes the same rendezvous alone: the first node, port 20000 + job id mod 20000.
    assert (dist.master_addr, dist.master_port) == ("node03", 24512)


def test_torchrun_inside_a_slurm_job_takes_precedence_over_the_slurm_variables(clean_env):
    for name, value in {
        **SLURM_TASK_5,
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "3",
        "MASTER_ADDR": "10.0.0.9",
        "MASTER_PORT": "29400",
    }.items():
        clean_env.setenv(name, value)
    dist = DistEnv.from_environment("cpu")
    assert (dist.source, dist.rank, dist.world_size, dist.master_addr, dist.master_port) == (
        "torchrun",
        3,
        4,
        "10.0.0.9",
        29400,
    )


@pytest.mark.parametrize("inside_a_slurm_step", [False, True], ids=["alone", "in a slurm step"])
def test_a_task_of_a_two_task_local_job_takes_its_rank_from_submitit(clean_env, inside_a_slurm_step):
    # It used to be a single process: every task of the job trained alone, all in the same folder. A local sweep
    # submitted from inside a SLURM job step inherits that step's variables: submitit's win.
    for name, value in {**(SLURM_TASK_5 if inside_a_slurm_step else {}), **LOCAL_TASK_1}.items():
        clean_env.setenv(name, value)
    dist = DistEnv.from_environment("cpu")
    assert (dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == (1, 2, 1, 2)
    assert (dist.source, dist.master_addr, dist.master_port) == ("submitit-local", "127.0.0.1", 20000 + 31337 % 20000)
    clean_env.setenv("SUBMITIT_LOCAL_NTASKS", "1")
    assert DistEnv.from_environment("cpu").source == "single"  # a one-task local job, even inside a SLURM step


def test_the_batch_script_of_a_multi_task_job_is_a_single_process(clean_env):
    for name, value in SLURM_TASK_5.items():
        if name != "SLURM_STEP_ID":  # the batch shell is no job step: it must not wait for 7 other ranks
            clean_env.setenv(name, value)
    dist = DistEnv.from_environment("cpu")
    assert (dist.source, dist.rank, dist.world_size) == ("single", 0, 1)


def launch(cluster: SlurmCluster, sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    """A one-point multirun of 2 tasks through hydra/launcher=slurm, logging to a SQLite file beside the sweep."""
    command = [
        sys.executable,
        str(APP),
        "-m",
        *TINY_RUN,
        *DDP_RUN,
        f"tracking.uri=sqlite:///{sweep_dir}.db",
        f"hydra.sweep.dir={sweep_dir}",
        *cluster.hydra_launcher_overrides(tasks_per_node=2),
        *overrides,
    ]
    return subprocess.Popen(
        command, cwd=sweep_dir.parent, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen, timeout_s: float = 300) -> str:
    output = process.communicate(timeout=timeout_s)[0]
    assert process.returncode == 0, output[-4000:]
    return output


def mlflow_history(sweep_dir: Path) -> tuple[list, list[tuple[int, float]]]:
    """(the training runs, the train/loss history of the only one) in the sweep's SQLite store."""
    client = MlflowClient(f"sqlite:///{sweep_dir}.db")
    experiment = client.get_experiment_by_name("slurm")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("stereo_exp.role") != "sweep"]
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    return runs, sorted((m.step, m.value) for m in history)


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep dir of a 2-task job that ran to the end undisturbed (shared by the tests of this module)."""
    sweep_dir = tmp_path_factory.mktemp("uninterrupted") / "sweep"
    finish(launch(slurm_cluster, sweep_dir))
    (job_id,) = slurm_cluster.multirun_job_ids(sweep_dir)
    assert slurm_cluster.wait(job_id, timeout_s=60) == "COMPLETED"
    return sweep_dir


@pytest.mark.cluster
@pytest.mark.slow
def test_the_two_tasks_of_a_slurm_job_train_one_ddp_run_and_end_with_identical_weights(uninterrupted):
    run = uninterrupted / "0"
    setups = [json.loads((run / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert setups == [  # resolved from the SLURM task variables: one process group of two
        {"rank": 0, "world_size": 2, "local_rank": 0, "source": "slurm"},
        {"rank": 1, "world_size": 2, "local_rank": 1, "source": "slurm"},
    ]
    rank0, rank1 = (torch.load(run / f"rank{rank}_weights.pt", weights_only=True) for rank in (0, 1))
    assert_same_weights(rank0, rank1)
    # rank 0 wrote the checkpoint; result.model is what validation measured (the averaged weights)
    assert_same_weights(rank0, checkpoint_weights(ckpt.load_checkpoint(run / FINAL)))
    torch.manual_seed(0)  # the seed the job started from
    initial = build_model(compose_train_config(run).model).state_dict()
    assert not torch.equal(rank0["update_block.flow_head.conv2.weight"], initial["update_block.flow_head.conv2.weight"])
    runs, history = mlflow_history(uninterrupted)
    assert len(runs) == 1  # rank 1 recorded nothing
    assert [step for step, _ in history] == list(range(1, 41))


@pytest.mark.cluster
@pytest.mark.slow
def test_a_job_requeued_by_the_time_limit_signal_resumes_and_ends_with_the_uninterrupted_weights(
    uninterrupted, slurm_cluster: SlurmCluster, tmp_path
):
    sweep_dir = tmp_path / "sweep"
    # A loader worker per rank too: SLURM signals every process of the step, the workers included.
    process = launch(slurm_cluster, sweep_dir, "loader.num_workers=1")
    deadline = time.monotonic() + 180
    while not (sweep_dir / "0" / "checkpoints" / "step_0000005.pth").exists():
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the job wrote no checkpoint within 180 s"
        time.sleep(0.05)
    (job_id,) = slurm_cluster.multirun_job_ids(sweep_dir)
    # What SLURM sends signal_delay_s before the time limit: submitit's preemption signal, to every task.
    slurm_cluster.send_signal(job_id, "USR2")
    finish(process)  # returns once the requeued job has written its result
    assert slurm_cluster.wait(job_id, timeout_s=60) == "COMPLETED"
    assert slurm_cluster.attempts(job_id) == ["REQUEUED", "COMPLETED"]

    logs = sweep_dir / ".submitit" / job_id
    rank0_log = (logs / f"{job_id}_0_log.out").read_text()
    assert "Received SIGUSR2: checkpointing after this step" in rank0_log
    assert f"Requeued job {job_id}" in rank0_log  # submitit's own requeue, after our checkpoint
    resumed_at = int(rank0_log.split("Resumed from step ")[1].split()[0])
    assert 5 <= resumed_at < 40, f"the signal should land mid-run; resumed at step {resumed_at}"
    assert "Not checkpointing nor requeuing since I am a slave" in (logs / f"{job_id}_1_log.out").read_text()

    run, reference = sweep_dir / "0", uninterrupted / "0"
    for rank in (0, 1):
        assert_same_weights(
            torch.load(run / f"rank{rank}_weights.pt", weights_only=True),
            torch.load(reference / f"rank{rank}_weights.pt", weights_only=True),
        )
    # One MLflow run across both attempts, every step once, with the uninterrupted run's values.
    runs, history = mlflow_history(sweep_dir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert history == mlflow_history(uninterrupted)[1]
