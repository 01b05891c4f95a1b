"""Pytest fixtures for tests that need the single-node SLURM cluster of launch/ or a real MLflow server.

Use them from a test module with ``pytest_plugins = ["tests.cluster_fixtures"]`` (or import the fixtures in
``tests/conftest.py``):

* ``slurm_cluster`` (session): a :class:`SlurmCluster` for the cluster of ``launch/slurm_cluster.sh``. A cluster
  that already answers is used as it is. Otherwise it is started (and stopped again at the end of the session)
  when ``SLURM_TESTS=start`` or ``CI`` is set. Off CI a cluster that is not there skips the test with the reason;
  in CI (``CI`` set) it fails the test instead, so the cluster tests can never be skipped silently there.
* ``mlflow_server`` (function): a started :class:`launch.mlflow_server.MlflowServer` on a free 127.0.0.1 port with
  its database in the test's tmp_path; ``server.uri`` to log to it, ``server.stop()`` / ``server.start()`` to take it
  down and bring it back (same port, same data) mid-test. It is stopped at teardown.
* ``shared_mlflow_server`` (session): one such server for all tests that only log to it (own experiment each).

They set nothing global besides ``SLURM_CONF`` (for the session, so that submitit, sbatch and sacct reach the
test cluster).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from launch.mlflow_server import MlflowServer
from tests.conftest import REPO_ROOT

CLUSTER_SCRIPT = REPO_ROOT / "launch" / "slurm_cluster.sh"

# sacct states after which a job will not run again (a requeued job shows PENDING/REQUEUED, not one of these).
FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)
CLIENT_TIMEOUT_S = 30  # one sinfo/sacct/sbatch call; the daemons answer in milliseconds when they are up


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster, and helpers to submit to it and wait for jobs.

    Attributes:
        conf: its slurm.conf (exported as ``SLURM_CONF`` for the whole test session).
        partition: the default partition's name.
        cpus: CPUs of its one node (jobs may still share them: the partition oversubscribes cores).
        started_here: whether this test session started it (and will stop it at the end).
    """

    conf: Path
    partition: str
    cpus: int
    started_here: bool

    def sbatch(self, script: str, *, workdir: Path, name: str = "job") -> str:
        """Write ``script`` (a complete batch script, ``#!/bin/bash`` first) to workdir/NAME.sbatch, submit it
        with workdir as its working directory, and return the job id."""
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"{name}.sbatch"
        path.write_text(script)
        out = _run(["sbatch", "--parsable", f"--chdir={workdir}", f"--job-name={name}", str(path)])
        return out.split(";")[0]  # --parsable prints "ID" or "ID;CLUSTER"

    def state(self, job_id: str) -> str:
        """The job's current state from sacct (first word: "CANCELLED by 0" -> "CANCELLED"); "" while sacct
        does not know the job yet (a new job reaches the database within a second or two)."""
        out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"])
        lines = [line for line in out.splitlines() if line.strip()]
        return lines[-1].split()[0] if lines else ""

    def attempts(self, job_id: str) -> list[str]:
        """The state of every attempt of the job, oldest first (``sacct --duplicates``): a job requeued once and
        then finished shows ["REQUEUED", "COMPLETED"]."""
        out = _run(["sacct", "-n", "-X", "-P", "--duplicates", "-j", job_id, "-o", "State"])
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def exit_code(self, job_id: str) -> str:
        """sacct's ExitCode of the job's allocation, "CODE:SIGNAL" (e.g. "0:0", "3:0")."""
        out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "ExitCode"])
        return out.splitlines()[-1].strip()

    def requeue(self, job_id: str) -> None:
        """``scontrol requeue``: what preemption does. The job's tasks get SIGTERM (SIGKILL KillWait seconds later)
        and the job runs again from its batch script with the same id and ``SLURM_RESTART_COUNT`` set."""
        _run(["scontrol", "requeue", job_id])

    @staticmethod
    def multirun_job_ids(sweep_dir: Path) -> list[str]:
        """The SLURM job ids of a multirun, from the folders submitit makes under ``<sweep dir>/.submitit`` (one per
        job; ``ARRAYID_INDEX`` for the points of a job array)."""
        folder = sweep_dir / ".submitit"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def send_signal(self, job_id: str, signal_name: str) -> None:
        """``scancel --signal=NAME``: the signal reaches the job's running steps (the srun tasks, i.e. submitit's
        processes) and not the batch shell, as SLURM's warning before the time limit (``--signal``) does."""
        _run(["scancel", f"--signal={signal_name}", job_id])

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
        details = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        raise TimeoutError(
            f"job {job_id} not finished after {timeout_s:.0f} s (sacct: {self.state(job_id)!r}):\n{details}"
        )

    def executor(self, folder: Path, **parameters: object):
        """A ``submitit.AutoExecutor`` for this cluster: one CPU per task, a 5-minute limit and the repository
        on PYTHONPATH, so that functions defined in ``tests/`` unpickle inside the job. ``parameters`` are
        passed to ``update_parameters`` last (e.g. ``tasks_per_node=2``)."""
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

    def hydra_launcher_overrides(self, *, tasks_per_node: int = 1, timeout_min: int = 10) -> list[str]:
        """Command-line overrides that fit ``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) to this
        CPU-only cluster: no GPUs, one CPU per task."""
        return [
            "hydra/launcher=slurm",
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


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The single-node test cluster (see the module docstring for when it is started, skipped or failed)."""
    conf = _cluster_conf()
    may_start = bool(os.environ.get("CI")) or os.environ.get("SLURM_TESTS", "").lower() in ("start", "1", "yes")
    started_here = False
    if not _answers(conf):
        if not may_start:
            _unavailable(
                f"nothing answers at SLURM_CONF={conf}; run `sudo {CLUSTER_SCRIPT} start`"
                " (after .ci/install_cluster.sh) or set SLURM_TESTS=start to let the tests start it"
            )
        if shutil.which("slurmctld") is None:
            _unavailable("SLURM is not installed; run .ci/install_cluster.sh")
        if os.geteuid() != 0:
            _unavailable(f"starting the cluster needs root; run `sudo {CLUSTER_SCRIPT} start` first")
        result = subprocess.run([str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not _answers(conf):
            _unavailable(f"`{CLUSTER_SCRIPT} start` failed (code {result.returncode}):\n{result.stdout}{result.stderr}")
        started_here = True

    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", str(conf))
    partitions = _run(["sinfo", "-h", "-o", "%P"]).split()
    default = [p for p in partitions if p.endswith("*")] or partitions
    cpus = int(_run(["sinfo", "-h", "-N", "-o", "%c"]).split()[0])
    try:
        yield SlurmCluster(conf=conf, partition=default[0].rstrip("*"), cpus=cpus, started_here=started_here)
    finally:
        patch.undo()
        if started_here:
            subprocess.run([str(CLUSTER_SCRIPT), "stop"], capture_output=True, text=True, timeout=300)


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
