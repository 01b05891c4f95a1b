"""Stereo networks (CREStereo, RAFT-Stereo), their builders and published weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from stereo_exp import lazy_exports
from stereo_exp.models.config import CREStereoConfig, ModelConfig, RaftStereoConfig, architecture_arguments

if TYPE_CHECKING:
    from torch import nn

    from stereo_exp.models.inference import predict_disparity
    from stereo_exp.models.registry import get_model_builder, list_models, register_model
    from stereo_exp.models.speed import prepare_for_training
    from stereo_exp.models.weights import load_weights

__all__ = [
    "ModelConfig",
    "build_model",
    "get_model_builder",
    "list_models",
    "load_weights",
    "predict_disparity",
    "prepare_for_training",
    "register_configs",
    "register_model",
]

# Loaded on first use, not when the config is composed (weights.py imports torchvision, speed.py torch._dynamo).
__getattr__ = lazy_exports(
    __name__,
    {
        "predict_disparity": "inference",
        "get_model_builder": "registry",
        "list_models": "registry",
        "register_model": "registry",
        "prepare_for_training": "speed",
        "load_weights": "weights",
    },
)


def register_configs(cs: ConfigStore) -> None:
    """Store the ``model`` group schemas: one per architecture family."""
    cs.store(group="model", name="crestereo_schema", node=CREStereoConfig)
    cs.store(group="model", name="raft_stereo_schema", node=RaftStereoConfig)


def build_model(cfg: DictConfig | Any) -> nn.Module:
    """Build the network named ``cfg.name`` with the architecture keys of ``cfg`` and load ``cfg.weights`` if set."""
    from stereo_exp.models.registry import get_model_builder
    from stereo_exp.models.weights import load_weights

    options: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[assignment]
    model = get_model_builder(options["name"])(**architecture_arguments(options))
    if options["weights"]:
        load_weights(model, options["weights"])
    return model
