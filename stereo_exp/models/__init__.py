"""Stereo networks (CREStereo, RAFT-Stereo), their hyper-parameters (``config``) and published weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.core.config_store import ConfigStore

from stereo_exp import lazy_exports
from stereo_exp.models.config import MODEL_VARIANTS, CREStereoConfig, ModelConfig, RaftStereoConfig
from stereo_exp.models.registry import (
    as_model_config,
    build_model,
    build_network,
    list_models,
    model_config,
    register_model,
)

if TYPE_CHECKING:
    from stereo_exp.models.inference import predict_disparity
    from stereo_exp.models.speed import prepare_for_training
    from stereo_exp.models.weights import load_weights

__all__ = [
    "ModelConfig",
    "as_model_config",
    "build_model",
    "build_network",
    "list_models",
    "load_weights",
    "model_config",
    "predict_disparity",
    "prepare_for_training",
    "register_configs",
    "register_model",
]

# These import torch: loaded on first use, so that composing a config (--help, --cfg job) does not.
__getattr__ = lazy_exports(
    __name__,
    {"predict_disparity": "inference", "prepare_for_training": "speed", "load_weights": "weights"},
)


def register_configs(cs: ConfigStore) -> None:
    """Store the ``model`` group schemas: one per family (defaults: its base model; for option files of one's own)
    and one per named variant, ``<name>_schema``, which ``conf/model/<name>.yaml`` composes."""
    cs.store(group="model", name="crestereo_schema", node=CREStereoConfig)
    cs.store(group="model", name="raft_stereo_schema", node=RaftStereoConfig)
    for name, variant in MODEL_VARIANTS.items():
        cs.store(group="model", name=f"{name}_schema", node=variant)
