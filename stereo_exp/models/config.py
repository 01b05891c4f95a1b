"""The hyper-parameters of every model: one config dataclass per family, one instance per named variant.

This is the only place the numbers live. ``CREStereoConfig`` and ``RaftStereoConfig`` are the ``model`` group
schemas (their defaults are the published base models) and check their own values; ``MODEL_VARIANTS`` holds the
named variants as instances (``crestereo_tiny`` is ``CRESTEREO_TINY``). ``conf/model/<name>.yaml`` composes the
stored variant ``<name>_schema`` and adds nothing. A family's builder takes its config (``crestereo(config)``,
``raft_stereo(config)``); ``config.build_network()`` reaches it.

Nothing here imports torch, so Hydra composes a config (and answers ``--help``) without loading the networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import MISSING

if TYPE_CHECKING:
    from torch import nn

    from stereo_exp.models.crestereo import CREStereo
    from stereo_exp.models.raft_stereo import RaftStereo

__all__ = [
    "MODEL_VARIANTS",
    "REGISTERED_BUILDERS",
    "AttentionKind",
    "CREStereoConfig",
    "EncoderBlock",
    "EncoderNorm",
    "FeatureNorm",
    "ModelConfig",
    "RaftStereoConfig",
]

EnumType = TypeVar("EnumType", bound=Enum)

# The names model.name accepts: every variant of this module (filled at its end), and the builders registered with
# ``stereo_exp.models.register_model`` (``fn(config) -> nn.Module``; stereo_exp/models/registry.py fills it).
MODEL_VARIANTS: dict[str, ModelConfig] = {}
REGISTERED_BUILDERS: dict[str, Callable[[Any], nn.Module]] = {}


@dataclass
class ModelConfig:
    """Fields of every ``model`` group schema; each family sets ``name`` to its published base model."""

    name: str = MISSING  # a model of list_models(): crestereo_base | crestereo_tiny | raft_stereo_base | ...
    weights: str | None = None  # published weights name (e.g. MEGVII_V1) or a local .pth / checkpoint; null = random
    train_iters: int = 10  # recurrent refinement updates per forward pass during training
    eval_iters: int = 10  # recurrent refinement updates during validation

    def __post_init__(self) -> None:
        if not MODEL_VARIANTS or self.name in REGISTERED_BUILDERS or self.name == MISSING:
            return  # MODEL_VARIANTS is empty while this module defines the variants
        if self.name not in MODEL_VARIANTS:
            known = ", ".join(sorted([*MODEL_VARIANTS, *REGISTERED_BUILDERS]))
            raise ValueError(f"Unknown model {self.name!r} (model.name). Known models: {known}.")
        family = type(MODEL_VARIANTS[self.name])
        if not isinstance(self, family):
            raise ValueError(
                f"model.name={self.name} is a {family.__name__} model, but this model config is a "
                f"{type(self).__name__}: choose the model group option instead (model={self.name})."
            )

    def build_network(self) -> nn.Module:
        """The network these numbers describe, randomly initialised (``stereo_exp.models.build_model`` also loads
        ``weights``)."""
        raise NotImplementedError(f"{type(self).__name__} names no network builder.")


def _choice(kind: type[EnumType], key: str, value: Any) -> EnumType:
    """``value`` as a member of ``kind``; Hydra already converts strings, Python callers may pass them."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"model.{key}={value!r} is not one of {', '.join(k.value for k in kind)}.") from None


# --------------------------------------------------------------------------------------------------------------------
# CREStereo (stereo_exp/models/crestereo.py)
# --------------------------------------------------------------------------------------------------------------------


class FeatureNorm(str, Enum):
    instance = "instance"  # the published models
    batch = "batch"
    none = "none"


class AttentionKind(str, Enum):
    linear = "linear"  # the published models
    softmax = "softmax"


@dataclass
class CREStereoConfig(ModelConfig):
    """CREStereo hyper-parameters; the defaults are the published ``crestereo_base``."""

    name: str = "crestereo_base"  # crestereo_base | crestereo_tiny, or a builder registered with register_model
    # feature encoder
    feature_encoder_layers: list[int] = field(default_factory=lambda: [64, 64, 96, 128, 256])  # stem, 3 stages, output
    feature_encoder_strides: list[int] = field(default_factory=lambda: [2, 1, 2, 1])  # stem + stages; product = 4
    feature_encoder_norm: FeatureNorm = FeatureNorm.instance  # norm of the encoder: instance | batch | none
    # pyramid
    feature_downsample_rates: list[int] = field(default_factory=lambda: [2, 4])  # coarse levels: 1/(4*r), increasing
    # adaptive group correlation
    corr_groups: int = 4  # channel groups; the correlation has corr_groups * window candidates channels
    corr_search_window_1d: list[int] = field(default_factory=lambda: [1, 9])  # (rows, cols) of even updates' window
    corr_search_dilate_1d: list[int] = field(default_factory=lambda: [1, 1])  # (y, x) pixel step between candidates
    corr_search_window_2d: list[int] = field(default_factory=lambda: [3, 3])  # (rows, cols) of odd updates' window
    corr_search_dilate_2d: list[int] = field(default_factory=lambda: [1, 1])  # (y, x) pixel step between candidates
    # motion encoder
    motion_encoder_corr_layers: list[int] = field(default_factory=lambda: [256, 192])  # 1x1 then 3x3 conv widths
    motion_encoder_flow_layers: list[int] = field(default_factory=lambda: [128, 64])  # 7x7 then 3x3 conv widths
    motion_encoder_out_channels: int = 128  # motion features incl. the 2 flow channels
    # recurrent block
    recurrent_block_hidden_state_size: int = 128  # GRU state: first channels of the left features (rest = context)
    recurrent_block_kernel_length: int = 5  # ConvGRU kernels (1 x k) then (k x 1)
    # heads
    flow_head_hidden_size: int = 256  # hidden width of the delta-flow head
    mask_predictor_hidden_size: int = 256  # hidden width of the convex-upsampling mask head
    # transformers at the coarsest level
    num_attention_heads: int = 8  # heads of every attention layer; must divide feature_encoder_layers[-1]
    num_self_attention_layers: int = 1  # self-attention layers before the coarse correlations
    num_cross_attention_layers: int = 1  # cross-attention layers inside the coarsest correlation
    attention: AttentionKind = AttentionKind.linear  # linear (published) | softmax
    positional_encoding_max_size: int = 256  # side of the table at 1/16: inputs up to 16x this; in the weights layout
    # memory and speed
    activation_checkpointing: bool = False  # recompute each recurrent update in backward (less memory, ~1.3x compute)
    fast_paths: bool = True  # optimised recurrent updates (same numbers to 1e-4; docs/PERFORMANCE.md); false = plain
    channels_last: bool | None = None  # fast paths: recurrent maps channels-last; null = yes unless wide, AVX2-only CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        self.feature_encoder_norm = _choice(FeatureNorm, "feature_encoder_norm", self.feature_encoder_norm)
        self.attention = _choice(AttentionKind, "attention", self.attention)
        self._check_search_windows()
        rates = list(self.feature_downsample_rates)
        if not rates or any(r <= 1 for r in rates) or rates != sorted(set(rates)):
            raise ValueError(f"model.feature_downsample_rates must be increasing and > 1; got {rates}.")
        dim = self.feature_encoder_layers[-1]
        for key, divisor in (("corr_groups", self.corr_groups), ("num_attention_heads", self.num_attention_heads)):
            if dim % divisor != 0:
                raise ValueError(f"model.{key}={divisor} must divide model.feature_encoder_layers[-1]={dim}.")
        if dim % 4 != 0:
            raise ValueError(f"model.feature_encoder_layers[-1]={dim} must be divisible by 4 (positional encoding).")
        if not 0 < self.recurrent_block_hidden_state_size < dim:
            raise ValueError(
                f"model.recurrent_block_hidden_state_size={self.recurrent_block_hidden_state_size} must be between 0 "
                f"and the feature width {dim} (feature_encoder_layers[-1]): the left features are split into hidden "
                "state and context."
            )
        if self.train_iters < 2:
            # num_iters // 2 = 0 updates at 1/16 and 1/8: their parameters would get no gradient (and DDP would fail).
            raise ValueError(f"model.train_iters must be >= 2 for CREStereo; got {self.train_iters}.")

    def _check_search_windows(self) -> None:
        """The two windows alternate over the same correlation channels, so they hold the same odd count."""
        size_1d, size_2d = self.corr_search_window_1d, self.corr_search_window_2d
        if size_1d[0] * size_1d[1] != size_2d[0] * size_2d[1]:
            raise ValueError(
                f"corr_search_window_1d {list(size_1d)} and corr_search_window_2d {list(size_2d)} must hold "
                "the same number of candidates (they fill the same correlation channels)."
            )
        if size_1d[0] * size_1d[1] % 2 != 1:
            raise ValueError(f"The search windows need an odd number of candidates; got {list(size_1d)}.")
        if 1 not in size_1d:
            raise ValueError(f"corr_search_window_1d must be one row or one column; got {list(size_1d)}.")
        if 1 in size_2d:
            raise ValueError(f"corr_search_window_2d must extend in both directions; got {list(size_2d)}.")
        for key in ("corr_search_dilate_1d", "corr_search_dilate_2d"):
            if min(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1 in both directions; got {list(getattr(self, key))}.")

    def build_network(self) -> CREStereo:
        from stereo_exp.models.crestereo import crestereo  # torch is imported when a network is built, not before

        return crestereo(self)


# CREStereo as published (5,432,948 parameters).
# Published weights: model.weights=MEGVII_V1 | CRESTEREO_ETH_MBL_V1 | CRESTEREO_FINETUNE_MULTI_V1.
CRESTEREO_BASE = CREStereoConfig()

# A CPU-sized variant for the embedded default run and the tests (244,228 parameters, no published weights): the
# structure of crestereo_base with about a fifth of the channels; its numbers are not comparable with the published.
CRESTEREO_TINY = CREStereoConfig(
    name="crestereo_tiny",
    train_iters=4,  # 2 updates at 1/16, 2 at 1/8, 4 at 1/4
    eval_iters=4,
    feature_encoder_layers=[16, 16, 24, 32, 48],  # output 48 = 24 hidden state + 24 context
    motion_encoder_corr_layers=[48, 32],
    motion_encoder_flow_layers=[24, 16],
    motion_encoder_out_channels=24,
    recurrent_block_hidden_state_size=24,
    flow_head_hidden_size=48,
    mask_predictor_hidden_size=48,
    num_attention_heads=4,
    positional_encoding_max_size=128,  # inputs up to 2048 px
)


# --------------------------------------------------------------------------------------------------------------------
# RAFT-Stereo (stereo_exp/models/raft_stereo.py)
# --------------------------------------------------------------------------------------------------------------------


class EncoderBlock(str, Enum):
    residual = "residual"  # two 3x3 convs (the published models)
    bottleneck = "bottleneck"  # 1x1 -> 3x3 -> 1x1 at a quarter of the width


class EncoderNorm(str, Enum):
    batch = "batch"
    instance = "instance"
    none = "none"


@dataclass
class RaftStereoConfig(ModelConfig):
    """RAFT-Stereo hyper-parameters; the defaults are the published ``raft_stereo_base``."""

    name: str = (
        "raft_stereo_base"  # raft_stereo_base | raft_stereo_realtime | raft_stereo_tiny, or a registered builder
    )
    train_iters: int = 22  # recurrent updates per training forward pass (RAFT-Stereo recipe)
    eval_iters: int = 32  # recurrent updates during validation (RAFT-Stereo recipe)
    # Encoders
    shared_encoder_weight: bool = False  # one backbone for matching features and context (realtime variant)
    feature_encoder_layers: list[int] = field(default_factory=lambda: [64, 64, 96, 128, 256])  # widths: 4 + output
    feature_encoder_strides: list[int] = field(default_factory=lambda: [1, 1, 2, 2])  # stem + 3 stages; product = f
    feature_encoder_block: EncoderBlock = EncoderBlock.residual  # residual | bottleneck
    feature_encoder_norm: EncoderNorm = EncoderNorm.instance  # instance | batch | none: backbone; extra block if shared
    context_encoder_layers: list[int] = field(default_factory=lambda: [64, 64, 96, 128, 256])  # output = 2 x hidden
    context_encoder_strides: list[int] = field(default_factory=lambda: [1, 1, 2, 2])  # must equal the feature ones
    context_encoder_out_with_blocks: list[bool] = field(default_factory=lambda: [True, True, False])  # one per level
    context_encoder_block: EncoderBlock = EncoderBlock.residual  # residual | bottleneck
    context_encoder_norm: EncoderNorm = EncoderNorm.batch  # instance | batch | none: backbone, downsamplers, outputs
    # Correlation
    corr_num_levels: int = 4  # pyramid levels, each averaging 2x more right pixels
    corr_radius: int = 4  # lookup window: 2 * radius + 1 values per level
    # Motion encoder
    motion_encoder_corr_layers: list[int] = field(default_factory=lambda: [64, 64])  # 1x1 then 3x3 conv widths
    motion_encoder_flow_layers: list[int] = field(default_factory=lambda: [64, 64])  # 7x7 then 3x3 conv widths
    motion_encoder_out_channels: int = 128  # motion features fed to the finest GRU
    # Update block
    update_block_hidden_dims: list[int] = field(default_factory=lambda: [128, 128, 128])  # GRU widths, fine to coarse
    slow_fast: bool = False  # update coarser GRUs more often (paper sec. 3.4)
    # Heads
    flow_head_hidden_size: int = 256  # hidden width of the disparity-update head
    use_mask_predictor: bool = True  # convex upsampling (false: bilinear)
    mask_predictor_hidden_size: int = 256  # hidden width of the upsampling-mask head
    mask_predictor_scale: float = 0.25  # factor on the mask logits (RAFT's damping of this branch's gradients)
    # Memory and speed
    activation_checkpointing: bool = False  # recompute each recurrent update in backward: less memory, more time
    fast_paths: bool = True  # optimised recurrent updates (same numbers to 1e-4; docs/PERFORMANCE.md); false = plain
    channels_last: bool | None = None  # fast paths: recurrent maps channels-last; null = yes unless wide, AVX2-only CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("feature_encoder_block", "context_encoder_block"):
            setattr(self, key, _choice(EncoderBlock, key, getattr(self, key)))
        for key in ("feature_encoder_norm", "context_encoder_norm"):
            setattr(self, key, _choice(EncoderNorm, key, getattr(self, key)))
        for key in ("feature_encoder_layers", "context_encoder_layers"):
            if len(getattr(self, key)) != 5:
                raise ValueError(
                    f"model.{key}={list(getattr(self, key))} must hold 5 widths (4 backbone stages + output)."
                )
        if list(self.feature_encoder_strides) != list(self.context_encoder_strides):
            raise ValueError(
                f"model.feature_encoder_strides={list(self.feature_encoder_strides)} and model.context_encoder_strides="
                f"{list(self.context_encoder_strides)} must be equal: both encoders must work at the same resolution."
            )
        backbones = list(self.feature_encoder_layers[:4]), list(self.context_encoder_layers[:4])
        if self.shared_encoder_weight and backbones[0] != backbones[1]:
            raise ValueError(
                f"model.shared_encoder_weight=true needs equal backbone widths; got feature_encoder_layers[:4]="
                f"{backbones[0]} and context_encoder_layers[:4]={backbones[1]}."
            )
        if len(self.context_encoder_out_with_blocks) != len(self.update_block_hidden_dims):
            raise ValueError(
                f"model.context_encoder_out_with_blocks={list(self.context_encoder_out_with_blocks)} and model."
                f"update_block_hidden_dims={list(self.update_block_hidden_dims)} must have one entry per GRU level."
            )
        context_width = self.context_encoder_layers[4]
        if context_width % 2 or any(d != context_width // 2 for d in self.update_block_hidden_dims):
            raise ValueError(
                f"The context encoder output (model.context_encoder_layers[4]={context_width}) is split into hidden "
                "state and context of equal width, so every model.update_block_hidden_dims entry must be "
                f"{context_width // 2}; got {list(self.update_block_hidden_dims)}."
            )

    def build_network(self) -> RaftStereo:
        from stereo_exp.models.raft_stereo import raft_stereo  # torch is imported when a network is built, not before

        return raft_stereo(self)


# RAFT-Stereo base (Lipson et al. 2021; 11,116,176 parameters): separate backbones at 1/4 resolution, three GRU levels.
# Published weights: model.weights=SCENEFLOW_V1 | MIDDLEBURY_V1 | ETH3D_V1.
RAFT_STEREO_BASE = RaftStereoConfig()

# RAFT-Stereo realtime (paper sec. 4.7; 8,077,152 parameters): one shared backbone at 1/8, two slow-fast GRU levels.
# Published weights: model.weights=SCENEFLOW_V1.
RAFT_STEREO_REALTIME = RaftStereoConfig(
    name="raft_stereo_realtime",
    eval_iters=7,  # the realtime setting of the RAFT-Stereo paper
    shared_encoder_weight=True,  # one backbone for matching features and context
    feature_encoder_strides=[2, 1, 2, 2],  # 1/8 resolution
    context_encoder_strides=[2, 1, 2, 2],
    context_encoder_out_with_blocks=[True, True],  # two GRU levels
    update_block_hidden_dims=[128, 128],
    slow_fast=True,  # the coarse GRU runs twice per iteration
)

# A CPU-sized RAFT-Stereo (175,504 parameters, no published weights) for tests and smoke runs: every code path of
# the base model (1/4 resolution, three GRU levels, convex upsampling) plus slow-fast updates, with narrow layers.
RAFT_STEREO_TINY = RaftStereoConfig(
    name="raft_stereo_tiny",
    train_iters=4,
    eval_iters=4,
    feature_encoder_layers=[8, 8, 12, 16, 32],
    context_encoder_layers=[8, 8, 12, 16, 32],
    context_encoder_out_with_blocks=[True, False, False],
    corr_num_levels=2,
    corr_radius=2,
    motion_encoder_corr_layers=[16, 16],
    motion_encoder_flow_layers=[16, 8],
    motion_encoder_out_channels=24,
    update_block_hidden_dims=[16, 16, 16],
    slow_fast=True,
    flow_head_hidden_size=16,
    mask_predictor_hidden_size=16,
)

# Every named variant; conf/model/<name>.yaml composes the one of its name.
MODEL_VARIANTS.update(
    (variant.name, variant)
    for variant in (CRESTEREO_BASE, CRESTEREO_TINY, RAFT_STEREO_BASE, RAFT_STEREO_REALTIME, RAFT_STEREO_TINY)
)
