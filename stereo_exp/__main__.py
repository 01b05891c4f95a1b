"""Train: ``python -m stereo_exp [group=option ...] [key=value ...]`` (``--help`` lists groups and keys)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from stereo_exp.config import register_configs

if TYPE_CHECKING:
    from stereo_exp.engine.trainer import TrainResult

log = logging.getLogger("stereo_exp")

# Hydra composes the config when main() is called; the schemas must be in the ConfigStore before that.
register_configs()


def run(cfg: DictConfig) -> TrainResult:
    """``train(cfg)``; after a stop signal (its checkpoint written) the process leaves as its launcher expects:
    through submitit's requeue, or with exit code 128 + signal number. Never returns in that case."""
    from stereo_exp.engine.trainer import Preempted, train

    try:
        return train(cfg)
    except Preempted as stop:
        if stop.handover is not None:
            # submitit's handler ran after our checkpoint: SystemExit once it requeued the job (the requeued job
            # resumes from the checkpoint), or the error saying why it did not. Leaving through SystemExit matters:
            # a normal return would make submitit record a result, as if the job were over.
            raise stop.handover from None
        log.warning("%s Run the same command again to resume from it (resume=auto, the default).", stop)
        sys.exit(128 + stop.signum)


def report_failure(error: BaseException, what: str = "Training") -> None:
    """The traceback goes to the run's log file (Hydra's ``<run dir>/<job>.log``); the terminal ends with the cause,
    also under torchrun, whose failure summary shows it."""
    from stereo_exp.engine.distributed import record_launcher_error

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s failed", (what,), (type(error), error,
                            error.__traceback__))  # fmt: skip
    for handler in files:
        handler.handle(record)
    cause = f"{type(error).__name__}: {error}".rstrip()
    record_launcher_error(cause)
    where = f" (traceback in {files[0].baseFilename})" if files else ""
    print(f"\n{what} failed{where}:\n{cause}", file=sys.stderr, flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return the final validation mae of the first validation set (for sweeps)."""
    try:
        metrics = run(cfg).metrics
    except KeyboardInterrupt:
        print("\nInterrupted without writing a checkpoint (a second Ctrl-C, or one before training began). Run the "
              "same command again to resume from the newest checkpoint, if any.", file=sys.stderr)  # fmt: skip
        sys.exit(130)
    except Exception as error:
        report_failure(error)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
            raise  # a multirun's launcher records the failed job; HYDRA_FULL_ERROR asks for the full trace
        sys.exit(1)
    mae = [value for key, value in metrics.items() if key.endswith("/mae")]
    return mae[0] if mae else None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    main()
