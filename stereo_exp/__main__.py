"""Train: ``python -m stereo_exp [group=option ...] [key=value ...]`` (``--help`` lists groups and keys)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from stereo_exp.config import register_configs

log = logging.getLogger("stereo_exp")

# Hydra composes the config when main() is called; the schemas must be in the ConfigStore before that.
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return the final validation mae of the first validation set (for sweeps)."""
    from stereo_exp.engine.trainer import Preempted, train

    try:
        metrics = train(cfg).metrics
    except Preempted as stop:
        log.warning("%s Resume with the same run directory and resume=auto.", stop)
        sys.exit(128 + stop.signum)
    mae = [value for key, value in metrics.items() if key.endswith("/mae")]
    return mae[0] if mae else None


if __name__ == "__main__":
    main()
