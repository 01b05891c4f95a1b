"""``python -m stereo_exp`` for cluster tests, which also saves every rank's final weights (a helper, not a test).

    python tests/cluster_train_app.py -m hydra/launcher=slurm hydra.launcher.tasks_per_node=2 ...

Each rank writes ``<run dir>/rank<R>_weights.pt`` after training, so a test can check that the ranks of a SLURM
job hold identical weights. Everything else is the real entry point: the same config, train(cfg), preemption
handling and exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `stereo_exp` inside jobs

from stereo_exp.__main__ import main as stereo_exp_main  # noqa: E402  (registers the schemas)
from stereo_exp.engine.distributed import DistEnv  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    captured: dict = {}
    from stereo_exp.engine import trainer

    train = trainer.train

    def train_and_keep(config):
        captured["result"] = result = train(config)
        return result

    trainer.train = train_and_keep
    try:
        value = stereo_exp_main.__wrapped__(cfg)
    finally:
        trainer.train = train
    rank = DistEnv.from_environment(str(cfg.train.device)).rank
    torch.save(captured["result"].model.state_dict(), Path(cfg.paths.output) / f"rank{rank}_weights.pt")
    return value


if __name__ == "__main__":
    main()
