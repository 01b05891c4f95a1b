"""stereo_exp: Hydra-composed training and evaluation of deep stereo-matching networks."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the config groups: the entry points' config_path


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``exports[name]`` (a submodule) on first use of ``name``.

    The sub-packages re-export their main functions this way, so that importing one for its config schema (every
    ``--help`` and ``--cfg job`` does) does not load torch, torchvision or MLflow (tests/test_cli.py pins it)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
