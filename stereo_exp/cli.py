"""What the Hydra entry points (train, evaluate, eda) share: a failed run lets its loader workers go, and a mistake
in the command or the data ends a run with one line saying what to change, not a traceback."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import traceback
from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message says what to change in the command or the data: missing or broken datasets, a
    file named in the config that does not exist (weights, init_from)."""
    from stereo_exp.data.catalog import DatasetFileError
    from stereo_exp.engine.resume import RunDirectoryError

    # DatasetRootError is a FileNotFoundError; RunDirectoryError: the run folder does not fit the command
    return FileNotFoundError, DatasetFileError, RunDirectoryError


@contextlib.contextmanager
def clean_errors(cfg: DictConfig, what: str = "Training") -> Iterator[None]:
    """Check ``cfg`` (every schema's own checks, before anything is done), then run the block. A failure's traceback
    goes to the run's log file and its cause to torchrun's failure summary (``report_failure``). In a single run a
    failed check or a user error then ends the process with ``error: <message>`` (exit code 1), any other error
    with ``<what> failed`` and its cause as the last lines; in a multirun it goes to the launcher, which lists it in
    the sweep's summary (stereo_exp/launcher.py). ``HYDRA_FULL_ERROR=1`` keeps the traceback, as for Hydra's own
    errors."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    clean = not multirun and os.environ.get("HYDRA_FULL_ERROR") != "1"
    try:
        OmegaConf.to_object(cfg)
    except ValueError as error:
        if not clean:
            raise
        sys.exit(f"error: {error}")
    try:
        yield
    except Exception as error:
        where = report_failure(error, what)
        drop_failed_run(error)
        if not clean:
            raise
        if isinstance(error, user_errors()):
            sys.exit(f"error: {error}")
        print(f"\n{what} failed{where}:\n{cause(error)}", file=sys.stderr, flush=True)
        sys.exit(1)


def report_failure(error: BaseException, what: str) -> str:
    """Write ``error``'s traceback to the run's log file (Hydra's ``<run dir>/<job>.log``) and its cause to torchrun's
    failure summary, so that the terminal can end with the cause alone. Returns `` (traceback in FILE)`` or ``""``."""
    from stereo_exp.distributed import record_launcher_error

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
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
