"""Published weights as data, and ``load_weights``: a published name or a local file into a built model.

Every checkpoint torchvision publishes for its stereo prototypes is one enum entry (``CREStereo_Base_Weights``,
``Raft_Stereo_Base_Weights``, ``Raft_Stereo_Realtime_Weights``) holding its download URL, the SHA-256 prefix its file
name carries, its preprocessing, parameter count, recipe and the metrics recorded with it; ``DEFAULT`` names the
recommended entry. Facts from ``torchvision/prototype/models/depth/stereo/{crestereo,raft_stereo}.py`` and
``references/depth/stereo/README.md`` (pytorch/vision).

``load_weights(model, spec)`` accepts

- a published name: ``MEGVII_V1``, ``CREStereo_Base_Weights.MEGVII_V1`` or ``DEFAULT``. A bare name is looked up in
  every enum and the entry whose parameter count equals the model's wins (``SCENEFLOW_V1`` exists for both RAFT-Stereo
  variants). The file is downloaded once into torch.hub's cache (``<torch.hub.get_dir()>/checkpoints/<file name>``,
  the same place ``torch.hub.load_state_dict_from_url`` uses) and its SHA-256 is checked against the published prefix
  on every load. Offline, the error names the URL and the exact path to put the file at.
- a path: a state_dict file, or a training checkpoint of ours (a dict whose ``model`` key holds the state_dict). A
  ``module.`` prefix (DDP) or ``_orig_mod.`` prefix (torch.compile) on every key is stripped.

Files are always read with ``torch.load(..., weights_only=True)``: a downloaded file cannot run code. Loading is
strict; weights of another architecture give an error naming the model and the weights.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "WEIGHT_ENUMS",
    "CREStereo_Base_Weights",
    "PublishedWeights",
    "Raft_Stereo_Base_Weights",
    "Raft_Stereo_Realtime_Weights",
    "UnreadableFileError",
    "cached_file",
    "load_state_dict_file",
    "load_weights",
    "parameter_count",
    "read_weights_only",
    "resolve_published",
]

Metrics = dict[str, float]


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint.

    ``sha256_prefix`` is the hash torchvision puts in the file name (``crestereo-756c8b0f.pth``); ``resize_size`` is
    the (H, W) evaluation size its recorded metrics used; inputs are RGB scaled to [-1, 1] (mean 0.5, std 0.5) for
    every entry. ``metrics`` maps a dataset to its headline numbers; ``detailed_metrics`` (CREStereo) maps
    n_cascades -> n_iterations -> metrics, the layout of ``stereo_exp.evaluate``'s table.
    """

    builder: str  # the model builder these weights fit, e.g. "crestereo_base"
    url: str
    sha256_prefix: str
    num_params: int
    recipe: str
    resize_size: tuple[int, int]
    metrics: dict[str, Metrics]
    detailed_metrics: dict[int, dict[int, Metrics]] = field(default_factory=dict)
    docs: str = ""

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _cascade_table(rows: dict[tuple[int, int], tuple[float, ...]]) -> dict[int, dict[int, Metrics]]:
    """{(n_cascades, n_iterations): (mae, rmse, 1px, 3px, 5px, relepe, fl-all)} -> nested metric dicts."""
    names = ("mae", "rmse", "1px", "3px", "5px", "relepe", "fl-all")
    table: dict[int, dict[int, Metrics]] = {}
    for (cascades, iterations), values in rows.items():
        table.setdefault(cascades, {})[iterations] = dict(zip(names, values, strict=True))
    return table


_CRESTEREO_PARAMS = 5_432_948
_CRESTEREO_SIZE = (384, 512)
_TORCHVISION_RECIPE = "https://github.com/pytorch/vision/tree/main/references/depth/stereo"
_RAFT_STEREO_BASE_PARAMS = 11_116_176
_RAFT_STEREO_RECIPE = "https://github.com/princeton-vl/RAFT-Stereo"
# torchvision records RAFT-Stereo's preset with a 224x224 resize; the metrics themselves are the paper's (arXiv
# 2109.07547), measured at each benchmark's own resolution.
_RAFT_STEREO_SIZE = (224, 224)


class CREStereo_Base_Weights(Enum):  # torchvision's class names, so "CREStereo_Base_Weights.MEGVII_V1" works
    """``crestereo_base`` weights. Metrics: Middlebury 2014 train at 384x512, 1 cascade, 10 iterations (headline) and
    the full cascade x iterations grid recorded by torchvision's ``cascade_evaluation.py``."""

    MEGVII_V1 = PublishedWeights(
        builder="crestereo_base",
        url="https://download.pytorch.org/models/crestereo-756c8b0f.pth",
        sha256_prefix="756c8b0f",
        num_params=_CRESTEREO_PARAMS,
        recipe="https://github.com/megvii-research/CREStereo",
        resize_size=_CRESTEREO_SIZE,
        metrics={
            "middlebury2014-train": {
                "mae": 0.792,
                "rmse": 2.765,
                "1px": 0.905,
                "3px": 0.958,
                "5px": 0.97,
                "relepe": 0.114,
                "fl-all": 90.429,
            }
        },
        detailed_metrics=_cascade_table(
            {
                (1, 2): (1.704, 3.738, 0.738, 0.896, 0.933, 0.157, 76.464),
                (1, 5): (0.956, 2.963, 0.88, 0.948, 0.965, 0.124, 88.186),
                (1, 10): (0.792, 2.765, 0.905, 0.958, 0.97, 0.114, 90.429),
                (1, 20): (0.749, 2.706, 0.907, 0.961, 0.972, 0.113, 90.807),
                (2, 2): (1.702, 3.784, 0.784, 0.894, 0.924, 0.172, 80.313),
                (2, 5): (0.932, 2.907, 0.877, 0.944, 0.963, 0.125, 87.979),
                (2, 10): (0.773, 2.768, 0.901, 0.958, 0.972, 0.117, 90.43),
                (2, 20): (0.854, 2.971, 0.9, 0.957, 0.97, 0.122, 90.269),
            }
        ),
        docs="Ported from the authors' release (megvii-research/CREStereo), trained on their dataset mixture.",
    )
    CRESTEREO_ETH_MBL_V1 = PublishedWeights(
        builder="crestereo_base",
        url="https://download.pytorch.org/models/crestereo-8f0e0e9a.pth",
        sha256_prefix="8f0e0e9a",
        num_params=_CRESTEREO_PARAMS,
        recipe=_TORCHVISION_RECIPE,
        resize_size=_CRESTEREO_SIZE,
        metrics={
            "middlebury2014-train": {
                "mae": 1.416,
                "rmse": 3.53,
                "1px": 0.777,
                "3px": 0.896,
                "5px": 0.933,
                "relepe": 0.148,
                "fl-all": 78.388,
            }
        },
        detailed_metrics=_cascade_table(
            {
                (1, 2): (2.363, 4.352, 0.611, 0.828, 0.891, 0.176, 64.511),
                (1, 5): (1.618, 3.71, 0.761, 0.879, 0.918, 0.154, 77.128),
                (1, 10): (1.416, 3.53, 0.777, 0.896, 0.933, 0.148, 78.388),
                (1, 20): (1.448, 3.583, 0.771, 0.893, 0.931, 0.145, 77.7),
                (2, 2): (1.972, 4.125, 0.73, 0.865, 0.908, 0.169, 74.396),
                (2, 5): (1.403, 3.448, 0.793, 0.905, 0.937, 0.151, 80.186),
                (2, 10): (1.312, 3.368, 0.799, 0.912, 0.943, 0.148, 80.379),
                (2, 20): (1.376, 3.542, 0.796, 0.91, 0.942, 0.149, 80.054),
            }
        ),
        docs="Trained from scratch by torchvision on CREStereo + ETH3D + Middlebury 2014 (88/6/6 dataset steps).",
    )
    CRESTEREO_FINETUNE_MULTI_V1 = PublishedWeights(
        builder="crestereo_base",
        # torchvision's entry ends this URL with a stray tab character; the file name is without it.
        url="https://download.pytorch.org/models/crestereo-697c38f4.pth",
        sha256_prefix="697c38f4",
        num_params=_CRESTEREO_PARAMS,
        recipe=_TORCHVISION_RECIPE,
        resize_size=_CRESTEREO_SIZE,
        # The headline differs slightly from the (1, 10) cell of the grid below; both are torchvision's records.
        metrics={
            "middlebury2014-train": {
                "mae": 1.038,
                "rmse": 3.108,
                "1px": 0.852,
                "3px": 0.942,
                "5px": 0.963,
                "relepe": 0.129,
                "fl-all": 85.522,
            }
        },
        detailed_metrics=_cascade_table(
            {
                (1, 2): (1.85, 3.797, 0.673, 0.862, 0.917, 0.171, 69.736),
                (1, 5): (1.111, 3.166, 0.838, 0.93, 0.957, 0.134, 84.596),
                (1, 10): (1.02, 3.073, 0.854, 0.938, 0.96, 0.129, 86.042),
                (1, 20): (0.993, 3.059, 0.855, 0.942, 0.967, 0.126, 85.784),
                (2, 2): (1.667, 3.867, 0.78, 0.891, 0.922, 0.165, 78.89),
                (2, 5): (1.158, 3.278, 0.843, 0.926, 0.955, 0.135, 84.556),
                (2, 10): (1.046, 3.13, 0.85, 0.934, 0.96, 0.13, 85.464),
                (2, 20): (1.021, 3.102, 0.85, 0.935, 0.963, 0.129, 85.417),
            }
        ),
        docs="CRESTEREO_ETH_MBL_V1 fine-tuned by torchvision on 9 datasets sampled uniformly (scale range 0.2-0.8).",
    )
    DEFAULT = MEGVII_V1


class Raft_Stereo_Base_Weights(Enum):
    """``raft_stereo_base`` weights, ported from princeton-vl/RAFT-Stereo; metrics from the paper."""

    SCENEFLOW_V1 = PublishedWeights(
        builder="raft_stereo_base",
        url="https://download.pytorch.org/models/raft_stereo_base_sceneflow-eff3f2e6.pth",
        sha256_prefix="eff3f2e6",
        num_params=_RAFT_STEREO_BASE_PARAMS,
        recipe=_RAFT_STEREO_RECIPE,
        resize_size=_RAFT_STEREO_SIZE,
        metrics={
            "kitti2015": {"3px": 0.9426},
            # Middlebury: share of pixels under 2 px at full, half and quarter resolution.
            "middlebury2014-val-full": {"2px": 0.8167},
            "middlebury2014-val-half": {"2px": 0.8741},
            "middlebury2014-val-quarter": {"2px": 0.9064},
            "eth3d-val": {"1px": 0.9672},
        },
        docs="Trained on SceneFlow by the authors.",
    )
    MIDDLEBURY_V1 = PublishedWeights(
        builder="raft_stereo_base",
        url="https://download.pytorch.org/models/raft_stereo_base_middlebury-afa9d252.pth",
        sha256_prefix="afa9d252",
        num_params=_RAFT_STEREO_BASE_PARAMS,
        recipe=_RAFT_STEREO_RECIPE,
        resize_size=_RAFT_STEREO_SIZE,
        metrics={"middlebury-test": {"mae": 1.27, "1px": 0.9063, "2px": 0.9526, "5px": 0.9725}},
        docs="Fine-tuned on Middlebury by the authors.",
    )
    ETH3D_V1 = PublishedWeights(
        builder="raft_stereo_base",
        url="https://download.pytorch.org/models/raft_stereo_base_eth3d-d4830f22.pth",
        sha256_prefix="d4830f22",
        num_params=_RAFT_STEREO_BASE_PARAMS,
        recipe=_RAFT_STEREO_RECIPE,
        resize_size=_RAFT_STEREO_SIZE,
        metrics={"eth3d-test": {"mae": 0.18, "1px": 0.9756, "2px": 0.9956}},
        docs="Fine-tuned on ETH3D by the authors.",
    )
    DEFAULT = MIDDLEBURY_V1


class Raft_Stereo_Realtime_Weights(Enum):
    """``raft_stereo_realtime`` weights (paper sec. 4.7), ported from princeton-vl/RAFT-Stereo."""

    SCENEFLOW_V1 = PublishedWeights(
        builder="raft_stereo_realtime",
        url="https://download.pytorch.org/models/raft_stereo_realtime-cf345ccb.pth",
        sha256_prefix="cf345ccb",
        num_params=8_077_152,
        recipe=_RAFT_STEREO_RECIPE,
        resize_size=_RAFT_STEREO_SIZE,
        metrics={"kitti2015": {"3px": 0.9409}},
        docs="Trained on SceneFlow by the authors.",
    )
    DEFAULT = SCENEFLOW_V1


WEIGHT_ENUMS: tuple[type[Enum], ...] = (CREStereo_Base_Weights, Raft_Stereo_Base_Weights, Raft_Stereo_Realtime_Weights)
_QUALIFIED = re.compile(r"^(?:(?P<enum>\w+)\.)?(?P<name>[A-Z][A-Z0-9_]*)$")


def _known_names() -> str:
    return ", ".join(f"{enum.__name__}.{name}" for enum in WEIGHT_ENUMS for name in enum.__members__)


def resolve_published(spec: str, num_params: int) -> PublishedWeights:
    """The published entry named ``spec`` for a model with ``num_params`` parameters.

    ``spec`` is ``NAME`` or ``EnumName.NAME``; a bare name present in several enums (``SCENEFLOW_V1``, ``DEFAULT``)
    picks the entry whose parameter count matches. An unknown name lists the known ones; an entry for another
    architecture names both parameter counts.
    """
    match = _QUALIFIED.match(spec)
    if match is None:
        raise KeyError(f"{spec!r} is not a published weights name. Known: {_known_names()}.")
    enums = [e for e in WEIGHT_ENUMS if match["enum"] in (None, e.__name__)]
    candidates: list[PublishedWeights] = [e[match["name"]].value for e in enums if match["name"] in e.__members__]
    if not candidates:
        raise KeyError(f"No published weights named {spec!r}. Known: {_known_names()}.")
    fitting = [c for c in candidates if c.num_params == num_params]
    if len(fitting) == 1:
        return fitting[0]
    if len(candidates) == 1:
        return candidates[0]  # let the strict load report the mismatch with the model's and the file's names
    described = ", ".join(f"{c.builder} ({c.num_params:,} parameters)" for c in candidates)
    raise ValueError(
        f"Published weights {spec!r} exist for {described}, none of which matches this model's {num_params:,} "
        "parameters. Build the matching model (model.name) or qualify the name, e.g. Raft_Stereo_Base_Weights.NAME."
    )


def cached_file(weights: PublishedWeights, *, progress: bool = True) -> Path:
    """The local copy of ``weights`` in torch.hub's cache, downloaded if missing; its SHA-256 is always checked."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.file_name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=weights.sha256_prefix, progress=progress)
        except RuntimeError as error:  # torch.hub's hash check
            raise RuntimeError(
                f"The download of {weights.url} does not match its published SHA-256 prefix "
                f"{weights.sha256_prefix} ({error}); nothing was written to {path}."
            ) from error
        except OSError as error:  # URLError, timeouts, refused connections are all OSErrors
            raise RuntimeError(
                f"Could not download {weights.url} ({error}). On a machine without internet access, download that "
                f"URL elsewhere and put the file at {path} (torch.hub's cache; set TORCH_HOME to move it)."
            ) from error
    digest = _sha256(path)
    if not digest.startswith(weights.sha256_prefix):
        raise RuntimeError(
            f"{path} has SHA-256 {digest}, but {weights.url} is published with prefix {weights.sha256_prefix}: the "
            "file is corrupt, truncated or another file. Delete it and load again to re-download."
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class UnreadableFileError(RuntimeError, ValueError):
    """A weights or checkpoint file that ``torch.load(..., weights_only=True)`` cannot read; the message names it.
    Both a RuntimeError (what reading a checkpoint raised) and a ValueError (what reading weights raised)."""


def read_weights_only(path: str | os.PathLike[str], *, what: str, hint: str = "", map_location: Any = "cpu") -> Any:
    """The content of ``path`` read with ``torch.load(..., weights_only=True)``, so that a file never runs code: the
    one reader of published weights, state_dicts and training checkpoints. ``what`` names the file in errors
    ("checkpoint", "weights file"), ``hint`` (e.g. " (model.weights expects ...)") follows a missing one's message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what[0].upper()}{what[1:]} {path} does not exist{hint}.")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol: the refusal below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError / UnpicklingError / KeyError / EOFError
        raise UnreadableFileError(f"Could not read {what} {path}: {_unreadable_cause(path, error)}.") from error


def _unreadable_cause(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a phrase: torch's messages run to paragraphs (and advise
    ``weights_only=False``, which would let the file run code), or say nothing (``KeyError: '101'``)."""
    with open(path, "rb") as file:
        head = file.read(8)
    if not head:
        return "the file is empty"
    text = str(error)
    archive = head.startswith(b"PK\x03\x04")  # torch.save's format, a zip archive (a pickle inside)
    if "WeightsUnpickler error:" in text and (archive or head.startswith(b"\x80")):  # \x80: a pickle's first byte
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        detail = detail.split(" was not an allowed")[0]
        return f"it holds objects other than tensors and plain Python types, which are never loaded ({detail})"
    if archive:
        return f"the torch.save archive is truncated or damaged ({text.split('. ')[0]})"
    return f"it is not a file written by torch.save (it begins {head!r})"


def checkpoint_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights a training checkpoint of ours offers to evaluation and fine-tuning: the averaged ones
    when the run kept them (``schedule.average_decay``: what its validation measured), else the trained ones."""
    return checkpoint.get("model_averaged", checkpoint["model"])


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state_dict stored in ``path`` (a state_dict, or our training checkpoint's weights: ``checkpoint_weights``),
    read with ``read_weights_only`` on the CPU, with DDP / torch.compile key prefixes removed and every tensor checked
    finite."""
    hint = (
        " (model.weights expects a published name, e.g. MEGVII_V1, or the path of a state_dict / training checkpoint)"
    )
    content: Any = read_weights_only(path, what="weights file", hint=hint)
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = checkpoint_weights(content)  # a training checkpoint of ours
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ValueError(
            f"{path} holds a {type(content).__name__}, not a state_dict (a dict of tensors) or a training checkpoint "
            "(a dict whose 'model' entry is one)."
        )
    state_dict: dict[str, torch.Tensor] = content
    for prefix in ("module.", "_orig_mod."):  # DDP wrapper, torch.compile wrapper
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: tensor {key!r} holds NaN or infinite values.")
    return state_dict


def load_weights(model: nn.Module, spec: str | os.PathLike[str] | PublishedWeights, *, progress: bool = True) -> None:
    """Load published weights or a local file into ``model`` (strict); see the module docstring for ``spec``."""
    if isinstance(spec, PublishedWeights):
        published: PublishedWeights | None = spec
    elif isinstance(spec, str) and not os.path.exists(spec) and _QUALIFIED.match(spec):
        published = resolve_published(spec, parameter_count(model))
    else:
        published = None
    if published is not None:
        source = f"Published weights {published.file_name} (for {published.builder})"
        state_dict = load_state_dict_file(cached_file(published, progress=progress))
    else:
        source = f"Weights file {spec}"
        state_dict = load_state_dict_file(spec)  # type: ignore[arg-type]

    model_name = type(model).__name__
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        raise ValueError(
            f"{source} does not fit this {model_name} model ({parameter_count(model):,} parameters): {mismatch}. "
            "They are weights of another architecture or size; check model.name and model.weights."
        )
    model.load_state_dict(state_dict, strict=True)


def _describe_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor], shown: int = 3) -> str:
    """Empty if ``state_dict`` fits ``model`` key for key and shape for shape, else a short account of the first
    differences (missing, unexpected and reshaped keys)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("file vs model shape", reshaped)):
        if items:
            more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:shown])}{more}")
    return "; ".join(parts)


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model``, shared ones counted once (the figure ``PublishedWeights.num_params`` records)."""
    return sum(p.numel() for p in model.parameters())
