"""Model names and building: the variants of ``stereo_exp/models/config.py`` and builders registered from outside.

``build_model(config)`` is the one way a config becomes a network: the builder registered as ``config.name`` if any
(``@register_model()``, e.g. a network of one's own), else the family builder of the config's class, then
``config.weights`` loaded. A registered builder takes the typed config and returns the network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from stereo_exp.models.config import MODEL_VARIANTS, REGISTERED_BUILDERS, ModelConfig

if TYPE_CHECKING:
    from torch import nn

BuilderFn = TypeVar("BuilderFn", bound=Callable[[ModelConfig], "nn.Module"])


def register_model(name: str | None = None) -> Callable[[BuilderFn], BuilderFn]:
    """Register a builder ``fn(config) -> nn.Module`` under ``name`` (default: the function's name); ``model.name``
    then selects it. A name already taken (by a variant or another builder) is an error."""

    def wrapper(fn: BuilderFn) -> BuilderFn:
        key = name or fn.__name__
        if key in MODEL_VARIANTS or key in REGISTERED_BUILDERS:
            owner = "stereo_exp.models.config" if key in MODEL_VARIANTS else REGISTERED_BUILDERS[key].__module__
            raise ValueError(f"A model named {key!r} already exists ({owner}).")
        REGISTERED_BUILDERS[key] = fn
        return fn

    return wrapper


def list_models() -> list[str]:
    """Every name ``model.name`` accepts, sorted: the variants and the registered builders."""
    return sorted([*MODEL_VARIANTS, *REGISTERED_BUILDERS])


def model_config(name: str, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """A fresh copy of the variant ``name`` with ``overrides`` (e.g. a checkpoint's stored ``model`` entries) merged
    and checked: an unknown key or a value of the wrong type is an error naming it."""
    if name not in MODEL_VARIANTS:
        raise ValueError(f"Unknown model {name!r} (model.name). Known models: {', '.join(list_models())}.")
    variant = copy.deepcopy(MODEL_VARIANTS[name])
    if not overrides:
        return variant
    merged = OmegaConf.merge(OmegaConf.structured(variant), {**overrides, "name": name})
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def as_model_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """``config`` as its family's dataclass, checked: a typed config as it is; a composed ``model`` node (a
    structured DictConfig) through ``OmegaConf.to_object``; a plain mapping (a checkpoint's stored ``model`` entries)
    as the variant it names with its entries merged (``model_config``)."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, DictConfig) and issubclass(OmegaConf.get_type(config) or dict, ModelConfig):
        return OmegaConf.to_object(config)  # type: ignore[return-value]
    entries = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    assert isinstance(entries, dict)
    return model_config(str(entries.get("name")), entries)


def build_network(config: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """The network ``config`` (see ``as_model_config``) describes, randomly initialised; ``weights`` is not read."""
    config = as_model_config(config)
    builder = REGISTERED_BUILDERS.get(config.name)
    return builder(config) if builder is not None else config.build_network()


def build_model(config: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """The network ``config`` (see ``as_model_config``) describes, with its ``weights`` loaded if set (a published
    name or a file)."""
    config = as_model_config(config)
    model = build_network(config)
    if config.weights:
        from stereo_exp.models.weights import load_weights

        load_weights(model, config.weights)
    return model


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (``model`` itself when it is not wrapped): where its
    attributes (``size_multiple``, ``forward_flow``, ``compile_updates``) are read."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
