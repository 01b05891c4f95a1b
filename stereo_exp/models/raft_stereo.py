"""RAFT-Stereo: multilevel recurrent field transforms for stereo matching (Lipson, Teed and Deng, 3DV 2021).

`RAFT-Stereo <https://arxiv.org/abs/2109.07547>`_ matches every left pixel against the pixels of the same row of the
right image (a 1-D all-pairs correlation pyramid) and refines a disparity field with convolutional GRUs that run at
up to three resolutions. The module layout reproduces the state_dict keys of torchvision's published checkpoints
(``stereo_exp/testing/weights-layout/raft_stereo_{base,realtime}.tsv``), so those weights load with ``strict=True``.

Read in order: RAFT-Stereo blocks (encoders, correlation, multi-level update) -> ``RaftStereo`` -> config schema ->
private builder -> public builders. Blocks shared with CREStereo live in ``stereo_exp.models.blocks``.

Sign convention: inside the network the state is an x-*flow* from the left to the right image, which is negative
(x_right = x_left - d). It becomes positive disparity exactly once, when ``RaftStereo.forward`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stereo_exp.models.blocks import (
    BaseEncoder,
    BottleneckBlock,
    ConvGRU,
    FastGates,
    FlowHead,
    MaskPredictor,
    MotionEncoder,
    NormLayer,
    ResidualBlock,
    coords_grid,
    recurrent_channels_last,
    to_channels_last,
    upsample_flow,
)
from stereo_exp.models.config import EncoderBlock, EncoderNorm, RaftStereoConfig
from stereo_exp.models.registry import build_model, model_config

__all__ = [
    "CorrBlock1d",
    "EncoderBlock",
    "EncoderNorm",
    "MultiLevelContextEncoder",
    "MultiLevelUpdateBlock",
    "RaftStereo",
    "RaftStereoConfig",
    "StereoFeatureEncoder",
    "raft_stereo",
    "raft_stereo_base",
    "raft_stereo_realtime",
    "raft_stereo_tiny",
]


# --------------------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------------------


class StereoFeatureEncoder(nn.Module):
    """Matching features for the correlation volume (paper sec. 3.1).

    (B, 3, H, W) -> (B, output_dim, H / f, W / f), f = ``base_encoder.downsampling_factor``. With its own backbone the
    head is a 1x1 conv; when the backbone is shared with the context encoder (realtime variant) an extra residual
    block (``residual_block``, its own norm) and a 3x3 conv give the matching features room to differ from the
    context features.
    """

    def __init__(
        self,
        base_encoder: BaseEncoder,
        *,
        output_dim: int,
        shared_base: bool,
        block: Callable[..., nn.Module] = ResidualBlock,
        norm_layer: NormLayer | None = nn.InstanceNorm2d,
    ) -> None:
        super().__init__()
        self.base_encoder = base_encoder
        base_dim = base_encoder.output_dim
        self.residual_block: nn.Module
        if shared_base:
            self.residual_block = block(base_dim, base_dim, norm_layer=norm_layer, stride=1)
            self.conv = nn.Conv2d(base_dim, output_dim, kernel_size=3, padding=1)
        else:
            self.residual_block = nn.Identity()
            self.conv = nn.Conv2d(base_dim, output_dim, kernel_size=1)
        self.output_dim = output_dim
        self.downsampling_factor: int = base_encoder.downsampling_factor

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.residual_block(self.base_encoder(x)))


class MultiLevelContextEncoder(nn.Module):
    """Initial hidden states and context of the GRUs, one pair per GRU level (paper sec. 3.1 and 3.3).

    (B, 3, H, W) -> list over levels i = 0 .. n-1 of ``(hidden, context)``, each (B, output_dim // 2, H / (f 2^i),
    W / (f 2^i)) before activation, f = ``base_encoder.downsampling_factor``. Level 0 reads the backbone output;
    each further level first halves the resolution with two blocks (``downsampler``). ``out_with_blocks[i]`` adds a
    residual block in front of level i's output convolutions.
    """

    def __init__(
        self,
        base_encoder: BaseEncoder,
        *,
        out_with_blocks: Sequence[bool],
        output_dim: int,
        block: Callable[..., nn.Module] = ResidualBlock,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.base_encoder = base_encoder
        dim = base_encoder.output_dim

        def out_layer(with_block: bool) -> nn.Sequential:
            layers = [block(dim, dim, norm_layer=norm_layer, stride=1)] if with_block else []
            return nn.Sequential(*layers, nn.Conv2d(dim, output_dim // 2, kernel_size=3, padding=1))

        def downsampler(level: int) -> nn.Module:
            if level == 0:
                return nn.Identity()
            return nn.Sequential(
                block(dim, dim, norm_layer=norm_layer, stride=2), block(dim, dim, norm_layer=norm_layer, stride=1)
            )

        # A ModuleDict per level: the key order (downsampler, out_hidden_state, out_context) is the checkpoint's.
        self.downsample_and_out_layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "downsampler": downsampler(level),
                    "out_hidden_state": out_layer(with_block),
                    "out_context": out_layer(with_block),
                }
            )
            for level, with_block in enumerate(out_with_blocks)
        )
        self.num_levels = len(out_with_blocks)
        self.downsampling_factor: int = base_encoder.downsampling_factor

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        x = self.base_encoder(x)
        outputs = []
        for layers in self.downsample_and_out_layers:
            x = layers["downsampler"](x)
            outputs.append((layers["out_hidden_state"](x), layers["out_context"](x)))
        return outputs


# --------------------------------------------------------------------------------------------------------------------
# Correlation
# --------------------------------------------------------------------------------------------------------------------


class CorrBlock1d(nn.Module):
    """Row-wise all-pairs correlation pyramid and its lookup (paper sec. 3.2). No parameters.

    ``pyramid(fmap1, fmap2)``: features (B, C, h, w) -> ``num_levels`` volumes; level k is (B * h * w, w / 2^k): the
    dot products / sqrt(C) of each left pixel with every right pixel of its row, averaged over 2^k right pixels.
    ``lookup(pyramid, x)``: x (B, 1, h, w) absolute right-image x-coordinates -> (B, out_channels, h, w), level by
    level the 2 * radius + 1 values at x / 2^k + (-radius .. radius), linearly interpolated, zero outside the row.
    """

    def __init__(self, *, num_levels: int = 4, radius: int = 4) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.radius = radius
        self.out_channels = num_levels * (2 * radius + 1)

    def pyramid(self, fmap1: Tensor, fmap2: Tensor) -> list[Tensor]:
        if fmap1.shape != fmap2.shape:
            raise ValueError(f"Left and right feature maps differ: {tuple(fmap1.shape)} != {tuple(fmap2.shape)}")
        b, c, h, w = fmap1.shape
        min_width = 2 ** (self.num_levels - 1)
        if w < min_width:
            raise ValueError(
                f"Feature maps {w} px wide are too narrow for a {self.num_levels}-level correlation pyramid "
                f"(corr_num_levels); at least {min_width} px are needed."
            )
        # (B, h, w1, C) @ (B, h, C, w2) -> (B, h, w1, w2): one batched matmul per image row.
        corr = torch.matmul(fmap1.permute(0, 2, 3, 1), fmap2.permute(0, 2, 1, 3)) / math.sqrt(c)
        volume = corr.reshape(b * h * w, 1, w)
        levels = [volume]
        for _ in range(self.num_levels - 1):
            volume = F.avg_pool1d(volume, kernel_size=2, stride=2)
            levels.append(volume)
        return [level.squeeze(1) for level in levels]

    def lookup(self, pyramid: list[Tensor], x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        offsets = torch.arange(-self.radius, self.radius + 1, device=x.device, dtype=x.dtype)
        centres = x.permute(0, 2, 3, 1).reshape(b * h * w, 1)
        sampled = [_sample_linear(volume, centres / 2**k + offsets) for k, volume in enumerate(pyramid)]
        return torch.cat(sampled, dim=1).view(b, h, w, self.out_channels).permute(0, 3, 1, 2).contiguous()


def _sample_linear(rows: Tensor, positions: Tensor) -> Tensor:
    """Linear interpolation of ``rows`` (N, W) at ``positions`` (N, K) in pixels; zero outside [0, W - 1].

    Same values as ``F.grid_sample(..., align_corners=True, padding_mode="zeros")`` on (N, 1, 1, W) without the
    round trip through [-1, 1] coordinates.
    """
    width = rows.shape[1]
    left = positions.floor()
    frac = positions - left
    left = left.long()

    def taps(index: Tensor) -> Tensor:
        inside = (index >= 0) & (index < width)
        return rows.gather(1, index.clamp(0, width - 1)) * inside

    return taps(left) * (1 - frac) + taps(left + 1) * frac


# --------------------------------------------------------------------------------------------------------------------
# Multi-level recurrent update
# --------------------------------------------------------------------------------------------------------------------


class MultiLevelUpdateBlock(nn.Module):
    """GRUs at ``len(hidden_dims)`` resolutions, level 0 the finest (1/f), each further level half as large.

    ``forward(hidden, contexts, corr_features, flow, num_levels_updated=None) -> new hidden list`` updates the
    coarsest ``num_levels_updated`` levels (all by default), coarse to fine. Level 0's input is the motion encoding of
    ``flow`` (B, 2, h, w) and ``corr_features``; level i > 0 reads level i-1's hidden state pooled to its size; every
    level but the coarsest also reads level i+1's (already updated) hidden state upsampled to its size. ``contexts[i]``
    holds the three gate biases of level i. The input list is not modified (activation checkpointing replays it).

    ``grus[j]`` serves level ``n - 1 - j`` (coarsest first): that is the order of the published checkpoints.
    """

    def __init__(self, *, motion_encoder: MotionEncoder, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self.motion_encoder = motion_encoder
        self.hidden_dims = list(hidden_dims)
        n = len(hidden_dims)

        def input_size(level: int) -> int:
            finer = motion_encoder.out_channels if level == 0 else hidden_dims[level - 1]
            coarser = hidden_dims[level + 1] if level < n - 1 else 0
            return finer + coarser

        self.grus = nn.ModuleList(
            ConvGRU(input_size=input_size(level), hidden_size=hidden_dims[level], kernel_size=3, padding=1)
            for level in reversed(range(n))
        )

    def forward(
        self,
        hidden: Sequence[Tensor],
        contexts: Sequence[Sequence[Tensor]] | Sequence[FastGates],
        corr_features: Tensor,
        flow: Tensor,
        num_levels_updated: int | None = None,
        *,
        fast: bool = False,
    ) -> list[Tensor]:
        """``fast=True``: ``contexts[i]`` is level i's ``FastGates`` from ``context_gates`` and the GRUs run
        ``ConvGRU.forward_fast`` (z and r gates in one convolution); same numbers up to float rounding."""
        n = len(self.hidden_dims)
        hidden = list(hidden)
        for level in reversed(range(n - (num_levels_updated or n), n)):
            if level == 0:
                inputs = self.motion_encoder(flow, corr_features)
            else:
                inputs = F.avg_pool2d(hidden[level - 1], kernel_size=3, stride=2, padding=1)
            if level < n - 1:
                coarser = F.interpolate(
                    hidden[level + 1], size=hidden[level].shape[-2:], mode="bilinear", align_corners=True
                )
                inputs = torch.cat([inputs, coarser], dim=1)
            gru = self.grus[n - 1 - level]
            if fast:
                hidden[level] = gru.forward_fast(hidden[level], inputs, contexts[level])
            else:
                hidden[level] = gru(hidden[level], inputs, contexts[level])
        return hidden

    def context_gates(self, contexts: Sequence[Sequence[Tensor]]) -> list[FastGates]:
        """Per level, the three context maps (z, r, q) plus the GRU's biases, prepared for ``ConvGRU.forward_fast``:
        the ``contexts`` of ``forward(..., fast=True)``, computed once per image instead of at every update."""
        n = len(self.hidden_dims)
        gates = []
        for level in range(n):
            gru = self.grus[n - 1 - level]
            gates.append(gru.fast_gates(torch.cat(list(contexts[level]), dim=1) + gru.gate_biases()))
        return gates


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class RaftStereo(nn.Module):
    """RAFT-Stereo from built components.

    ``forward(left, right, flow_init=None, num_iters=12) -> list[Tensor]``: ``left``/``right`` (B, 3, H, W) in
    [-1, 1] with H and W multiples of ``size_multiple``; returns ``num_iters`` predictions, each (B, 1, H, W)
    positive disparity in pixels (the last is the final one). ``flow_init`` (B, 1, h, w) is a positive disparity
    prior in pixels of its own width w, usually the input size; it is resampled to the working resolution 1/f.

    Args:
        feature_encoder: left and right images (as one batch) -> matching features at 1/f.
        context_encoder: left image -> (hidden, context) per GRU level.
        corr_block: ``pyramid(fmap1, fmap2)`` and ``lookup(pyramid, x)``, exposes ``out_channels``.
        update_block: the multi-level GRUs, exposes ``hidden_dims``.
        disparity_head: finest hidden state -> 2-channel flow update, of which only x is used (stereo moves along
            the rows; the y output exists for the published weights).
        mask_predictor: finest hidden state -> convex upsampling mask; None upsamples bilinearly.
        slow_fast: run the coarser GRUs more often (paper sec. 3.4; the realtime variant): before each full update,
            the coarsest 1, 2, .., n-1 levels get an extra update.
        activation_checkpointing: in training, recompute each recurrent iteration in the backward pass instead of
            storing its activations (memory roughly independent of ``num_iters``; about one more forward of cost).
        fast_paths: run the recurrent updates the fast way (same numbers up to float rounding, checked in
            ``tests/test_fast_paths.py``): channels-last memory for the update block, heads and context
            convolutions, the GRU biases folded into the precomputed context once per image, the z and r gates as
            one convolution. False runs the plain computation.
        channels_last: the fast paths' channels-last memory (above); None = ``recurrent_channels_last`` of the
            finest GRU's width (channels-last except for wide maps on a CPU without AVX-512).
    """

    def __init__(
        self,
        *,
        feature_encoder: nn.Module,
        context_encoder: MultiLevelContextEncoder,
        corr_block: CorrBlock1d,
        update_block: MultiLevelUpdateBlock,
        disparity_head: nn.Module,
        mask_predictor: nn.Module | None = None,
        slow_fast: bool = False,
        activation_checkpointing: bool = False,
        fast_paths: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        hidden_dims = update_block.hidden_dims
        if context_encoder.num_levels != len(hidden_dims):
            raise ValueError(
                f"The context encoder has {context_encoder.num_levels} levels but the update block "
                f"{len(hidden_dims)} GRUs; they must match (context_encoder_out_with_blocks, update_block_hidden_dims)."
            )
        self.feature_encoder = feature_encoder
        self.context_encoder = context_encoder
        self.corr_block = corr_block
        self.update_block = update_block
        self.disparity_head = disparity_head
        self.mask_predictor = mask_predictor
        # The context enters every GRU step through the same convolution, so it is computed once per image.
        self.context_convs = nn.ModuleList(nn.Conv2d(d, 3 * d, kernel_size=3, padding=1) for d in hidden_dims)
        self.slow_fast = slow_fast
        self.activation_checkpointing = activation_checkpointing
        self.downsampling_factor: int = feature_encoder.downsampling_factor
        # Each GRU level halves the 1/f feature map, so inputs must divide by f * 2^(levels - 1).
        self.size_multiple: int = self.downsampling_factor * 2 ** (len(hidden_dims) - 1)
        self.fast_paths = fast_paths
        if channels_last is None:
            channels_last = recurrent_channels_last(hidden_dims[0])
        self.channels_last = fast_paths and channels_last
        self._compiled_iteration: Callable[..., tuple[list[Tensor], Tensor, Tensor]] | None = None  # compile_updates
        self._compile_in_eval = False
        if self.channels_last:
            # The recurrent part runs on channels-last tensors (oneDNN convolves them without reordering); the
            # encoders stay channels-first (their norms are faster there). Only strides change, not the state_dict.
            for part in (self.update_block, self.disparity_head, self.mask_predictor, self.context_convs):
                if part is not None:
                    part.to(memory_format=torch.channels_last)

    def forward(
        self, left: Tensor, right: Tensor, flow_init: Tensor | None = None, num_iters: int = 12
    ) -> list[Tensor]:
        self._check_inputs(left, right, flow_init, num_iters)
        b = left.shape[0]

        fmap1, fmap2 = self.feature_encoder(torch.cat([left, right], dim=0)).chunk(2, dim=0)
        pyramid = self.corr_block.pyramid(fmap1, fmap2)

        hidden: list[Tensor] = []
        contexts: list[Any] = []
        for (h, ctx), conv, dim in zip(
            self.context_encoder(left), self.context_convs, self.update_block.hidden_dims, strict=True
        ):
            if self.channels_last:
                h, ctx = to_channels_last(h), to_channels_last(ctx)
            hidden.append(torch.tanh(h))
            contexts.append(conv(F.relu(ctx)).split(dim, dim=1))
        if self.fast_paths:
            contexts = self.update_block.context_gates(contexts)

        hf, wf = fmap1.shape[-2:]
        # Coordinates stay in fp32 (or fp64) under autocast: bf16 cannot even count columns past 256 exactly.
        dtype = torch.promote_types(fmap1.dtype, torch.float32)
        # (B, 1, h, w) column index; contiguous like the coordinates of later iterations (one compiled graph for all)
        grid_x = coords_grid(b, hf, wf, device=fmap1.device, dtype=dtype)[:, :1].clone(
            memory_format=torch.contiguous_format
        )
        coords_x = grid_x  # right-image x-coordinate of each left pixel at 1/f
        if flow_init is not None:
            prior = F.interpolate(flow_init.to(coords_x.dtype), size=(hf, wf), mode="bilinear", align_corners=True)
            coords_x = coords_x - prior * (wf / flow_init.shape[-1])  # disparity -> negative x-flow at 1/f

        use_checkpoint = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        iteration = self._iteration
        if self._compiled_iteration is not None and (self.training or self._compile_in_eval):
            iteration = self._compiled_iteration
        predictions = []
        for _ in range(num_iters):
            # The lookup position is not differentiated through (RAFT): gradients flow only through the updates.
            coords_x = coords_x.detach()
            if use_checkpoint:
                hidden, coords_x, disparity = checkpoint(
                    iteration, hidden, contexts, pyramid, coords_x, grid_x, use_reentrant=False
                )
            else:
                hidden, coords_x, disparity = iteration(hidden, contexts, pyramid, coords_x, grid_x)
            predictions.append(disparity)
        return predictions

    def compile_updates(self, *, in_eval: bool = False, **options: Any) -> None:
        """Run every recurrent iteration through ``torch.compile(self._iteration, **options)`` in training mode (and
        in eval mode with ``in_eval``): regional compilation, one compiled graph for the ``num_iters`` identical
        iterations (see ``CREStereo.compile_updates``; ``tests/test_speed.py``)."""
        self._compiled_iteration = torch.compile(self._iteration, **options)
        self._compile_in_eval = in_eval

    def _iteration(
        self,
        hidden: list[Tensor],
        contexts: list[tuple[Tensor, ...]],
        pyramid: list[Tensor],
        coords_x: Tensor,
        grid_x: Tensor,
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """One recurrent update: returns the new hidden states, the new x-coordinates and the (B, 1, H, W) disparity."""
        corr_features = self.corr_block.lookup(pyramid, coords_x)
        flow_x = coords_x - grid_x
        flow = torch.cat([flow_x, torch.zeros_like(flow_x)], dim=1)  # the motion encoder reads (x, y) flow; y = 0
        if self.channels_last:
            corr_features, flow = to_channels_last(corr_features), to_channels_last(flow)
        num_levels = len(hidden)
        fast = self.fast_paths
        if self.slow_fast:
            for coarsest in range(1, num_levels):
                hidden = self.update_block(
                    hidden, contexts, corr_features, flow, num_levels_updated=coarsest, fast=fast
                )
        hidden = self.update_block(hidden, contexts, corr_features, flow, fast=fast)
        coords_x = coords_x + self.disparity_head(hidden[0])[:, :1]
        mask = None if self.mask_predictor is None else self.mask_predictor(hidden[0])
        flow_up = upsample_flow(coords_x - grid_x, mask, self.downsampling_factor)  # (B, 1, H, W) x-flow
        return hidden, coords_x, -flow_up

    def _check_inputs(self, left: Tensor, right: Tensor, flow_init: Tensor | None, num_iters: int) -> None:
        if left.ndim != 4 or left.shape[1] != 3 or left.shape != right.shape:
            raise ValueError(
                f"left and right must both be (B, 3, H, W) images of one shape; got left {tuple(left.shape)} "
                f"and right {tuple(right.shape)}."
            )
        h, w = left.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"Input height and width must be multiples of {m} (model.size_multiple); got left "
                f"{tuple(left.shape)} and right {tuple(right.shape)}. Pad the images first "
                "(stereo_exp.models.inference.predict_disparity does)."
            )
        min_width = self.downsampling_factor * 2 ** (self.corr_block.num_levels - 1)
        if w < min_width:
            raise ValueError(
                f"Input width {w} is too small for the {self.corr_block.num_levels}-level correlation pyramid "
                f"(model.corr_num_levels): its coarsest level needs at least {min_width} px."
            )
        if num_iters < 1:
            raise ValueError(f"num_iters must be >= 1; got {num_iters}.")
        # Only a horizontal prior: a (B, 2, h, w) flow would carry a vertical part this model cannot represent.
        if flow_init is not None and (flow_init.ndim != 4 or flow_init.shape[:2] != (left.shape[0], 1)):
            raise ValueError(
                f"flow_init must be a (B, 1, h, w) disparity with B = {left.shape[0]}; got {tuple(flow_init.shape)}."
            )


# --------------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------------

_BLOCKS: dict[EncoderBlock, Callable[..., nn.Module]] = {
    EncoderBlock.residual: ResidualBlock,
    EncoderBlock.bottleneck: BottleneckBlock,
}
_NORMS: dict[EncoderNorm, NormLayer | None] = {
    EncoderNorm.batch: nn.BatchNorm2d,
    EncoderNorm.instance: nn.InstanceNorm2d,
    EncoderNorm.none: None,
}


def raft_stereo(config: RaftStereoConfig) -> RaftStereo:
    """The RAFT-Stereo network ``config`` describes, randomly initialised (``RaftStereoConfig`` checked the numbers)."""
    feature_block, feature_norm = _BLOCKS[config.feature_encoder_block], _NORMS[config.feature_encoder_norm]
    context_block, context_norm = _BLOCKS[config.context_encoder_block], _NORMS[config.context_encoder_norm]
    context_base = BaseEncoder(
        block=context_block,
        layers=config.context_encoder_layers[:4],
        strides=config.context_encoder_strides,
        norm_layer=context_norm,
    )
    feature_base = (
        context_base
        if config.shared_encoder_weight
        else BaseEncoder(
            block=feature_block,
            layers=config.feature_encoder_layers[:4],
            strides=config.feature_encoder_strides,
            norm_layer=feature_norm,
        )
    )
    feature_encoder = StereoFeatureEncoder(
        feature_base,
        output_dim=config.feature_encoder_layers[4],
        shared_base=config.shared_encoder_weight,
        block=feature_block,
        norm_layer=feature_norm,
    )
    context_encoder = MultiLevelContextEncoder(
        context_base,
        out_with_blocks=config.context_encoder_out_with_blocks,
        output_dim=config.context_encoder_layers[4],
        block=context_block,
        norm_layer=context_norm,
    )
    corr_block = CorrBlock1d(num_levels=config.corr_num_levels, radius=config.corr_radius)
    update_block = MultiLevelUpdateBlock(
        motion_encoder=MotionEncoder(
            in_channels_corr=corr_block.out_channels,
            corr_layers=config.motion_encoder_corr_layers,
            flow_layers=config.motion_encoder_flow_layers,
            out_channels=config.motion_encoder_out_channels,
        ),
        hidden_dims=config.update_block_hidden_dims,
    )
    hidden_size = config.update_block_hidden_dims[0]
    disparity_head = FlowHead(in_channels=hidden_size, hidden_size=config.flow_head_hidden_size)
    mask_predictor = None
    if config.use_mask_predictor:
        mask_predictor = MaskPredictor(
            in_channels=hidden_size,
            hidden_size=config.mask_predictor_hidden_size,
            upsample_factor=feature_encoder.downsampling_factor,
            multiplier=config.mask_predictor_scale,
        )
    return RaftStereo(
        feature_encoder=feature_encoder,
        context_encoder=context_encoder,
        corr_block=corr_block,
        update_block=update_block,
        disparity_head=disparity_head,
        mask_predictor=mask_predictor,
        slow_fast=config.slow_fast,
        activation_checkpointing=config.activation_checkpointing,
        fast_paths=config.fast_paths,
        channels_last=config.channels_last,
    )


def raft_stereo_base(**overrides: Any) -> RaftStereo:
    """RAFT-Stereo base (11,116,176 parameters): 1/4 resolution, three GRU levels (paper sec. 4). ``overrides``
    replace fields of ``RaftStereoConfig`` (e.g. ``corr_radius=2``; ``weights="SCENEFLOW_V1"`` loads those)."""
    return build_model(model_config("raft_stereo_base", overrides))  # type: ignore[return-value]


def raft_stereo_realtime(**overrides: Any) -> RaftStereo:
    """RAFT-Stereo realtime (8,077,152 parameters): one shared backbone at 1/8, two slow-fast GRU levels (sec. 4.7).
    ``overrides`` as for ``raft_stereo_base``."""
    return build_model(model_config("raft_stereo_realtime", overrides))  # type: ignore[return-value]


def raft_stereo_tiny(**overrides: Any) -> RaftStereo:
    """``RAFT_STEREO_TINY`` (stereo_exp/models/config.py), a CPU-sized RAFT-Stereo for tests and smoke runs: every code
    path of the base model plus slow-fast updates, with narrow layers. ``overrides`` as for ``raft_stereo_base``."""
    return build_model(model_config("raft_stereo_tiny", overrides))  # type: ignore[return-value]
