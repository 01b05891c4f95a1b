"""Everything between files on disk and a training batch (see docs/ARCHITECTURE.md, "Samples and batches").

catalog.py (names -> torchvision datasets, raw samples), synthetic.py / embedded.py (data that needs no download),
transforms.py (augmentation, evaluation transform), mix.py (order of a mix), loader.py (DataLoader, eval datasets),
config.py (schemas of the ``mix`` and ``augmentation`` groups and the EDA app), options.py
(``datasets.*`` per-dataset options), disparity_stats.py (the EDA's statistics, table and figure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.core.config_store import ConfigStore

from stereo_exp import lazy_exports
from stereo_exp.data.config import AugmentationConfig, MixConfig

if TYPE_CHECKING:
    from stereo_exp.data.loader import build_eval_dataset, build_train_loader

__all__ = ["AugmentationConfig", "MixConfig", "build_eval_dataset", "build_train_loader", "register_configs"]

# The loaders import torchvision: loaded on first use, not when the config is composed.
__getattr__ = lazy_exports(__name__, {"build_eval_dataset": "loader", "build_train_loader": "loader"})


def register_configs(cs: ConfigStore) -> None:
    """Store the ``mix`` and ``augmentation`` group schemas (the EDA's primary schema: stereo_exp.config)."""
    cs.store(group="mix", name="mix_schema", node=MixConfig)
    cs.store(group="augmentation", name="augmentation_schema", node=AugmentationConfig)
