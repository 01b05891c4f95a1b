"""What the Hydra entry points (train, evaluate, eda) share: a failed run lets its loader workers go, and a mistake
in the command or the data ends a run with one line saying what to change, not a traceback."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from stereo_exp import CONF_DIR
from stereo_exp.config import did_you_mean, refusal, typed


def refuse_unknown_keys(config_name: str, argv: Sequence[str]) -> None:
    """Before Hydra starts: a command that sets a key no schema declares (``train.max_step=100``) ends with one line
    naming the key meant. Hydra's own error says "To append to your config use +train.max_step=100", which adds the
    key, and ``typed`` then refuses it: two round trips for a typo (and a swept one left a sweep folder behind). A
    swept key is checked with its first value. A command with a flag other than ``-m`` (``--help``, ``--cfg``,
    another config) is left to Hydra, as is every other composition error."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, HydraException

    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in argv):
        return
    try:
        parsed = OverridesParser.create().parse_overrides([arg for arg in argv if not arg.startswith("-")])
    except HydraException:
        return  # a syntax error: Hydra says where
    overrides = {}  # key -> the override as composed here: a swept one with its first value
    for override in parsed:
        if override.is_sweep_override():
            try:
                first = next(iter(override.sweep_string_iterator()))
            except HydraException:  # interval(...): no first value
                continue
            overrides[override.key_or_group] = f"{override.get_key_element()}={first}"
        else:
            overrides[override.key_or_group] = override.input_line
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            compose(config_name, overrides=list(overrides.values()))
            return
        except Exception as error:  # anything but a key that does not exist: Hydra says it, once it runs
            unknown = re.match(r"Could not override '([^']+)'\.", str(error))
            if not isinstance(error, ConfigCompositionException) or unknown is None:
                return
        key = unknown.group(1)
        others = [override for other, override in overrides.items() if other != key]
        try:
            hint = did_you_mean(compose(config_name, overrides=others), key)
        except Exception:  # another mistake in the command: the key alone then
            hint = ""
    sys.exit(f"error: {refusal([f'unknown key {key}{hint}'])}")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message says what to change in the command or the data: missing or broken datasets, a
    file named in the config that does not exist (weights, init_from), a run the preflight checks refuse."""
    from stereo_exp.data.catalog import DatasetFileError
    from stereo_exp.engine.preflight import RunRefused
    from stereo_exp.engine.resume import RunDirectoryError

    # DatasetRootError is a FileNotFoundError; RunDirectoryError: the run folder does not fit the command
    return FileNotFoundError, DatasetFileError, RunDirectoryError, RunRefused


@contextlib.contextmanager
def clean_errors(cfg: DictConfig, what: str = "Training") -> Iterator[None]:
    """Check ``cfg`` (every schema's own checks, before anything is done), then run the block. A failure's traceback
    goes to the run's log file and its cause to torchrun's failure summary (``report_failure``). In a single run a
    failed check or a user error then ends the process with ``error: <message>`` (exit code 1; no traceback, and a
    run folder it left untouched is removed: ``discard_untouched_run_folder``), any other error
    with ``<what> failed`` and its cause as the last lines; in a multirun it goes to the launcher, which lists it in
    the sweep's summary (stereo_exp/launcher.py). ``HYDRA_FULL_ERROR=1`` keeps the traceback, as for Hydra's own
    errors."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    clean = not multirun and os.environ.get("HYDRA_FULL_ERROR") != "1"
    try:
        typed(cfg)
    except ValueError as error:
        if not clean:
            raise
        discard_untouched_run_folder()
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's failure summary, the last lines, names it too
            from stereo_exp.distributed import record_launcher_error

            record_launcher_error(f"error: {error}")
        sys.exit(f"error: {error}")
    try:
        yield
    except Exception as error:
        refused = clean and isinstance(error, user_errors())  # the message says it all: no traceback in the log
        where = report_failure(error, what, log_traceback=not refused)
        drop_failed_run(error)
        if refused:
            discard_untouched_run_folder()
            sys.exit(f"error: {error}")
        if not clean:
            raise
        print(f"\n{what} failed{where}:\n{cause(error)}", file=sys.stderr, flush=True)
        sys.exit(1)


def report_failure(error: BaseException, what: str, *, log_traceback: bool = True) -> str:
    """Write ``error``'s traceback to the run's log file (Hydra's ``<run dir>/<job>.log``; unless ``log_traceback`` is
    false) and its cause to torchrun's failure summary, so that the terminal can end with the cause alone. Returns
    `` (traceback in FILE)`` or ``""``."""
    from stereo_exp.distributed import record_launcher_error

    files = [h for h in logging.getLogger().handlers if log_traceback and isinstance(h, logging.FileHandler)]
    record = logging.getLogger("stereo_exp").makeRecord(
        "stereo_exp", logging.ERROR, __file__, 0, "%s failed", (what,), (type(error), error, error.__traceback__)
    )
    for handler in files:
        handler.handle(record)
    record_launcher_error(cause(error))
    return f" (traceback in {files[0].baseFilename})" if files else ""


def cause(error: BaseException) -> str:
    """``TypeName: message``, the line that ends the terminal and torchrun's summary."""
    return f"{type(error).__name__}: {error}".rstrip()


def drop_failed_run(error: BaseException) -> None:
    """Free what the frames of ``error``'s traceback hold (the failed run's model, its DataLoader and that loader's
    worker processes) before the process leaves: Python waits at exit for live worker processes, which leave SIGTERM
    to the training process, so a run that failed with loader workers running never ended. The traceback's text
    stays (its frames keep their lines, not their local variables)."""
    traceback.clear_frames(error.__traceback__)
    gc.collect()


HYDRA_RECORDS = ".hydra"  # Hydra's usual folder for its records of a command, in the run folder (save_hydra_records)


def save_hydra_records(cfg: Any, *, replace: bool) -> None:
    """Write ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` to this job's Hydra run folder, as Hydra
    would, with ``cfg`` as ``config.yaml`` (the composed config as the app holds it: typed, interpolations resolved).

    Hydra writes them before the app can check the command, so a refused command in an earlier run's folder replaced
    that run's records; the apps therefore turn Hydra's writing off (``hydra.output_subdir: null``) and call this once
    the command is accepted, before its first output. ``replace``: false keeps records already there (a resumed
    training run keeps those of the command that started it); true replaces them (an evaluation or EDA rerun in its
    folder replaces its results too). No-op outside a Hydra app, or with ``hydra.output_subdir`` set (Hydra wrote
    them)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None:
        return
    hydra_cfg = HydraConfig.get()
    records = Path(hydra_cfg.runtime.output_dir) / HYDRA_RECORDS
    if records.exists() and not replace:
        return
    records.mkdir(parents=True, exist_ok=True)
    contents = {
        "config.yaml": cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for name, content in contents.items():
        (records / name).write_text(OmegaConf.to_yaml(content))


def refuse_another_commands_folder() -> None:
    """Raise ``RunDirectoryError`` when this job's Hydra run folder holds the records of another command: evaluate or
    eda given a training run's folder (``hydra.run.dir=``) replaced that run's ``.hydra/`` records with their own, and
    a training given an evaluation's folder kept the evaluation's records as its own. Called before the command
    writes anything. A command is known by its primary config (``config``: training, also from an app that wraps it;
    ``evaluate``; ``eda``): a folder of the same one (a rerun, a resume) is its own."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import OmegaConfBaseException

    from stereo_exp.engine.resume import RunDirectoryError

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    records = folder / HYDRA_RECORDS / "hydra.yaml"
    try:
        other = OmegaConf.load(records).hydra.job.config_name
    except (OSError, OmegaConfBaseException, AttributeError):  # no records (a new folder), or not Hydra's
        return
    this = hydra_cfg.job.config_name
    if other == this:
        return
    if folder.is_relative_to(Path.cwd()):
        folder = folder.relative_to(Path.cwd())
    raise RunDirectoryError(
        f"hydra.run.dir={folder} holds a run of {_command_of(other)} ({folder / HYDRA_RECORDS / records.name}); "
        f"{_command_of(this)} would mix its records and results into it. Choose a folder of its own, e.g. "
        f"hydra.run.dir={folder / ('train' if this == 'config' else this)}."
    )


def _command_of(config_name: str) -> str:
    """The command of a primary config: ``python -m stereo_exp`` for ``config``, else ``python -m stereo_exp.<name>``
    (conf/evaluate.yaml, conf/eda.yaml)."""
    return "python -m stereo_exp" if config_name == "config" else f"python -m stereo_exp.{config_name}"


def output_is_hydra_run_dir(cfg: DictConfig) -> bool:
    """Whether ``paths.output`` is left at its default, Hydra's run directory (``hydra.run.dir`` then names the run's
    folder), rather than set by hand. True for an app without ``paths.output``: Hydra's folder is all it has."""
    paths = OmegaConf.select(cfg, "paths")
    if paths is None or "output" not in paths:
        return True
    return "hydra:" in str(OmegaConf.to_container(paths, resolve=False)["output"])  # type: ignore[index]


def resume_advice(cfg: DictConfig) -> str:
    """How to resume this run, or the sweep it is a job of, the start of a sentence: "Run the same command again",
    or, when its folder is named by the moment it started (Hydra's default ``hydra.run.dir`` or ``hydra.sweep.dir``,
    and ``paths.output`` left to it), where the same command would start anew in a new folder: "Run the same command
    with hydra.run.dir=FOLDER" (``hydra.sweep.dir=`` for a sweep). ``cfg``: a job's config, or the sweep
    submitter's (which holds its ``hydra`` node: the submitter runs no job, so Hydra's HydraConfig is not set)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = OmegaConf.select(cfg, "hydra") or (HydraConfig.get() if HydraConfig.initialized() else None)
    if hydra_cfg is None:
        return "Run the same command again"
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    key, node = ("hydra.sweep.dir", hydra_cfg.sweep) if multirun else ("hydra.run.dir", hydra_cfg.run)
    folder = Path(str(node.dir))  # the time as it was when the command started (the resolvers cache it)
    pattern = str(OmegaConf.to_container(node, resolve=False)["dir"])
    time_named = "${launch_time:" in pattern or "${now:" in pattern  # ours (the default) or Hydra's
    if not (output_is_hydra_run_dir(cfg) and time_named):
        return "Run the same command again"
    if folder.is_relative_to(Path.cwd()):
        folder = folder.relative_to(Path.cwd())
    return f"Run the same command with {key}={folder}"


def discard_untouched_run_folder() -> None:
    """Remove the run folder Hydra made for a single run that was refused before it wrote anything, so that a
    refused command leaves no trace (Hydra creates the folder and the job's log file before the config can be
    checked, and its ``.hydra/`` records too where ``hydra.output_subdir`` is set).

    Only a folder holding nothing but those records and an empty log is removed: a folder that already held a run
    (``hydra.run.dir`` of an earlier run) has more, and one shared with another run started in the same second has
    that run's log lines. Then its parents, while they are empty, up to the working directory (``outputs/<date>/``
    of the default ``hydra.run.dir``).
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    log_file = folder / f"{hydra_cfg.job.name}.log"
    hydra_files = {log_file}
    if hydra_cfg.output_subdir is not None:  # hydra.output_subdir=null: no .hydra/ records
        records = folder / hydra_cfg.output_subdir
        hydra_files |= {records, *(records / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml"))}
    try:
        if not set(folder.rglob("*")) <= hydra_files:
            return
        if log_file.exists() and log_file.stat().st_size > 0:
            return
    except OSError:
        return
    for handler in list(logging.getLogger().handlers):  # the job log's handler holds the file open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == log_file:
            logging.getLogger().removeHandler(handler)
            handler.close()
    _remove_with_empty_parents(folder)


def discard_untouched_sweep_folder(sweep_dir: Path) -> None:
    """Remove the folder of a multirun refused before any job started, so that it leaves no trace: Hydra's sweeper
    writes ``multirun.yaml`` there before the launcher can check the jobs. Only a folder holding nothing but that
    file is removed (one shared with a sweep started in the same second has its jobs' folders), then its parents
    while they are empty, up to the working directory (``multirun/<date>/``)."""
    folder = sweep_dir.resolve()
    try:
        if [path.name for path in folder.iterdir()] != ["multirun.yaml"]:
            return
    except OSError:
        return
    _remove_with_empty_parents(folder)


def _remove_with_empty_parents(folder: Path) -> None:
    """Remove ``folder``, then its parents while they are empty, up to the working directory (never above it)."""
    shutil.rmtree(folder, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in folder.parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break


def detach_from_terminal() -> None:
    """After a hang-up (SIGHUP: the terminal closed, an SSH connection dropped): point stdin, stdout and stderr at
    /dev/null, as ``nohup`` would have, since writing to the gone terminal fails (EIO). Logs go on to their files."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for descriptor in (0, 1, 2):
        os.dup2(devnull, descriptor)
    os.close(devnull)


class HeldStops:
    """The handler of SIGTERM and SIGHUP in a process that runs several trainings one after another (a sequential
    sweep), while none of them runs (a job's set-up, after its last step): it keeps them instead of ending the process
    at once (the default action) without a summary. The next training takes them over and stops after its first
    step, with a checkpoint; one that came too late for a training is given back (``engine.trainer``)."""

    signals = (signal.SIGTERM, signal.SIGHUP)  # Ctrl-C needs no holding: KeyboardInterrupt stops a set-up cleanly

    def __init__(self) -> None:
        self.received: list[int] = []  # in order of arrival

    def __call__(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            detach_from_terminal()  # the set-up's next print would fail
        self.received.append(signum)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or a hang-up (SIGHUP) in a command with nothing to checkpoint (evaluate, eda): it stops at once, as
    after Ctrl-C (its MLflow run KILLED, one line), rather than by the signal's default action, which left the
    MLflow run RUNNING for good."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within: Ctrl-C, SIGTERM and SIGHUP raise ``Interrupted`` where the process is (main thread only), except in an
    ``uninterrupted()`` region, which raises the first one when it ends."""

    def interrupt(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            detach_from_terminal()  # the next line printed to the gone terminal would fail
        if _uninterrupted.depth:  # a second stop waits too: raised inside MLflow's call, it would cut it
            _uninterrupted.pending = _uninterrupted.pending or signum
            return
        raise Interrupted(signum)

    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # signal.signal off the main thread (a test runner thread): no handling
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Uninterrupted:
    depth = 0  # nesting of uninterrupted() regions
    pending: int | None = None  # the stop signal received inside one


_uninterrupted = _Uninterrupted()


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A region a stop must not cut in two, such as an MLflow call (a run created but not yet known to the tracker,
    which then cannot end it KILLED; a SQLite store being created or written, which a cut left half made or locked):
    under ``stop_signals_interrupt`` the first stop received inside is raised when the region ends, and every other
    one waits with it (a double Ctrl-C is common). MLflow's calls are bounded (``TrackingConfig.http_*``, SQLite's
    lock timeout), so the wait is too."""
    _uninterrupted.depth += 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _uninterrupted.depth -= 1
        signum = _uninterrupted.pending if _uninterrupted.depth == 0 else None
        if signum is not None:
            _uninterrupted.pending = None
            if completed:  # else the region's own exception goes on
                raise Interrupted(signum)


@contextlib.contextmanager
def interruptible_run(tracker: Any) -> Iterator[None]:
    """The body of a command with nothing to checkpoint (evaluate, eda), and the end of its MLflow run: within,
    Ctrl-C, SIGTERM and a hang-up interrupt (``stop_signals_interrupt``); on the way out ``tracker``'s run ends
    FINISHED, KILLED (interrupted) or FAILED (an error), inside the stop-signal region: a stop that comes while the
    end is recorded waits for it (else it killed the process inside MLflow's call, the run RUNNING for good)."""
    status = "FAILED"
    with stop_signals_interrupt():
        try:
            yield
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            with uninterrupted():
                tracker.end(status)


def exit_interrupted(stop: KeyboardInterrupt, what: str) -> NoReturn:
    """End a command that Ctrl-C, SIGTERM or a hang-up stopped (``stop``): one line naming ``what`` stopped and how,
    no traceback, exit code 128 + the signal."""
    signum = getattr(stop, "signum", signal.SIGINT)
    ignore_stops_while_exiting()  # the command is ending: another Ctrl-C would only end it by the signal instead
    quiet_half_built_objects()
    print(f"\n{what} interrupted ({stop_name(signum)}).", file=sys.stderr)
    sys.exit(128 + signum)


def ignore_stops_while_exiting() -> None:
    """After a command's work is done and recorded (its MLflow run ended), or once it reports its stop: Ctrl-C,
    SIGTERM or a hang-up during the interpreter's exit (a second of the libraries' exit handlers) would only print a
    traceback from one of them, or end the process by the signal instead of its exit code."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def quiet_half_built_objects() -> None:
    """After an interruption, until the process ends: no "Exception ignored in ..." for an object whose finalizer
    fails. Ctrl-C or a stop signal raises wherever the process is, also inside a constructor (tqdm's: its ``__del__``
    then fails on the attribute never set); such noise after the interruption's one line tells the user nothing."""
    sys.unraisablehook = lambda _unraisable: None


def stop_name(signum: int) -> str:
    """A stop signal as the user knows it: Ctrl-C for SIGINT, else its name (SIGTERM, SIGHUP)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
