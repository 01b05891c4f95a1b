"""Multi-node DDP for real: training jobs that span both nodes of the two-node SLURM cluster
(``launch/slurm_cluster.sh start --nodes 2``: each node a network namespace with its own address and host name),
submitted from its head node through the project's launcher (``hydra/launcher=slurm hydra.launcher.nodes=2
hydra.launcher.tasks_per_node=1``). The ranks meet through the rendezvous that stereo_exp/distributed.py derives from
the job's node list, over the cluster's private bridge: the nodes share no other network."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from mlflow.tracking import MlflowClient

from stereo_exp.distributed import DistEnv
from tests.conftest import REPO_ROOT, TINY_RUN, assert_same_weights, subprocess_env

if TYPE_CHECKING:
    from tests.cluster_fixtures import SlurmCluster

pytest_plugins = ["tests.cluster_fixtures"]

APP = REPO_ROOT / "tests" / "cluster_train_app.py"  # python -m stereo_exp + every rank saves its weights
# One sample per rank and step (a global batch of 2), long enough for a requeue to land mid-run.
STEPS = 24
RUN = (
    "train.batch_size=1",
    f"mix.dataset_steps=[{STEPS}]",
    "train.val_every=12",
    "checkpoint.every=2",
    f"checkpoint.keep_last={STEPS}",
)
TRACKING = ("tracking=mlflow", "tracking.experiment=multinode")
CHECKPOINTS = [f"step_{step:07d}.pth" for step in range(2, STEPS + 1, 2)]
# The line each rank logs once it has joined the process group (stereo_exp/distributed.py).
JOINED = re.compile(
    r"DDP: rank (\d) of 2 \(local rank (\d) of (\d)\) on host (\S+) joined the gloo process group "
    r"at (\S+):(\d+) \(([\d.]+); from slurm\)"
)


def test_a_task_counts_the_tasks_of_its_own_node_when_nodes_run_different_numbers(monkeypatch):
    # SLURM writes uneven per-node counts as "2(x2),1": 2 tasks on each of the first two nodes, 1 on the third.
    for name, value in {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "5",
        "SLURM_PROCID": "4",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "2",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
        "SLURM_STEP_NODELIST": "gpu[07-09]",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    dist = DistEnv.from_environment("cpu")
    assert (dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == (4, 5, 0, 1)
    assert (dist.master_addr, dist.master_port) == ("gpu07", 20007)
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert DistEnv.from_environment("cpu").local_world_size == 2


def multirun(cluster: SlurmCluster, sweep_dir: Path, store: Path, *overrides: str) -> subprocess.Popen:
    """``python tests/cluster_train_app.py -m ...`` on the head node: a multirun whose every job spans 2 nodes with
    one task each, logging to the SQLite file ``store`` (the file system is shared by all nodes)."""
    command = [
        *cluster.client_prefix,
        sys.executable,
        str(APP),
        "-m",
        *TINY_RUN,
        *RUN,
        *TRACKING,
        f"tracking.uri=sqlite:///{store}",
        f"hydra.sweep.dir={sweep_dir}",
        *cluster.hydra_launcher_overrides(nodes=2, tasks_per_node=1),
        *overrides,
    ]
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        command, cwd=sweep_dir.parent, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen, timeout_s: float = 300) -> None:
    output = process.communicate(timeout=timeout_s)[0]
    assert process.returncode == 0, output[-4000:]


def submitted_job(cluster: SlurmCluster, process: subprocess.Popen, sweep_dir: Path) -> str:
    """The job id of a one-job multirun, once submitted (submitit's folder under .submitit)."""
    deadline = time.monotonic() + 120
    while not (jobs := cluster.multirun_job_ids(sweep_dir)):
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the multirun submitted nothing within 120 s"
        time.sleep(0.1)
    return jobs[0]


def weights(run: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(run / f"rank{rank}_weights.pt", weights_only=True)


def joined(log: str) -> list[tuple[str, ...]]:
    """(rank, local rank, local world size, host, rendezvous host, port, its address) of each join in a task log."""
    return JOINED.findall(log)


def rendezvous(cluster: SlurmCluster, job_id: str) -> tuple[str, str, str]:
    """Where the ranks of a job should meet: the first node, port 20000 + job id, the first node's address."""
    first = cluster.nodes[0]
    return first, str(20000 + int(job_id)), cluster.run("getent", "hosts", first).split()[0]


def task_logs(sweep_dir: Path, job_id: str) -> list[str]:
    """The stdout of each task (rank 0, rank 1) of a job, every attempt of it."""
    return [(sweep_dir / ".submitit" / job_id / f"{job_id}_{rank}_log.out").read_text() for rank in (0, 1)]


def training_runs(store: Path, sweep_dir: Path) -> list:
    """The MLflow training runs of a multirun (its parent run left out)."""
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("multinode")
    runs = client.search_runs([experiment.experiment_id], f"tags.`stereo_exp.sweep_dir` = '{sweep_dir}'")
    return [r for r in runs if r.data.tags.get("stereo_exp.role") != "sweep"]


def loss_history(store: Path, run_id: str) -> list[tuple[int, float]]:
    history = MlflowClient(f"sqlite:///{store}").get_metric_history(run_id, "train/loss")
    return sorted((m.step, m.value) for m in history)


@dataclass(frozen=True)
class Reference:
    """A one-job multirun across both nodes that ran to the end undisturbed, and the same training as two torchrun
    processes on one host (tests/ddp_worker.py), run meanwhile."""

    sweep_dir: Path
    job_id: str
    squeue: str  # squeue's line of the job while it ran
    torchrun: Path  # torchrun's output folder


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow SQLite file for the jobs of this module: the first job creates its tables alone."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture(scope="module")
def reference(slurm_two_nodes: SlurmCluster, store: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted job (squeue polled until it runs), then torchrun while the job trains."""
    sweep_dir = tmp_path_factory.mktemp("two_node_job") / "sweep"
    process = multirun(slurm_two_nodes, sweep_dir, store)
    job_id = submitted_job(slurm_two_nodes, process, sweep_dir)
    squeue = ""
    while process.poll() is None and " R " not in squeue:
        squeue = slurm_two_nodes.run("squeue", "-h", "-j", job_id, "-o", "%i %j %t %D %N")
        time.sleep(0.2)

    torchrun = tmp_path_factory.mktemp("torchrun")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO_ROOT / "tests" / "ddp_worker.py"),
        str(torchrun),
        *RUN,
    ]
    done = subprocess.run(command, cwd=torchrun, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    finish(process)
    assert slurm_two_nodes.wait(job_id, timeout_s=60) == "COMPLETED"
    return Reference(sweep_dir, job_id, squeue, torchrun)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_job_on_two_nodes_trains_one_ddp_run_with_the_weights_of_torchrun_on_one_host(
    reference: Reference, slurm_two_nodes: SlurmCluster, store: Path
):
    job_id, sweep_dir = reference.job_id, reference.sweep_dir
    first, second = slurm_two_nodes.nodes
    both = slurm_two_nodes.run("scontrol", "show", "hostlist", f"{first},{second}")  # "stereo2-n[1-2]"
    # One job, running on both nodes at once; sacct: the allocation and its srun step on both, the batch on the first.
    assert reference.squeue.split()[2:] == ["R", "2", both], reference.squeue
    steps = slurm_two_nodes.run("sacct", "-n", "-P", "-j", job_id, "-o", "JobID,NNodes,NodeList,State").splitlines()
    assert steps == [
        f"{job_id}|2|{both}|COMPLETED",
        f"{job_id}.batch|1|{first}|COMPLETED",
        f"{job_id}.0|2|{both}|COMPLETED",
    ]

    # Each task ran on its own host and met the other at the first node's address, port 20000 + job id.
    rank0_log, rank1_log = task_logs(sweep_dir, job_id)
    meeting = rendezvous(slurm_two_nodes, job_id)
    assert joined(rank0_log) == [("0", "0", "1", first, *meeting)]
    assert joined(rank1_log) == [("1", "0", "1", second, *meeting)]

    # Both ranks end with identical weights, bit for bit those of 2 torchrun processes on one host.
    run = sweep_dir / "0"
    assert_same_weights(weights(run, 0), weights(run, 1))
    assert_same_weights(weights(run, 0), weights(reference.torchrun, 0))

    # Rank 0 alone recorded: one MLflow run, every step once; one run folder, each checkpoint once.
    (mlflow_run,) = training_runs(store, sweep_dir)
    assert [step for step, _ in loss_history(store, mlflow_run.info.run_id)] == list(range(1, STEPS + 1))
    assert f"MLflow: run {mlflow_run.info.run_id}" in rank0_log
    assert "MLflow" not in rank1_log and "Checkpoint:" not in rank1_log
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".")) == [
        "0",
        "multirun.yaml",
        "summary.txt",
    ]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == CHECKPOINTS
    assert (run / "cluster_train_app.log").read_text().count("MLflow: run ") == 1


@pytest.mark.cluster
@pytest.mark.slow
def test_a_two_node_job_requeued_mid_run_resumes_and_ends_with_the_same_weights(
    reference: Reference, slurm_two_nodes: SlurmCluster, store: Path, tmp_path
):
    sweep_dir = tmp_path / "sweep"
    process = multirun(slurm_two_nodes, sweep_dir, store)
    job_id = submitted_job(slurm_two_nodes, process, sweep_dir)
    deadline = time.monotonic() + 180
    while not (sweep_dir / "0" / "checkpoints" / CHECKPOINTS[0]).exists():
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the job wrote no checkpoint within 180 s"
        time.sleep(0.05)
    slurm_two_nodes.requeue(job_id)  # what preemption does: SIGTERM to every task on both nodes
    finish(process)  # returns once the requeued job has written its result
    assert slurm_two_nodes.wait(job_id, timeout_s=60) == "COMPLETED"
    assert slurm_two_nodes.attempts(job_id) == ["REQUEUED", "COMPLETED"]
    nodes = slurm_two_nodes.run("sacct", "-n", "-X", "-P", "--duplicates", "-j", job_id, "-o", "NNodes")
    assert nodes.split() == ["2", "2"]  # both attempts on both nodes

    rank0_log, rank1_log = task_logs(sweep_dir, job_id)
    assert "Received SIGTERM: checkpointing after this step" in rank0_log
    resumed_at = int(rank0_log.split("Resumed from step ")[1].split()[0])
    assert 2 <= resumed_at < STEPS, f"the requeue should land mid-run; resumed at step {resumed_at}"
    # The requeued job (same id) met again at the same address and port, each rank on its node again.
    first, second = slurm_two_nodes.nodes
    meeting = rendezvous(slurm_two_nodes, job_id)
    assert joined(rank0_log) == [("0", "0", "1", first, *meeting)] * 2
    assert joined(rank1_log) == [("1", "0", "1", second, *meeting)] * 2

    for rank in (0, 1):
        assert_same_weights(weights(sweep_dir / "0", rank), weights(reference.sweep_dir / "0", rank))
    # One MLflow run across both attempts, every step once, with the uninterrupted run's values.
    (run,) = training_runs(store, sweep_dir)
    (uninterrupted,) = training_runs(store, reference.sweep_dir)
    assert run.info.status == "FINISHED"
    assert loss_history(store, run.info.run_id) == loss_history(store, uninterrupted.info.run_id)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_sweep_of_two_points_runs_each_point_as_one_ddp_run_across_both_nodes(
    reference: Reference, slurm_two_nodes: SlurmCluster, store: Path, tmp_path
):
    sweep_dir = tmp_path / "sweep"
    finish(multirun(slurm_two_nodes, sweep_dir, store, "seed=0,1"))
    jobs = slurm_two_nodes.multirun_job_ids(sweep_dir)
    assert len(jobs) == 2
    first, second = slurm_two_nodes.nodes
    ports = set()
    for job_id in jobs:  # one job array, each point of it on both nodes: rank 0 on the first, rank 1 on the second
        assert slurm_two_nodes.wait(job_id, timeout_s=60) == "COMPLETED"
        allocations = slurm_two_nodes.run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,NNodes").split()
        assert f"{job_id}|2" in allocations  # (right after the end sacct may also list the array's own record)
        (rank0,), (rank1,) = (joined(log) for log in task_logs(sweep_dir, job_id))
        assert (rank0[3], rank1[3]) == (first, second) and rank0[4:] == rank1[4:]
        ports.add(rank0[5])
    assert len(ports) == 2  # the points share both nodes: each job met on a port of its own

    points = [sweep_dir / str(num) for num in (0, 1)]
    for point in points:
        assert_same_weights(weights(point, 0), weights(point, 1))
    # seed=0 is the default: point 0 is the job of the tests above, inside a job array this time.
    assert_same_weights(weights(points[0], 0), weights(reference.sweep_dir / "0", 0))
    assert not torch.equal(*(weights(point, 0)["update_block.flow_head.conv2.weight"] for point in points))
    # One MLflow run per point, both under the sweep's parent run.
    runs = training_runs(store, sweep_dir)
    assert sorted(r.data.tags["stereo_exp.job_num"] for r in runs) == ["0", "1"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
