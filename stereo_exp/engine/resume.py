"""Where a run starts (fresh, from a checkpoint, or where an attempt died before its first checkpoint), and the rules
that keep two runs from ever sharing a run directory.

A run directory belongs to one run. Before the MLflow run is created, a fresh run writes

    config.yaml   the resolved config: the directory's owner (also logged to MLflow)
    run.json      {"run_key": ..., "mlflow_run_id": ...}: the key tags the MLflow run when it is created and the
                  id is added once known, so an attempt killed before its first checkpoint is continued, in the
                  same MLflow run, by the next one

``find_start`` decides from what is there, touching nothing:

* ``resume=auto``: the newest intact checkpoint (damaged newer ones are named and skipped), else the record of an
  attempt that died before its first checkpoint, else a fresh start. Its config must match this one, except for keys
  that change how a run is observed or executed (``EXACT_CHANGES``); keys that change the numbers a CPU or GPU
  computes (``INEXACT_CHANGES``, the effective thread count on a CPU, the process count) are refused unless
  ``train.allow_inexact_resume=true``, and the MLflow run is then tagged.
* ``resume=null``: a fresh start, refused in a directory that already holds a run.
* ``resume=PATH``: that checkpoint (no fallback), same checks.

Refusals change nothing and only suggest commands that change nothing already written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from stereo_exp.engine import checkpoint as ckpt

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RUN_RECORD = "run.json"
# Keys that may differ between a run's config and the config that resumes it: they change how the run is observed
# or executed, not what it computes.
EXACT_CHANGES = (
    *("paths.", "tracking.", "loader.", "resume", "train.log_every", "train.max_steps"),
    *("train.allow_inexact_resume", "checkpoint.", "hydra"),
)
# Keys that keep the run meaningful but change the numbers: floating-point reductions depend on the thread count,
# the precision, the device, compiled kernels, the memory layout of the maps and the optimizer's kernels. Accepted
# only with train.allow_inexact_resume=true.
INEXACT_CHANGES = (
    *("train.num_threads", "train.precision", "train.device", "speed.", "model.channels_last"),
    "optim.implementation",
)


class RunDirectoryError(ValueError):
    """This command cannot start or resume in the run directory; nothing was changed (the message says what to do)."""


@dataclass
class StartPoint:
    """Where ``train`` starts; see the module docstring."""

    run_key: str  # tags the MLflow run at creation, so a restart finds it even if its id was never recorded
    checkpoint: Path | None = None  # the checkpoint to resume from; None: step 0
    state: dict[str, Any] | None = None  # its content (TrainState.state_dict())
    mlflow_run_id: str | None = None  # the MLflow run to continue; None: find it by run_key or create it
    claim: bool = True  # the directory is new to this run: write config.yaml and run.json
    inexact: list[str] = field(default_factory=list)  # accepted changes that break exactness, "key: old -> new"


@dataclass(frozen=True)
class Runtime:
    """How this attempt executes, compared with the checkpoint's record of the attempt that wrote it."""

    world_size: int  # processes
    device: str  # cpu | cuda
    num_threads: int  # effective torch intra-op threads per process
    allow_inexact: bool  # train.allow_inexact_resume: accept differences that change the numbers


def find_start(
    resume: str | None, output: Path, resolved: dict[str, Any], runtime: Runtime, new_dir_override: str
) -> StartPoint:
    """Decide where the run starts; raises ``RunDirectoryError`` (nothing changed) when it cannot.

    ``resume`` is the ``resume`` key, ``output`` the run directory, ``resolved`` the run's config as plain data;
    ``new_dir_override`` is the override that moves a run to another directory (e.g. ``hydra.run.dir=/x/run-2``),
    for the refusal messages.
    """
    allow_inexact = runtime.allow_inexact
    checkpointer = ckpt.Checkpointer(output, keep_last=1, is_main=False)
    record = _read_record(output)
    owner = _read_config(output)
    existing = checkpointer.list()
    holds_run = bool(existing) or owner is not None
    advice = _Advice(output, new_dir_override, existing[-1] if existing else None)

    if resume is None:
        if holds_run:
            different = [k for k in _diff_keys(owner or {}, resolved) if not k.startswith(EXACT_CHANGES)]
            how = "leave out resume=null (resume=auto continues it)"
            if owner is not None and different:
                how += f" and use its values: {' '.join(f'{k}={_value(owner, k)}' for k in sorted(different))}"
            raise RunDirectoryError(
                f"Cannot start a new run in {output} (resume=null): it already holds a run"
                f"{_describe_checkpoints(existing)}. Nothing was changed. Either\n"
                + advice.new_dir()
                + advice.continue_run([how])
                + advice.init_from()
            )
        return StartPoint(run_key=_new_key())

    if resume == "auto":
        try:
            found = checkpointer.newest_intact()
        except ckpt.DamagedCheckpointsError as error:
            raise RunDirectoryError(f"Cannot resume in {output}: {error}") from error
        if found is None:
            if owner is None:
                return StartPoint(run_key=_new_key())
            # An attempt that died before its first checkpoint: continue it from step 0, in the same MLflow run.
            inexact = _check_same_run(owner, resolved, output / CONFIG_FILE, allow_inexact, advice)
            log.info("Restarting the run of %s from step 0 (no checkpoint was written yet).", output)
            run_key = record.get("run_key") or _new_key()
            return StartPoint(run_key, mlflow_run_id=record.get("mlflow_run_id"), claim=False, inexact=inexact)
        path, state = found
    else:
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume={resume!r} is not a file; expected a checkpoint (or auto, or null).")
        state = ckpt.load_checkpoint(path)
        if holds_run and path.resolve().parent != (output / ckpt.CHECKPOINT_DIR).resolve():
            raise RunDirectoryError(
                f"Cannot resume {path} in {output}: that directory already holds another run"
                f"{_describe_checkpoints(existing)}. Nothing was changed. Either\n"
                + advice.new_dir()
                + advice.init_from()
            )

    inexact = _check_same_run(state["config"], resolved, path, allow_inexact, advice)
    inexact += _check_runtime(state, path, runtime, advice, inexact)
    log.info("Resuming from %s", path)
    return StartPoint(
        run_key=record.get("run_key") or _new_key(),
        checkpoint=path,
        state=state,
        mlflow_run_id=state.get("mlflow_run_id") or record.get("mlflow_run_id"),
        claim=not holds_run,
        inexact=inexact,
    )


def claim(output: Path, resolved: dict[str, Any], run_key: str) -> None:
    """Make ``output`` this run's directory (rank 0): run.json, then config.yaml, each written atomically."""
    output.mkdir(parents=True, exist_ok=True)
    lock(output)  # a directory made here (paths.output set by hand) could not be locked before
    _write_atomic(output / RUN_RECORD, json.dumps({"run_key": run_key, "mlflow_run_id": None}, indent=1))
    _write_atomic(output / CONFIG_FILE, OmegaConf.to_yaml(resolved))


def lock(output: Path) -> None:
    """Hold the run directory ``output`` for this process until ``unlock`` (or the process ends); raise
    ``RunDirectoryError`` (nothing changed) while another process holds it: the same command started twice, or a
    sweep resumed while its jobs still run, would otherwise train in one directory at once, each overwriting the
    other's checkpoints and logging into one MLflow run.

    The lock is ``flock`` on the directory itself, so taking it writes nothing and a killed process leaves none
    behind. No-op while the directory does not exist yet (``claim`` creates it and takes the lock then) and where
    the file system refuses the lock (logged). On a network file system a lock may hold on one machine only."""
    if output in _LOCKED or not output.is_dir():
        return
    try:
        descriptor = os.open(output, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        log.info("Could not open %s to lock it (%s); runs in it are not protected from each other.", output, error)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        pid = _lock_holder(output)
        raise RunDirectoryError(
            f"Cannot use {output}: another process{f' (pid {pid})' if pid else ''} is running in it right now (it "
            "holds the folder's lock). Nothing was changed. Wait for it to end, or stop it (Ctrl-C in its terminal, "
            f"or kill -INT {pid or 'PID'}: it writes a checkpoint), then run this command again to resume."
        ) from None
    except OSError as error:
        os.close(descriptor)
        log.info("Could not lock %s (%s); runs in it are not protected from each other.", output, error)
        return
    _LOCKED[output] = descriptor


def unlock(output: Path) -> None:
    """Release the lock ``lock`` took on ``output`` (no-op when this process holds none)."""
    descriptor = _LOCKED.pop(output, None)
    if descriptor is not None:
        os.close(descriptor)  # the only one: forked processes close their copies (_forget_locks_in_child)


_LOCKED: dict[Path, int] = {}  # run directory -> the open descriptor of its flock, held by this process


def _forget_locks_in_child() -> None:
    """A forked process (a DataLoader worker) closes its copies of the lock descriptors: a flock lasts while any
    copy is open, and a worker outliving a killed training process (up to 5 s) would hold the run directory."""
    for descriptor in _LOCKED.values():
        os.close(descriptor)
    _LOCKED.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def _lock_holder(output: Path) -> int | None:
    """The pid that holds the flock on ``output``, from /proc/locks (Linux; lines such as
    ``3: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF``), or None when it cannot be told."""
    try:
        info = output.stat()
        inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1:2] == ["FLOCK"] and inode in fields:
                return int(fields[fields.index(inode) - 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def record_mlflow_run(output: Path, run_key: str, run_id: str | None) -> None:
    """Remember the MLflow run of this directory (rank 0), so that a restart continues it."""
    if run_id is not None and _read_record(output).get("mlflow_run_id") != run_id:
        _write_atomic(output / RUN_RECORD, json.dumps({"run_key": run_key, "mlflow_run_id": run_id}, indent=1))


# ---- checks -------------------------------------------------------------------------------------------------------


def _check_same_run(
    old: dict[str, Any], new: dict[str, Any], source: Path, allow_inexact: bool, advice: _Advice
) -> list[str]:
    """Refuse a config that computes something else than the run that wrote ``source``; returns the accepted
    inexact changes (``key: old -> new``)."""
    changed = sorted(_diff_keys(old, new))
    different = [k for k in changed if not k.startswith(EXACT_CHANGES) and not k.startswith(INEXACT_CHANGES)]
    if different:
        values = [f"{k}={_value(old, k)}" for k in different]
        raise RunDirectoryError(
            f"Cannot resume {source}: that run's config differs in\n"
            + "".join(f"  {k}: {_value(old, k)} (that run) -> {_value(new, k)} (this command)\n" for k in different)
            + "A resumed run must compute what the interrupted run would have, so nothing was changed. Either\n"
            + advice.new_dir()
            + advice.continue_run([f"repeat the command with {' '.join(values)}"])
            + advice.init_from()
        )
    inexact = [f"{k}: {_value(old, k)} -> {_value(new, k)}" for k in changed if k.startswith(INEXACT_CHANGES)]
    _refuse_inexact(inexact, source, allow_inexact, [f"{k}={_value(old, k)}" for k in changed if k in INEXACT_CHANGES])
    return inexact


def _check_runtime(
    state: dict[str, Any], source: Path, runtime: Runtime, advice: _Advice, config_changes: list[str]
) -> list[str]:
    """The process count, and on a CPU the effective thread count (``train.num_threads=null`` is the machine's
    default, which differs between machines), must be those of the run that wrote ``state``. ``config_changes``:
    the inexact changes already found in the config (not reported twice)."""
    world_size, device, num_threads = runtime.world_size, runtime.device, runtime.num_threads
    inexact, fixes = [], []
    old_world = state.get("world_size", world_size)
    if old_world != world_size:
        inexact.append(f"processes: {old_world} -> {world_size} (the global batch decides which samples a step draws)")
        fixes.append(f"start {old_world} process{'es' if old_world > 1 else ''}")
    old_threads = state.get("num_threads", num_threads)
    reported = " ".join(config_changes)
    on_cpu = device == "cpu" and state.get("device", device) == "cpu"
    if on_cpu and old_threads != num_threads and "train.num_threads" not in reported:
        inexact.append(f"CPU threads per process: {old_threads} -> {num_threads}")
        fixes.append(f"train.num_threads={old_threads}")
    if state.get("device", device) != device and "train.device" not in reported:
        inexact.append(f"device: {state['device']} -> {device}")
        fixes.append(f"train.device={state['device']}")
    _refuse_inexact(inexact, source, runtime.allow_inexact, fixes)
    if old_world != world_size and runtime.allow_inexact:
        log.warning("%s: %s. %s", source, inexact[0], advice.init_from().strip())
    return inexact


def _refuse_inexact(inexact: list[str], source: Path, allow_inexact: bool, fixes: list[str]) -> None:
    if not inexact:
        return
    if allow_inexact:
        log.warning(
            "Resuming %s inexactly (train.allow_inexact_resume=true): %s. The result will differ from an "
            "uninterrupted run; the MLflow run is tagged stereo_exp.inexact_resume.step_<step>.",
            source,
            "; ".join(inexact),
        )
        return
    fix = f"resume as the run was computed: {' '.join(fixes)}" if fixes else "resume with the run's settings"
    raise RunDirectoryError(
        f"Cannot resume {source} exactly: {'; '.join(inexact)}. The result would differ from an uninterrupted run, "
        f"so nothing was changed. Either\n  - {fix}\n  - or accept the difference: train.allow_inexact_resume=true "
        "(the MLflow run is then tagged stereo_exp.inexact_resume.step_<step>)"
    )


class _Advice:
    """The commands a refusal suggests: none of them changes anything already written."""

    def __init__(self, output: Path, new_dir_override: str, newest: Path | None) -> None:
        self.output = output
        self.new_dir_override = new_dir_override
        self.newest = newest

    def new_dir(self) -> str:
        return f"  - run this command in a new run directory: {self.new_dir_override}\n"

    def continue_run(self, how: list[str]) -> str:
        return "".join(f"  - or continue that run: {h}\n" for h in how)

    def init_from(self) -> str:
        if self.newest is None:
            return ""
        return f"  - or start a new run from its weights: {self.new_dir_override} init_from={self.newest}\n"


def _describe_checkpoints(existing: list[Path]) -> str:
    if not existing:
        return f" ({CONFIG_FILE}, no checkpoint yet)"
    return f" ({len(existing)} checkpoint{'s' if len(existing) > 1 else ''}, the newest {existing[-1].name})"


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _value(config: dict[str, Any], key: str) -> str:
    """``key`` (dotted) of ``config`` as an override value (``null`` when absent)."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "null" if node is None else json.dumps(node) if isinstance(node, list | dict | bool) else str(node)


# ---- files --------------------------------------------------------------------------------------------------------


def _new_key() -> str:
    return uuid.uuid4().hex


def _read_record(output: Path) -> dict[str, Any]:
    path = output / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as error:
        log.warning("Ignoring %s (%s): the MLflow run of an attempt without checkpoint cannot be found.", path, error)
        return {}
    return record if isinstance(record, dict) else {}


def _read_config(output: Path) -> dict[str, Any] | None:
    path = output / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # OSError, or any YAML error of a damaged file
        raise RunDirectoryError(
            f"{path} is unreadable ({error}); it records which run owns {output}, so nothing was changed. Start in "
            "a new run directory."
        ) from error
    return config if isinstance(config, dict) else {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
