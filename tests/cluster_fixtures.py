"""Pytest fixtures for tests that need a SLURM cluster of launch/slurm_cluster.sh or a real MLflow server.

Use them from a test module with ``pytest_plugins = ["tests.cluster_fixtures"]`` (or import the fixtures in
``tests/conftest.py``):

* ``slurm_cluster`` (session): a :class:`SlurmCluster` for the cluster of ``launch/slurm_cluster.sh``. A cluster
  that already answers is used as it is. Otherwise it is started (and stopped again at the end of the session)
  when ``SLURM_TESTS=start`` or ``CI`` is set. Off CI a cluster that is not there skips the test with the reason;
  in CI (``CI`` set) it fails the test instead, so the cluster tests can never be skipped silently there.
* ``slurm_two_nodes`` (session): a :class:`SlurmCluster` for the two-node cluster (``--nodes 2``: every node a
  network namespace with its own address and host name) in ``TWO_NODE_CLUSTER``'s folder, beside the single-node
  one. Used as it is when it answers, else started and stopped like ``slurm_cluster``. Its clients run on its head
  node: ``cluster.run("squeue", ...)``, or ``[*cluster.client_prefix, CMD...]`` for a command of your own.
* ``mlflow_server`` (function): a started :class:`launch.mlflow_server.MlflowServer` on a free 127.0.0.1 port with
  its database in the test's tmp_path; ``server.uri`` to log to it, ``server.stop()`` / ``server.start()`` to take it
  down and bring it back (same port, same data) mid-test. It is stopped at teardown.
* ``shared_mlflow_server`` (session): one such server for all tests that only log to it (own experiment each).

They set nothing global besides ``SLURM_CONF`` (for the session, so that submitit, sbatch and sacct reach the
single-node test cluster).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from launch.mlflow_server import MlflowServer
from stereo_exp.launcher import FINAL_STATES
from tests.conftest import REPO_ROOT

CLUSTER_SCRIPT = REPO_ROOT / "launch" / "slurm_cluster.sh"

CLIENT_TIMEOUT_S = 30  # one sinfo/sacct/sbatch call; the daemons answer in milliseconds when they are up
# The two-node cluster's settings: its own state folder, name (the prefix of its namespaces and host names) and
# ports, so that it runs beside the single-node cluster and its start and stop never touch that one.
TWO_NODE_CLUSTER = {
    "SLURM_CLUSTER_DIR": "/tmp/stereo_exp_slurm2",
    "SLURM_CLUSTER_NAME": "stereo2",
    "SLURM_CLUSTER_PORT": "6917",
    "SLURM_CLUSTER_NODES": "2",
}


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster, and helpers to submit to it and wait for jobs.

    Attributes:
        conf: its slurm.conf (the single-node cluster's is exported as ``SLURM_CONF`` for the whole test session).
        partition: the default partition's name.
        cpus: CPUs of its first node (jobs may still share them: the partition oversubscribes cores).
        started_here: whether this test session started it (and will stop it at the end).
        nodes: the nodes' names, in order.
        client_prefix: what runs a command where the cluster's clients work: empty for the single-node cluster,
            ``launch/slurm_cluster.sh exec`` (its head node) for a multi-node one.
    """

    conf: Path
    partition: str
    cpus: int
    started_here: bool
    nodes: tuple[str, ...] = ("localhost",)
    client_prefix: tuple[str, ...] = ()

    def run(self, *cmd: str) -> str:
        """Run a SLURM client command (sbatch, squeue, sacct, scontrol ...) against this cluster; its stdout."""
        return _run([*self.client_prefix, *cmd])

    def sbatch(self, script: str, *, workdir: Path, name: str = "job") -> str:
        """Write ``script`` (a complete batch script, ``#!/bin/bash`` first) to workdir/NAME.sbatch, submit it
        with workdir as its working directory, and return the job id."""
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"{name}.sbatch"
        path.write_text(script)
        out = self.run("sbatch", "--parsable", f"--chdir={workdir}", f"--job-name={name}", str(path))
        return out.split(";")[0]  # --parsable prints "ID" or "ID;CLUSTER"

    def state(self, job_id: str) -> str:
        """The job's current state from sacct (first word: "CANCELLED by 0" -> "CANCELLED"); "" while sacct
        does not know the job yet (a new job reaches the database within a second or two)."""
        out = self.run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State")
        lines = [line for line in out.splitlines() if line.strip()]
        return lines[-1].split()[0] if lines else ""

    def attempts(self, job_id: str) -> list[str]:
        """The state of every attempt of the job, oldest first (``sacct --duplicates``): a job requeued once and
        then finished shows ["REQUEUED", "COMPLETED"]."""
        out = self.run("sacct", "-n", "-X", "-P", "--duplicates", "-j", job_id, "-o", "State")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def exit_code(self, job_id: str) -> str:
        """sacct's ExitCode of the job's allocation, "CODE:SIGNAL" (e.g. "0:0", "3:0")."""
        out = self.run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "ExitCode")
        return out.splitlines()[-1].strip()

    def requeue(self, job_id: str) -> None:
        """``scontrol requeue``: what preemption does. The job's tasks get SIGTERM (SIGKILL KillWait seconds later)
        and the job runs again from its batch script with the same id and ``SLURM_RESTART_COUNT`` set."""
        self.run("scontrol", "requeue", job_id)

    @staticmethod
    def multirun_job_ids(sweep_dir: Path) -> list[str]:
        """The SLURM job ids of a multirun, from the folders submitit makes under ``<sweep dir>/.submitit`` (one per
        job; ``ARRAYID_INDEX`` for the points of a job array, whose own folder ``ARRAYID`` holds only the batch
        script and is left out once a point's folder exists)."""
        folder = sweep_dir / ".submitit"
        names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        return [name for name in names if not any(other.startswith(f"{name}_") for other in names)]

    def send_signal(self, job_id: str, signal_name: str) -> None:
        """``scancel --signal=NAME``: the signal reaches the job's running steps (the srun tasks, i.e. submitit's
        processes) and not the batch shell, as SLURM's warning before the time limit (``--signal``) does."""
        self.run("scancel", f"--signal={signal_name}", job_id)

    def wait(self, job_id: str, *, timeout_s: float = 120.0, poll_s: float = 0.5) -> str:
        """Poll sacct until the job reaches a final state (see FINAL_STATES) and return that state.

        Raises:
            TimeoutError: after ``timeout_s``, with what squeue and scontrol say about the job.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state in FINAL_STATES:
                return state
            time.sleep(poll_s)
        details = subprocess.run(
            [*self.client_prefix, "scontrol", "show", "job", job_id], capture_output=True, text=True
        ).stdout
        raise TimeoutError(
            f"job {job_id} not finished after {timeout_s:.0f} s (sacct: {self.state(job_id)!r}):\n{details}"
        )

    def executor(self, folder: Path, **parameters: object):
        """A ``submitit.AutoExecutor`` for the single-node cluster (it submits from this process): one CPU per task,
        a 5-minute limit and the repository on PYTHONPATH, so that functions defined in ``tests/`` unpickle inside
        the job. ``parameters`` are passed to ``update_parameters`` last (e.g. ``tasks_per_node=2``)."""
        import submitit  # imported here: only cluster tests pay for it

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        defaults: dict[str, object] = {
            "slurm_partition": self.partition,
            "timeout_min": 5,
            "cpus_per_task": 1,
            "tasks_per_node": 1,
            "slurm_setup": [f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"],
        }
        executor.update_parameters(**{**defaults, **parameters})
        return executor

    def hydra_launcher_overrides(self, *, nodes: int = 1, tasks_per_node: int = 1, timeout_min: int = 10) -> list[str]:
        """Command-line overrides that fit ``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) to this
        CPU-only cluster: no GPUs, one CPU per task."""
        return [
            "hydra/launcher=slurm",
            f"hydra.launcher.nodes={nodes}",
            "hydra.launcher.gpus_per_node=null",
            f"hydra.launcher.tasks_per_node={tasks_per_node}",
            "hydra.launcher.cpus_per_task=1",
            f"hydra.launcher.partition={self.partition}",
            f"hydra.launcher.timeout_min={timeout_min}",
        ]


def _run(cmd: list[str]) -> str:
    """Run a SLURM client command; raise with its stderr when it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with code {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def _cluster_conf() -> Path:
    """The slurm.conf that launch/slurm_cluster.sh uses (it honours SLURM_CLUSTER_DIR)."""
    out = subprocess.run([str(CLUSTER_SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    return Path(out.strip().removeprefix("export SLURM_CONF="))


def _controller_listening(conf: Path) -> bool:
    """A quick TCP check of slurmctld's port, so that a stopped cluster is noticed at once (sinfo would keep
    retrying for SLURM's MessageTimeout, 10 s)."""
    settings = dict(line.split("=", 1) for line in conf.read_text().splitlines() if "=" in line and line[0] != "#")
    port = int(settings.get("SlurmctldPort", "6817"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers(conf: Path) -> bool:
    """True when the cluster of ``conf`` answers sinfo with a usable node and sacct (the accounting database)."""
    if shutil.which("sinfo") is None or not conf.exists() or not _controller_listening(conf):
        return False
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env, timeout=CLIENT_TIMEOUT_S
        )
        accounting = subprocess.run(
            ["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, env=env, timeout=CLIENT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return False
    usable = any(s.startswith(("idle", "mixed", "allocated")) for s in states.stdout.split())
    return states.returncode == 0 and usable and accounting.returncode == 0


def _unavailable(reason: str) -> None:
    """Skip off CI; fail in CI, where the cluster must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"SLURM test cluster unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"SLURM test cluster unavailable: {reason}")


def start_cluster(args: list[str], env: dict[str, str], answers: Callable[[], bool], by_hand: str) -> None:
    """``launch/slurm_cluster.sh ARGS`` where the tests may start a cluster (CI, or SLURM_TESTS=start) and can
    (SLURM installed, root); skip or fail (``_unavailable``) otherwise. ``by_hand`` says how to start it oneself."""
    if not (os.environ.get("CI") or os.environ.get("SLURM_TESTS", "").lower() in ("start", "1", "yes")):
        _unavailable(f"{by_hand} (after .ci/install_cluster.sh) or set SLURM_TESTS=start to let the tests start it")
    if shutil.which("slurmctld") is None:
        _unavailable("SLURM is not installed; run .ci/install_cluster.sh")
    if os.geteuid() != 0:
        _unavailable(f"starting the cluster needs root; {by_hand} first")
    result = subprocess.run([str(CLUSTER_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not answers():
        _unavailable(
            f"`{CLUSTER_SCRIPT} {' '.join(args)}` failed (code {result.returncode}):\n{result.stdout}{result.stderr}"
        )


def _describe(conf: Path, started_here: bool, client_prefix: tuple[str, ...] = ()) -> SlurmCluster:
    """A SlurmCluster for the running cluster of ``conf``, its partition and nodes as sinfo reports them."""
    cluster = SlurmCluster(conf=conf, partition="", cpus=0, started_here=started_here, client_prefix=client_prefix)
    partitions = cluster.run("sinfo", "-h", "-o", "%P").split()
    default = [p for p in partitions if p.endswith("*")] or partitions
    nodes = cluster.run("sinfo", "-h", "-N", "-o", "%N %c").splitlines()
    return dataclasses.replace(
        cluster,
        partition=default[0].rstrip("*"),
        cpus=int(nodes[0].split()[1]),
        nodes=tuple(dict.fromkeys(line.split()[0] for line in nodes)),  # once each, in sinfo's (name) order
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The single-node test cluster (see the module docstring for when it is started, skipped or failed)."""
    conf = _cluster_conf()
    started_here = False
    if not _answers(conf):
        start_cluster(
            ["start"],
            dict(os.environ),
            lambda: _answers(conf),
            f"nothing answers at SLURM_CONF={conf}; run `sudo {CLUSTER_SCRIPT} start`",
        )
        started_here = True

    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", str(conf))
    try:
        yield _describe(conf, started_here)
    finally:
        patch.undo()
        if started_here:
            subprocess.run([str(CLUSTER_SCRIPT), "stop"], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[SlurmCluster]:
    """The two-node test cluster of ``TWO_NODE_CLUSTER`` (started, skipped or failed as ``slurm_cluster``)."""
    env = {**os.environ, **TWO_NODE_CLUSTER}
    settings = [f"{name}={value}" for name, value in TWO_NODE_CLUSTER.items()]

    def answers() -> bool:  # sinfo and sacct from its head node
        status = subprocess.run([str(CLUSTER_SCRIPT), "status"], env=env, capture_output=True, timeout=120)
        return status.returncode == 0

    started_here = False
    if not answers():
        for tool in ("ip", "nsenter", "unshare"):
            if shutil.which(tool) is None:
                _unavailable(f"'{tool}' is not installed (iproute2, util-linux); the two-node cluster needs it")
        start_cluster(["start"], env, answers, f"run `sudo {' '.join(settings)} {CLUSTER_SCRIPT} start`")
        started_here = True
    conf = Path(TWO_NODE_CLUSTER["SLURM_CLUSTER_DIR"]) / "etc" / "slurm.conf"
    try:
        yield _describe(conf, started_here, client_prefix=("env", *settings, str(CLUSTER_SCRIPT), "exec"))
    finally:
        if started_here:
            subprocess.run([str(CLUSTER_SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on a free 127.0.0.1 port, database and artifacts under tmp_path/mlflow_server."""
    server = MlflowServer(tmp_path / "mlflow_server").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real ``mlflow server`` for the whole session (starting one costs 5 to 10 s), for tests that only log to
    it: each uses its own experiment name. A test that stops the server takes ``mlflow_server`` instead."""
    server = MlflowServer(tmp_path_factory.mktemp("shared_mlflow_server")).start()
    try:
        yield server
    finally:
        server.stop()
