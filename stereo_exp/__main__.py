"""Train: ``python -m stereo_exp [group=option ...] [key=value ...]`` (``--help`` lists groups and keys)."""

from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from stereo_exp.cli import clean_errors, ignore_stops_while_exiting, refuse_unknown_keys, resume_advice
from stereo_exp.config import register_configs

if TYPE_CHECKING:
    from stereo_exp.engine.trainer import TrainResult

log = logging.getLogger("stereo_exp")

# Hydra composes the config when main() is called; the schemas must be in the ConfigStore before that.
register_configs("config")


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
        if stop.is_main:  # one advice, not one per DDP rank
            log.warning("%s %s to resume from it (resume=auto, the default).", stop, resume_advice(cfg))
        raise SystemExit(128 + stop.signum) from stop  # the cause tells a sweep's job what happened (launcher.py)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return the final validation mae of the first validation set (for sweeps).
    A wrong value or missing data ends a single run with one line saying what to change (stereo_exp/cli.py)."""
    try:
        with clean_errors(cfg):
            metrics = run(cfg).metrics
    except KeyboardInterrupt:
        message = (
            "Interrupted without writing a checkpoint (a second Ctrl-C, or one before training began). "
            f"{resume_advice(cfg)} to resume from the newest checkpoint, if any."
        )
        print(f"\n{message}", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    mae = [value for key, value in metrics.items() if key.endswith("/mae")]
    return mae[0] if mae else None


if __name__ == "__main__":
    refuse_unknown_keys("config", sys.argv[1:])  # before Hydra, whose advice for a misspelt key adds it
    try:
        main()
    except KeyboardInterrupt:  # while Hydra starts (main handles the training's; the launchers, their sweep's)
        print("\nInterrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    ignore_stops_while_exiting()
