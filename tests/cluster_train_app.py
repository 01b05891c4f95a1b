"""``python -m stereo_exp`` whose every rank also saves its final weights (a test helper, not a test).

    python tests/cluster_train_app.py -m hydra/launcher=slurm hydra.launcher.tasks_per_node=2 ...

Each rank writes ``<run dir>/rank<R>_weights.pt`` after ``train(cfg)`` and ``rank<R>.json`` with the distributed
setup it resolved, so that a test can check that the tasks of a SLURM job formed one process group and hold
identical weights (like tests/ddp_worker.py does under torchrun).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from stereo_exp.__main__ import run  # importing it registers the config schemas
from stereo_exp.distributed import DistEnv


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    dist = DistEnv.from_environment(str(cfg.train.device))
    result = run(cfg)  # the entry point's own handling of preemption signals
    output = Path(cfg.paths.output)
    torch.save(result.model.state_dict(), output / f"rank{dist.rank}_weights.pt")
    setup = {"rank": dist.rank, "world_size": dist.world_size, "local_rank": dist.local_rank, "source": dist.source}
    (output / f"rank{dist.rank}.json").write_text(json.dumps(setup))


if __name__ == "__main__":
    main()
