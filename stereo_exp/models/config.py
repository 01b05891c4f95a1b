"""Schemas of the ``model`` group: the fields every family shares (``ModelConfig``) and one schema per family.

The schemas live here, not beside the networks in crestereo.py and raft_stereo.py, so that composing a config
(every ``--help`` and ``--cfg job``) does not import torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

# Keys of the model group that are not constructor arguments of the architecture.
NON_ARCHITECTURE_KEYS = ("name", "weights", "train_iters", "eval_iters")


@dataclass
class ModelConfig:
    name: str = MISSING  # registered builder, e.g. crestereo_base | raft_stereo_base | raft_stereo_realtime
    weights: str | None = None  # published weights name (e.g. MEGVII_V1) or a local .pth / checkpoint; null = random
    train_iters: int = 10  # recurrent refinement updates per forward pass during training
    eval_iters: int = 10  # recurrent refinement updates during validation


def architecture_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """The builder keyword arguments among a model config's entries: every key but ``NON_ARCHITECTURE_KEYS``."""
    return {key: value for key, value in options.items() if key not in NON_ARCHITECTURE_KEYS}


def architecture_defaults(schema: type[ModelConfig]) -> dict[str, Any]:
    """The builder keyword arguments of ``schema``'s defaults: one table of hyper-parameters (the published model
    of the family), read by configs and Python callers alike."""
    return architecture_arguments(dataclasses.asdict(schema()))


# --------------------------------------------------------------------------------------------------------------------
# CREStereo (models/crestereo.py; conf/model/crestereo_*.yaml)
# --------------------------------------------------------------------------------------------------------------------


class AttentionKind(str, Enum):
    linear = "linear"  # the published models
    softmax = "softmax"


class FeatureNorm(str, Enum):
    instance = "instance"  # the published models
    batch = "batch"
    none = "none"


@dataclass
class CREStereoConfig(ModelConfig):
    """CREStereo hyper-parameters; the defaults are the published ``crestereo_base``."""

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

    def __post_init__(self) -> None:
        from stereo_exp.models.crestereo import SearchWindow, check_search_windows  # the model's window checks

        check_search_windows(
            SearchWindow(tuple(self.corr_search_window_1d), tuple(self.corr_search_dilate_1d)),  # type: ignore[arg-type]
            SearchWindow(tuple(self.corr_search_window_2d), tuple(self.corr_search_dilate_2d)),  # type: ignore[arg-type]
        )
        dim = self.feature_encoder_layers[-1]
        for key, divisor in (("corr_groups", self.corr_groups), ("num_attention_heads", self.num_attention_heads)):
            if dim % divisor != 0:
                raise ValueError(f"model.{key}={divisor} must divide model.feature_encoder_layers[-1]={dim}.")
        if dim % 4 != 0:
            raise ValueError(f"model.feature_encoder_layers[-1]={dim} must be divisible by 4 (positional encoding).")
        if self.train_iters < 2:
            # num_iters // 2 = 0 updates at 1/16 and 1/8: their parameters would get no gradient (and DDP would fail).
            raise ValueError(f"model.train_iters must be >= 2 for CREStereo; got {self.train_iters}.")


# --------------------------------------------------------------------------------------------------------------------
# RAFT-Stereo (models/raft_stereo.py; conf/model/raft_stereo_*.yaml)
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
