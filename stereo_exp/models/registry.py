"""Registry of model builders, filled by ``@register_model()`` in each architecture file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

BuilderFn = TypeVar("BuilderFn", bound=Callable[..., nn.Module])

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None) -> Callable[[BuilderFn], BuilderFn]:
    """Register a builder under ``name`` (default: the function's name); a duplicate name is an error."""

    def wrapper(fn: BuilderFn) -> BuilderFn:
        key = name or fn.__name__
        if key in _BUILDERS:
            raise ValueError(f"A model builder named {key!r} is already registered ({_BUILDERS[key].__module__}).")
        _BUILDERS[key] = fn
        return fn

    return wrapper


def list_models() -> list[str]:
    """Names of every registered builder, sorted."""
    _import_architectures()
    return sorted(_BUILDERS)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; an unknown name lists the known ones."""
    _import_architectures()
    if name not in _BUILDERS:
        raise KeyError(f"Unknown model {name!r} (model.name). Known models: {', '.join(sorted(_BUILDERS))}.")
    return _BUILDERS[name]


def _import_architectures() -> None:
    # The architecture modules register their builders on import.
    from stereo_exp.models import crestereo, raft_stereo  # noqa: F401
