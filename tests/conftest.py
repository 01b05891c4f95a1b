"""Shared fixtures: the real training config, composed from conf/ and shrunk to seconds on a CPU."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from stereo_exp.config import register_configs

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# The smallest real run: the tiny CREStereo on small synthetic crops, a handful of steps, no workers, no MLflow.
TINY_RUN = [
    "model=crestereo_tiny",
    "mix=embedded",
    "mix.dataset_steps=[6]",
    "schedule.warmup_steps=1",  # shorter than the run (the embedded schedule warms up over 50 steps)
    "augmentation=embedded",
    "augmentation.crop_size=[48,64]",
    "datasets.synthetic.height=64",
    "datasets.synthetic.width=80",
    "datasets.synthetic.disparity_range=[2,16]",
    "eval=embedded",
    "eval.datasets=[synthetic-val]",
    "eval.max_samples=2",
    "eval.save_images=0",
    "train.batch_size=2",
    "train.log_every=1",
    "train.val_every=3",
    "train.num_threads=1",
    "loader.num_workers=0",
    "checkpoint.every=2",
    "tracking=none",
]


# The suite runs in two pytest-xdist workers, each test module in one of them (pyproject's addopts: --dist loadfile).
# The modules of the SLURM test clusters run together in one worker, as if one file: a cluster is started once, by
# one session, and stopped at that session's end, never under another worker's test. Each of them uses a session
# fixture of tests/cluster_fixtures.py (test_readme's workspace runs the README's sweep on one).
CLUSTER_MODULES = (
    "test_cluster_infra.py",
    "test_multinode.py",
    "test_readme.py",
    "test_slurm_sweeps.py",
    "test_slurm_training.py",
)
CLUSTER_FIXTURES = {"slurm_cluster", "slurm_two_nodes"}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, called in the controlling process
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ClusterModulesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "the SLURM test clusters" if Path(module).name in CLUSTER_MODULES else module

    return ClusterModulesTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Longest first (the workers take modules in this order): the cluster modules, then the modules with the most
    # slow tests, so that no long module is left to run alone at the end. A module's tests keep their order.
    slow_tests = Counter(item.path.name for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: (item.path.name not in CLUSTER_MODULES, -slow_tests[item.path.name]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    used = CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if used and item.path.name not in CLUSTER_MODULES:
        pytest.fail(f"{item.path.name} uses {', '.join(sorted(used))}: list it in CLUSTER_MODULES (tests/conftest.py)")


def pytest_configure(config: pytest.Config) -> None:
    # The workers share the cores: each computes in-process with its share of them (OpenMP threads beyond the
    # cores spin against each other); subprocesses run one thread each (subprocess_env).
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def compose_train_config(output: Path, *overrides: str) -> DictConfig:
    """conf/config.yaml with TINY_RUN, then ``overrides``, writing into ``output``."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=[*TINY_RUN, f"paths.output={output}", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_train_config(tmp_path / "run")


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from tmp_path: MLflow's default ./mlruns artifacts and ./mlflow.db land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two state_dicts hold the same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def subprocess_env() -> dict[str, str]:
    """Environment for `python -m stereo_exp` child processes: one thread each, the repo importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def start_in_own_group(command: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``command`` as a terminal starts a job: its own process group (a signal to the group reaches it and its
    DataLoader workers), SIGINT at its default action (a background job of a script would ignore it), stdout and
    stderr together, as text."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_command(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` to its end in ``cwd`` with ``subprocess_env()``; stdout and stderr captured apart, as text."""
    return subprocess.run(command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def wait_for_checkpoints(folder: Path, pattern: str = "checkpoints/*.pth", timeout: float = 120) -> None:
    """Poll until a file matches ``pattern`` under ``folder`` (e.g. a run's first checkpoint), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not list(folder.glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.01)


def hang_up_when(command: list[str], cwd: Path, ready: Callable[[], bool], timeout: float = 180) -> int:
    """Run ``command`` on a pseudo-terminal of its own, as the session leader (as a login shell's job is), showing its
    output as a terminal would; once ``ready()`` (or after ``timeout``), close the terminal, as a dropped SSH
    connection does (the kernel sends SIGHUP to its processes). Returns the command's exit code."""
    pid, terminal = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execve(command[0], command, subprocess_env())
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        if select.select([terminal], [], [], 0.05)[0]:
            os.read(terminal, 65536)  # the command must not block writing to a full terminal
    os.close(terminal)  # the hang-up
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def file_checksums(folder: Path, *, with_logs: bool = False) -> dict[str, str]:
    """SHA-256 of every file under ``folder``; without ``with_logs`` not the job logs, which every accepted launch
    appends to."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (with_logs or p.suffix != ".log")
    }


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``make(size)`` mounts a fresh tmpfs of ``size`` (e.g. "1m") for a real full disk; unmounted after the test.
    Needs root (CI runs as root); skips where mounting is not allowed."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small file system needs root")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=False)
