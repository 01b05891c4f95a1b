"""Run by tests under torchrun: train with the given overrides, then save this rank's weights.

torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUTPUT_DIR [override ...]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stereo_exp.distributed import DistEnv
from stereo_exp.engine.trainer import train
from tests.conftest import compose_train_config

if __name__ == "__main__":
    output = Path(sys.argv[1])
    rank = DistEnv.from_environment("cpu").rank
    result = train(compose_train_config(output, *sys.argv[2:]))
    torch.save(result.model.state_dict(), output / f"rank{rank}_weights.pt")
