"""CREStereo: cascaded recurrent stereo matching with adaptive group correlation.

Li et al., "Practical Stereo Matching via Cascaded Recurrent Network with Adaptive Correlation", CVPR 2022
(https://arxiv.org/abs/2203.11483); original code megvii-research/CREStereo. The attribute names follow torchvision's
prototype port (``torchvision/prototype/models/depth/stereo/crestereo.py``) because they are the state_dict keys of the
published checkpoints (``stereo_exp/testing/weights-layout/crestereo_base.tsv``); with the same weights and inputs this
file computes the same numbers as that port (checked to 1e-4 in ``tests/test_crestereo.py``).

How one forward pass runs (shapes for an input of (B, 3, H, W); the encoder downsamples by 4):

1. A shared feature encoder turns both images into (B, C, H/4, W/4) features. The left features also give the
   recurrent state: the first ``hidden_size`` channels through tanh (initial hidden state), the rest through ReLU
   (context). Average pooling builds a pyramid of all four maps at 1/8 and 1/16.
2. At the coarsest level (1/16) the features get sine positional encodings, one self-attention and one cross-attention
   transformer pass (LoFTR-style linear attention).
3. Without ``flow_init``: ``num_iters // 2`` recurrent updates at 1/16, then ``num_iters // 2`` at 1/8, then
   ``num_iters`` at 1/4, each level starting from the previous level's result. Coarse levels correlate over a learned,
   deformed search window; the finest level over a fixed one. Windows alternate between a 1-D (1x9) row and a 2-D (3x3)
   patch from one update to the next. With ``flow_init``: only the ``num_iters`` updates at 1/4.
4. Every update's flow is convex-upsampled by 4 (then bilinearly to full resolution for coarse levels) and appended to
   the predictions.

Sign conventions: inside the network a flow (B, 2, h, w) is the displacement from a left pixel to its match in the
right image, so its x channel is the negative disparity (x_right = x_left - d). The prototype's outputs are the negated
flow; channel 0 of them is the positive disparity this project's contract asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stereo_exp.models.blocks import (
    ConvexMaskPredictor,
    FeatureEncoder,
    FlowHead,
    MotionEncoder,
    ResidualBlock,
    SeparableConvGRU,
    UpdateBlock,
    convex_upsample,
    coords_grid,
    cpu_rewrite_applies,
    grid_sample_pixels,
    recurrent_channels_last,
    sample_pixels_channels_last,
    tanh_fast,
    to_channels_last,
    upsample_flow,
)
from stereo_exp.models.config import AttentionKind, CREStereoConfig, FeatureNorm
from stereo_exp.models.registry import build_model, model_config

__all__ = [
    "AdaptiveGroupCorrelation",
    "AttentionKind",
    "AttentionOffsetCorrelation",
    "CREStereo",
    "CREStereoConfig",
    "FeatureNorm",
    "FeatureTransformer",
    "FeatureTransformerLayer",
    "PositionalEncodingSine",
    "SearchWindow",
    "crestereo",
    "crestereo_base",
    "crestereo_tiny",
    "linear_attention",
    "softmax_attention",
]


# --------------------------------------------------------------------------------------------------------------------
# Adaptive group correlation (paper sec. 3.1)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchWindow:
    """Candidates a left pixel is compared with, around the point its current flow lands on in the right image.

    ``size`` is (rows, columns) of the candidate grid, ``dilation`` the (y, x) step between candidates in pixels.
    Candidates are ordered row by row (y outer, x inner), which fixes the channel order of the correlation.
    """

    size: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)

    @property
    def num_candidates(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def radius(self) -> tuple[int, int]:
        """(y, x) distance in pixels from the centre to the outermost candidate."""
        return (self.size[0] // 2) * self.dilation[0], (self.size[1] // 2) * self.dilation[1]

    def offsets(self, device: torch.device) -> Tensor:
        """(K, 2) float32 candidate offsets (x, y) in pixels, in candidate order."""
        ry, rx = self.radius
        ys = torch.arange(-ry, ry + 1, self.dilation[0], device=device, dtype=torch.float32)
        xs = torch.arange(-rx, rx + 1, self.dilation[1], device=device, dtype=torch.float32)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


def _group_mean_product(left: Tensor, right: Tensor, groups: int) -> Tensor:
    """Mean over each channel group of left * right: (B, C, *S) x (B, C, *S) -> (B, groups, *S)."""
    b, c = left.shape[:2]
    product = (left * right).reshape(b, groups, c // groups, *left.shape[2:])
    return product.mean(dim=2)


def fixed_window_correlation(left: Tensor, right_warped: Tensor, *, groups: int, window: SearchWindow) -> Tensor:
    """Group-wise correlation over a fixed window around each pixel (the finest level's "iterative" mode).

    ``left`` and ``right_warped`` are (B, C, H, W), the right features already resampled at the current flow.
    Candidates outside the map repeat the border (replicate padding, as the original). Returns (B, groups * K, H, W),
    channel ``g * K + k`` = mean over group g's channels of left * (candidate k of right).
    """
    _, _, h, w = left.shape
    ry, rx = window.radius
    padded = F.pad(right_warped, (rx, rx, ry, ry), mode="replicate")
    dy, dx = window.dilation
    # One shifted view at a time keeps memory at one feature map instead of K.
    per_candidate = [
        _group_mean_product(left, padded[:, :, y : y + h, x : x + w], groups)
        for y in range(0, 2 * ry + 1, dy)
        for x in range(0, 2 * rx + 1, dx)
    ]
    b = left.shape[0]
    return torch.stack(per_candidate, dim=2).reshape(b, groups * window.num_candidates, h, w)


def fixed_window_correlation_fast(left: Tensor, right_warped: Tensor, *, groups: int, window: SearchWindow) -> Tensor:
    """``fixed_window_correlation`` computed on channels-last data (same values up to float rounding).

    With channels innermost, each candidate's group sums run over contiguous memory and every shifted view of the
    padded right map is a strided view, so a candidate costs one product and one reduction (the plain version also
    pays a ``fill``, a division and a channels-first reduction per candidate: about 4x slower on a CPU). The division
    by the group width happens once, on the stacked result. The backward pass is written out
    (``_WindowCorrelation``): autograd would differentiate every candidate's shifted view on its own, filling and
    adding a padded map of zeros per candidate. Returns a channels-last (B, groups * K, H, W) tensor in the plain
    version's channel order.
    """
    b, _, h, w = left.shape
    # (B, H, W, C) views: no copy when the inputs are channels-last.
    correlation = _WindowCorrelation.apply(left.permute(0, 2, 3, 1), right_warped.permute(0, 2, 3, 1), groups, window)
    return correlation.view(b, h, w, groups * window.num_candidates).permute(0, 3, 1, 2)  # channel g * K + k


def _replicate_pad_channels_last(x: Tensor, ry: int, rx: int) -> Tensor:
    """(B, H, W, C) -> (B, H + 2 ry, W + 2 rx, C), border pixels repeated (``F.pad(mode="replicate")`` for channels
    innermost; written out because inductor mis-strides ``replication_pad2d``'s backward on channels-last data)."""
    b, h, w, c = x.shape
    padded = x.new_empty(b, h + 2 * ry, w + 2 * rx, c)
    padded[:, ry : ry + h, rx : rx + w] = x
    padded[:, ry : ry + h, :rx] = x[:, :, :1]
    padded[:, ry : ry + h, rx + w :] = x[:, :, -1:]
    padded[:, :ry] = padded[:, ry : ry + 1]
    padded[:, ry + h :] = padded[:, ry + h - 1 : ry + h]
    return padded


class _WindowCorrelation(torch.autograd.Function):
    """Group correlation of ``left`` with the fixed-window candidates of ``right``, both (B, H, W, C) with channels
    innermost -> (B, H, W, groups, K), candidates outside the map replicating the border.

    Backward, with g = grad / group width: grad_left = sum over candidates of g_k * candidate k of right;
    grad_right: every candidate's g_k * left added into one padded map, whose border is then folded back onto the
    edge pixels it replicated. One padded map for all candidates instead of autograd's one per candidate.
    """

    @staticmethod
    def forward(ctx: Any, left: Tensor, right: Tensor, groups: int, window: SearchWindow) -> Tensor:
        b, h, w, c = left.shape
        ry, rx = window.radius
        dy, dx = window.dilation
        padded = _replicate_pad_channels_last(right, ry, rx)
        product = torch.empty_like(left)  # one buffer for every candidate's product
        per_candidate = []
        for y in range(0, 2 * ry + 1, dy):
            for x in range(0, 2 * rx + 1, dx):
                torch.mul(left, padded[:, y : y + h, x : x + w], out=product)
                per_candidate.append(product.view(b, h, w, groups, c // groups).sum(dim=-1))
        ctx.save_for_backward(left, padded)
        ctx.groups, ctx.window = groups, window
        return torch.stack(per_candidate, dim=-1).div_(c // groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        left, padded = ctx.saved_tensors
        groups, window = ctx.groups, ctx.window
        b, h, w, c = left.shape
        ry, rx = window.radius
        dy, dx = window.dilation
        grad = grad / (c // groups)  # (B, H, W, groups, K)
        grouped = (b, h, w, groups, c // groups)
        grad_left = torch.zeros_like(left)
        grad_padded = torch.zeros_like(padded)
        k = 0
        for y in range(0, 2 * ry + 1, dy):
            for x in range(0, 2 * rx + 1, dx):
                g = grad[..., k : k + 1]  # (B, H, W, groups, 1): the same for every channel of a group
                grad_left.view(grouped).addcmul_(g, padded[:, y : y + h, x : x + w].unflatten(-1, grouped[-2:]))
                grad_padded[:, y : y + h, x : x + w].unflatten(-1, grouped[-2:]).addcmul_(g, left.view(grouped))
                k += 1
        # Undo the replicate padding: columns first (the corners then sit in the edge rows), then rows.
        grad_padded[:, :, rx] += grad_padded[:, :, :rx].sum(dim=2)
        grad_padded[:, :, rx + w - 1] += grad_padded[:, :, rx + w :].sum(dim=2)
        inner = grad_padded[:, :, rx : rx + w]
        inner[:, ry] += inner[:, :ry].sum(dim=1)
        inner[:, ry + h - 1] += inner[:, ry + h :].sum(dim=1)
        return grad_left, inner[:, ry : ry + h], None, None


def deformable_window_correlation(
    left: Tensor,
    right: Tensor,
    flow: Tensor,
    extra_offsets: Tensor,
    *,
    groups: int,
    window: SearchWindow,
    fast: bool = False,
) -> Tensor:
    """Group-wise correlation over a window whose candidates are moved by learned offsets (deformable search).

    ``left``, ``right``: (B, C, H, W); ``flow``: (B, 2, H, W); ``extra_offsets``: (B, 2K, H, W) per-candidate (x, y)
    shifts in pixels, candidate-major. Right features are sampled bilinearly (zeros outside). Returns
    (B, groups * K, H, W) in the channel order of ``fixed_window_correlation``. ``fast``: the products and sums
    with a written-out backward (``_CandidateCorrelation``) for wide maps on a CPU, same values up to float rounding.
    """
    b, c, h, w = left.shape
    k = window.num_candidates
    offsets = window.offsets(left.device).view(1, k, 1, 1, 2)
    offsets = offsets + extra_offsets.reshape(b, k, 2, h, w).permute(0, 1, 3, 4, 2)  # (B, K, H, W, 2)
    centres = (coords_grid(b, h, w, device=left.device) + flow).permute(0, 2, 3, 1).unsqueeze(1)  # (B, 1, H, W, 2)
    # All K candidate maps come from one grid_sample call: stack them along the sampled rows.
    sampled = grid_sample_pixels(right, (centres + offsets).reshape(b, k * h, w, 2))  # (B, C, K*H, W)
    if fast and cpu_rewrite_applies(left, c):
        correlation = _CandidateCorrelation.apply(left, sampled.view(b, c, k, h, w), groups)
    else:
        sampled = sampled.reshape(b, groups, c // groups, k, h, w)
        correlation = (left.reshape(b, groups, c // groups, 1, h, w) * sampled).mean(dim=2)  # (B, groups, K, H, W)
    return correlation.reshape(b, groups * k, h, w)


class _CandidateCorrelation(torch.autograd.Function):
    """Group correlation of ``left`` (B, C, H, W) with K sampled candidates ``sampled`` (B, C, K, H, W) ->
    (B, groups, K, H, W), the mean over each group's channels of their products.

    Autograd's backward of ``(left * sampled).mean(dim=2)`` materialises the gradient of the mean at full size
    (B, C, K, H, W), divides it, multiplies it with ``sampled`` and copies it into ``grid_sample``'s layout. Written
    out, the gradient of the mean stays (B, groups, K, H, W) and each input's gradient is one broadcast product (the
    1/8 level of crestereo_base at 256x320: 34 -> 20 ms per update, forward and backward).
    """

    @staticmethod
    def forward(ctx: Any, left: Tensor, sampled: Tensor, groups: int) -> Tensor:
        b, c, k, h, w = sampled.shape
        ctx.shapes = left.shape, sampled.shape
        left = left.contiguous().view(b, groups, c // groups, 1, h * w)
        sampled = sampled.view(b, groups, c // groups, k, h * w)
        ctx.save_for_backward(left, sampled)
        return (left * sampled).sum(dim=2).div_(c // groups).view(b, groups, k, h, w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        left, sampled = ctx.saved_tensors
        left_shape, sampled_shape = ctx.shapes
        b, groups, width, k, hw = sampled.shape
        grad = grad.reshape(b, groups, 1, k, hw) / width
        grad_left = grad_sampled = None
        if ctx.needs_input_grad[0]:
            grad_left = (sampled * grad).sum(dim=3).view(left_shape).to(left.dtype)
        if ctx.needs_input_grad[1]:
            grad_sampled = (left * grad).view(sampled_shape).to(sampled.dtype)
        return grad_left, grad_sampled, None


def _sample_fast(image: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of ``image`` at pixel ``coords`` (B, h, w, 2) for the fast path's warp: the sparse-matrix
    sampler (``sample_pixels_channels_last``, channels-last out) for wide maps on a CPU (``cpu_rewrite_applies``),
    ``grid_sample`` (channels-first out) otherwise: on a GPU its kernels gather and scatter in parallel, and on narrow
    maps building the sparse matrix costs more than the sampling it speeds up."""
    if cpu_rewrite_applies(image, image.shape[1]):
        return sample_pixels_channels_last(image, coords)
    return grid_sample_pixels(image, coords)


class AttentionOffsetCorrelation(nn.Module):
    """Deformable-window correlation of a coarse level, optionally preceded by cross attention (``attention_module``).

    ``attend(left, right)`` applies the attention (features (B, C, H, W) in and out) and ``forward`` correlates already
    attended features; the model attends once per forward pass because the features do not change between updates.
    """

    def __init__(self, *, groups: int, attention_module: FeatureTransformer | None = None) -> None:
        super().__init__()
        self.groups = groups
        self.attention_module = attention_module

    def attend(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        if self.attention_module is None:
            return left, right
        return self.attention_module.forward_maps(left, right)

    def forward(
        self,
        left: Tensor,
        right: Tensor,
        flow: Tensor,
        extra_offsets: Tensor,
        window: SearchWindow,
        *,
        fast: bool = False,
    ) -> Tensor:
        return deformable_window_correlation(
            left, right, flow, extra_offsets, groups=self.groups, window=window, fast=fast
        )


class AdaptiveGroupCorrelation(nn.Module):
    """Adaptive group correlation of one pyramid level (paper sec. 3.1): no learned parameters except the optional
    cross attention of the deformable path.

    ``forward(left, right, flow, window, extra_offsets=None) -> (B, groups * K, H, W)``: with ``extra_offsets`` the
    deformable window (coarse levels), without them the right features are warped by ``flow`` and correlated over
    the fixed window (finest level). ``flow`` is in the network's convention (x = -disparity), in pixels of this level.
    """

    def __init__(self, *, groups: int, attention_module: FeatureTransformer | None = None) -> None:
        super().__init__()
        self.groups = groups
        # Nested as in torchvision's port: the published keys read
        # ``correlation_layers.1 / 16.attention_offset_correlation_layer.attention_module.*``.
        self.attention_offset_correlation_layer = AttentionOffsetCorrelation(
            groups=groups, attention_module=attention_module
        )

    def attend(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        return self.attention_offset_correlation_layer.attend(left, right)

    def forward(
        self,
        left: Tensor,
        right: Tensor,
        flow: Tensor,
        window: SearchWindow,
        extra_offsets: Tensor | None = None,
        *,
        fast: bool = False,
    ) -> Tensor:
        if extra_offsets is not None:
            return self.attention_offset_correlation_layer(left, right, flow, extra_offsets, window, fast=fast)
        b, _, h, w = left.shape
        coords = (coords_grid(b, h, w, device=left.device) + flow).permute(0, 2, 3, 1)  # (B, H, W, 2)
        if fast:
            right_warped = _sample_fast(right, coords)
            # The samples are float32 under autocast: one copy converts them (and grid_sample's channels-first
            # output), so that the memory-bound products and sums run on the features' own type (bf16 under
            # autocast: half the bytes; the CPU's bf16 sums accumulate in float32) instead of a mixed-type path.
            right_warped = right_warped.to(dtype=left.dtype, memory_format=torch.channels_last)
            return fixed_window_correlation_fast(
                to_channels_last(left), right_warped, groups=self.groups, window=window
            )
        return fixed_window_correlation(left, grid_sample_pixels(right, coords), groups=self.groups, window=window)


# --------------------------------------------------------------------------------------------------------------------
# Transformer (LoFTR-style linear attention, part of the adaptive group correlation) and positional encoding
# --------------------------------------------------------------------------------------------------------------------


def linear_attention(queries: Tensor, keys: Tensor, values: Tensor, eps: float = 1e-6) -> Tensor:
    """Linear attention (Katharopoulos et al. 2020) with the elu + 1 feature map.

    ``queries`` (B, L, heads, D), ``keys`` and ``values`` (B, S, heads, D) -> (B, L, heads, D). Cost is linear in the
    number of tokens: keys and values are summarised once into a (heads, D, D) matrix.
    """
    queries = F.elu(queries) + 1
    keys = F.elu(keys) + 1
    length = values.shape[1]
    # Dividing the values by S before the sum and multiplying back afterwards keeps fp16 sums in range (LoFTR's trick).
    values = values / length
    kv = torch.einsum("bshd,bshe->bhde", keys, values)
    normaliser = 1.0 / (torch.einsum("blhd,bhd->blh", queries, keys.sum(dim=1)) + eps)
    return torch.einsum("blhd,bhde,blh->blhe", queries, kv, normaliser) * length


def softmax_attention(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Full scaled dot-product attention; same shapes as ``linear_attention`` (quadratic in the number of tokens)."""
    out = F.scaled_dot_product_attention(queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
    return out.transpose(1, 2)


_ATTENTION_FUNCTIONS: dict[AttentionKind, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    AttentionKind.linear: linear_attention,
    AttentionKind.softmax: softmax_attention,
}


class FeatureTransformerLayer(nn.Module):
    """One LoFTR encoder layer: multi-head attention from ``x`` to ``source``, then a feed-forward net on
    concat(x, message); both outputs are layer-normed and the result is added to ``x`` (no bias anywhere).

    ``forward(x (B, L, dim), source (B, S, dim)) -> (B, L, dim)``.
    """

    def __init__(self, *, dim: int, num_heads: int, attention: AttentionKind = AttentionKind.linear) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"The transformer width {dim} must be divisible by num_attention_heads={num_heads}.")
        self.num_heads = num_heads
        self.attention = _ATTENTION_FUNCTIONS[AttentionKind(attention)]
        self.query_proj = nn.Linear(dim, dim, bias=False)
        self.key_proj = nn.Linear(dim, dim, bias=False)
        self.value_proj = nn.Linear(dim, dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.ffn = nn.Sequential(
            nn.Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(), nn.Linear(2 * dim, dim, bias=False)
        )
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, source: Tensor) -> Tensor:
        b, length, dim = x.shape
        heads = self.num_heads
        # Wide layers on a CPU run as oneDNN convolutions (``_linear``); the layer width decides for all of them.
        linear = partial(_linear, as_convolution=cpu_rewrite_applies(x, dim))
        queries = linear(self.query_proj, x).reshape(b, length, heads, dim // heads)
        keys = linear(self.key_proj, source).reshape(b, source.shape[1], heads, dim // heads)
        values = linear(self.value_proj, source).reshape(b, source.shape[1], heads, dim // heads)
        message = self.attention(queries, keys, values).reshape(b, length, dim)
        message = self.attention_norm(linear(self.merge, message))
        hidden = torch.relu(linear(self.ffn[0], torch.cat([x, message], dim=2)))
        message = self.ffn_norm(linear(self.ffn[2], hidden))
        return x + message


def _linear(layer: nn.Linear, x: Tensor, *, as_convolution: bool) -> Tensor:
    """``layer(x)`` for ``x`` (B, L, C). ``as_convolution`` (a bias-free layer): as a 1x1 convolution of the
    (B, C, L, 1) channels-last view of ``x`` (no copy), which runs on oneDNN on a CPU: torch's CPU matmul runs on MKL,
    which on AMD processors reaches about half of oneDNN's rate (256 -> 256 channels of 640 tokens, forward and
    backward, 2 cores: 1.2 vs 0.7 ms). Same sums in another order."""
    if not as_convolution or layer.bias is not None:
        return layer(x)
    as_map = x.unsqueeze(2).permute(0, 3, 1, 2)  # (B, C, L, 1), strides of channels-last memory
    return F.conv2d(as_map, layer.weight[:, :, None, None]).permute(0, 2, 3, 1).squeeze(2)


class FeatureTransformer(nn.Module):
    """A stack of ``FeatureTransformerLayer``: "self" layers attend each image to itself, "cross" layers each image
    to the other. ``forward(left (B, S, dim), right (B, S, dim)) -> (left, right)``.
    """

    def __init__(
        self, *, dim: int, num_heads: int, directions: Sequence[str], attention: AttentionKind = AttentionKind.linear
    ) -> None:
        super().__init__()
        for direction in directions:
            if direction not in ("self", "cross"):
                raise ValueError(f"Attention direction must be 'self' or 'cross'; got {direction!r}.")
        self.directions = list(directions)
        self.layers = nn.ModuleList(
            FeatureTransformerLayer(dim=dim, num_heads=num_heads, attention=attention) for _ in directions
        )

    def forward(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        for direction, layer in zip(self.directions, self.layers, strict=True):
            if direction == "self":
                left, right = layer(left, left), layer(right, right)
            else:
                left = layer(left, right)
                # The right update reads the *updated* left features, as in LoFTR and the original CREStereo.
                right = layer(right, left)
        return left, right

    def forward_maps(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` on feature maps (B, C, H, W): flattened to H*W tokens and back."""
        b, c, h, w = left.shape
        left, right = self(left.flatten(2).transpose(1, 2), right.flatten(2).transpose(1, 2))
        return left.transpose(1, 2).reshape(b, c, h, w), right.transpose(1, 2).reshape(b, c, h, w)


class PositionalEncodingSine(nn.Module):
    """Adds a fixed 2-D sine/cosine encoding to (B, dim, H, W) features, H and W up to ``max_size``.

    Channel 4i holds sin(x f_i), 4i+1 cos(x f_i), 4i+2 sin(y f_i), 4i+3 cos(y f_i), with 1-based pixel positions x, y
    and f_i = exp(-2i). Those frequencies are what the original code computes: its exponent is written
    ``-log(10000) / dim // 2``, which Python evaluates as ``(-log(10000) / dim) // 2 = -1``. The published weights
    were trained with them (and the checkpoints store the table as the ``pe`` buffer), so they are kept.
    """

    def __init__(self, dim: int, max_size: int = 256) -> None:
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"The positional encoding needs a channel count divisible by 4; got {dim}.")
        self.max_size = max_size
        positions = torch.arange(1, max_size + 1, dtype=torch.float32)
        frequencies = torch.exp(-torch.arange(0.0, dim // 2, 2.0))  # (dim / 4,)
        x_angles = frequencies[:, None, None] * positions[None, None, :]  # (dim/4, 1, max): varies along columns
        y_angles = frequencies[:, None, None] * positions[None, :, None]  # (dim/4, max, 1): varies along rows
        shape = (dim // 4, max_size, max_size)
        table = torch.stack(
            [
                torch.sin(x_angles).expand(shape),
                torch.cos(x_angles).expand(shape),
                torch.sin(y_angles).expand(shape),
                torch.cos(y_angles).expand(shape),
            ],
            dim=1,
        )  # (dim/4, 4, max, max): interleaves the four kinds channel by channel
        self.register_buffer("pe", table.reshape(1, dim, max_size, max_size))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return x + self.pe[:, :, :h, :w]


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


def _level_name(factor: int) -> str:
    # Keys of the published offset_convs / correlation_layers ModuleDicts.
    return f"1 / {factor}"


class CREStereo(nn.Module):
    """CREStereo on a 3-level pyramid (1/4 and the coarse levels given by ``feature_downsample_rates``).

    ``forward(left, right, flow_init=None, num_iters=10) -> list[Tensor]``: every update's prediction,
    (B, 1, H, W) positive disparity in pixels of the input, last = final. Inputs (B, 3, H, W) in [-1, 1], H and W
    multiples of ``size_multiple``. ``flow_init`` (optional): (B, 1, h, w) positive disparity in pixels of its own grid
    (any resolution with the input's aspect ratio, e.g. a coarser cascade level's result); it is resized bilinearly to
    the 1/4 grid and rescaled by the width ratio, and the model then refines at 1/4 only. A second channel, if given,
    is the vertical flow of a previous ``forward_flow``. Without ``flow_init``: ``num_iters // 2`` updates per coarse
    level, then ``num_iters`` at 1/4; with it: ``num_iters`` updates at 1/4.
    ``forward_flow`` (or ``forward(..., with_vertical=True)``) returns the same predictions with their vertical
    channel, (B, 2, H, W).

    Args:
        feature_encoder: shared image encoder; must expose ``output_dim`` and ``downsampling_factor``.
        update_block: motion encoder + recurrent block + flow head; exposes ``hidden_state_size``.
        mask_predictor: convex-upsampling mask logits from the hidden state, for factor ``downsampling_factor``.
        self_attention: transformer applied to the coarsest level's features.
        cross_attention: transformer applied before the coarsest level's correlation.
        positional_encoding: added to the coarsest level's features before self attention.
        feature_downsample_rates: average-pooling rates of the coarse levels relative to the encoder output.
        corr_groups: channel groups of the correlation (groups * candidates correlation channels).
        search_window_1d, search_window_2d: windows of even and odd updates.
        activation_checkpointing: recompute each recurrent update in the backward pass instead of storing its
            activations (training only; same numbers, less memory, about one more forward pass of compute).
        fast_paths: compute the recurrent updates the fast way (same numbers up to float rounding, checked in
            ``tests/test_fast_paths.py``; ``docs/PERFORMANCE.md`` says what each part buys): channels-last memory
            for the update block, mask predictor and offset convolutions; the context's share of the GRU gates
            computed once per level instead of at every update, and the z and r gates as one convolution
            (``UpdateBlock.context_gates``); the fixed-window correlation on channels-last data, after a warp of the
            right features that is a sparse matrix product on a CPU (``_sample_fast``). False runs the
            plain computation (the reference the fast paths are tested against). Needs a recurrent block with
            ``input_gates`` / ``forward_fast`` (``SeparableConvGRU``).
        channels_last: the fast paths' update block and mask predictor on channels-last maps (the features and the
            correlation always are); None = ``recurrent_channels_last`` of the hidden state's width (channels-last
            except for wide maps on a CPU without AVX-512).
    """

    def __init__(
        self,
        *,
        feature_encoder: nn.Module,
        update_block: UpdateBlock,
        mask_predictor: nn.Module,
        self_attention: FeatureTransformer,
        cross_attention: FeatureTransformer,
        positional_encoding: PositionalEncodingSine,
        feature_downsample_rates: Sequence[int] = (2, 4),
        corr_groups: int = 4,
        search_window_1d: SearchWindow = SearchWindow((1, 9)),
        search_window_2d: SearchWindow = SearchWindow((3, 3)),
        activation_checkpointing: bool = False,
        fast_paths: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        rates = list(feature_downsample_rates)  # CREStereoConfig checks the numbers this module is built from
        dim = feature_encoder.output_dim
        if fast_paths and not hasattr(update_block.recurrent_block, "forward_fast"):
            raise ValueError(
                f"model.fast_paths=true needs a recurrent block with input_gates/forward_fast (SeparableConvGRU); "
                f"got {type(update_block.recurrent_block).__name__}. Set model.fast_paths=false."
            )

        self.feature_encoder = feature_encoder
        self.update_block = update_block
        # torchvision's port also registers the update block's flow head at the top level, so the published files
        # hold its weights twice (``flow_head.*`` and ``update_block.flow_head.*``); the alias keeps strict loading.
        self.flow_head = update_block.flow_head
        self.self_attn_block = self_attention
        self.mask_predictor = mask_predictor

        self.base_factor: int = feature_encoder.downsampling_factor  # encoder output = 1 / base_factor
        self.rates = rates
        self.size_multiple: int = self.base_factor * rates[-1]  # every pyramid level must have whole pixels
        self.hidden_size: int = update_block.hidden_state_size
        self.windows = (search_window_1d, search_window_2d)  # used by even and odd updates
        self.activation_checkpointing = activation_checkpointing
        self.fast_paths = fast_paths
        self._compiled_refine_step: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None  # compile_updates
        self._compile_in_eval = False

        # Coarse levels, coarsest first; only the coarsest one cross-attends.
        k = search_window_1d.num_candidates
        self.offset_convs = nn.ModuleDict()
        self.correlation_layers = nn.ModuleDict()
        for rate in reversed(rates):
            name = _level_name(self.base_factor * rate)
            # A Sequential around the conv because the published key is ``offset_convs.1 / 16.0.weight``.
            self.offset_convs[name] = nn.Sequential(nn.Conv2d(dim, 2 * k, kernel_size=3, padding=1))
            self.correlation_layers[name] = AdaptiveGroupCorrelation(
                groups=corr_groups, attention_module=cross_attention if rate == rates[-1] else None
            )
        self.max_res_correlation_layer = AdaptiveGroupCorrelation(groups=corr_groups)
        # Registered last to keep the published files' key order.
        self.positional_encodings = positional_encoding
        if channels_last is None:
            channels_last = recurrent_channels_last(self.hidden_size)
        self.channels_last = fast_paths and channels_last
        if fast_paths:
            # The correlations run on channels-last features (see ``forward_flow``), and so do the update block and
            # mask predictor with ``channels_last``; kernels in the maps' order save oneDNN a reorder per call. The
            # encoder stays channels-first: its instance norms are faster there. Only strides change: the
            # state_dict's keys, shapes and values are the published ones.
            parts = (self.update_block, self.mask_predictor) if self.channels_last else ()
            for part in (*parts, self.offset_convs):
                part.to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------------------------------------------------------
    def forward(
        self,
        left: Tensor,
        right: Tensor,
        flow_init: Tensor | None = None,
        num_iters: int = 10,
        *,
        with_vertical: bool = False,
    ) -> list[Tensor]:
        # with_vertical: the (B, 2, H, W) predictions of forward_flow, through forward so that a DDP wrapper sees
        # the call (training with loss.vertical supervises the vertical channel).
        flows = self.forward_flow(left, right, flow_init, num_iters)
        return flows if with_vertical else [flow[:, :1] for flow in flows]

    def forward_flow(
        self, left: Tensor, right: Tensor, flow_init: Tensor | None = None, num_iters: int = 10
    ) -> list[Tensor]:
        """Like ``forward`` but every prediction is (B, 2, H, W): channel 0 positive disparity, channel 1 the vertical
        flow (torchvision's output convention). Used by the cascade to carry the vertical component between levels
        exactly as torchvision's ``cascade_evaluation`` does."""
        self._check_inputs(left, right, flow_init, num_iters)
        features = self.feature_encoder(torch.cat([left, right], dim=0))
        if self.fast_paths:
            features = to_channels_last(features)
        left_features, right_features = features.chunk(2, dim=0)  # (B, C, H/4, W/4)
        hidden, context = torch.split(left_features, [self.hidden_size, features.shape[1] - self.hidden_size], dim=1)
        hidden, context = (tanh_fast(hidden) if self.fast_paths else torch.tanh(hidden)), torch.relu(context)

        if flow_init is None:
            predictions, flow = self._coarse_levels(left_features, right_features, hidden, context, num_iters)
        else:
            predictions, flow = [], self._flow_from_init(flow_init, left_features.shape[-2:])

        context = self._context_input(context)
        for it in range(num_iters):
            # Each update starts from a constant: no gradient flows through earlier flow estimates (as in RAFT).
            hidden, flow, flow_up = self._refine(
                self.max_res_correlation_layer,
                left_features,
                right_features,
                hidden,
                context,
                flow.detach(),
                self.windows[it % 2],
                None,
            )
            predictions.append(-flow_up)
        return predictions

    # ---------------------------------------------------------------------------------------------------------------
    def _coarse_levels(
        self, left: Tensor, right: Tensor, hidden: Tensor, context: Tensor, num_iters: int
    ) -> tuple[list[Tensor], Tensor]:
        """Updates at the coarse levels, coarsest first. Returns their full-resolution predictions and the flow
        (B, 2, H/4, W/4) the finest level starts from."""
        predictions: list[Tensor] = []
        prior: Tensor | None = None  # last convex-upsampled flow of the previous level
        coarsest = self.rates[-1]
        for rate in reversed(self.rates):
            name = _level_name(self.base_factor * rate)
            left_l, right_l = F.avg_pool2d(left, rate), F.avg_pool2d(right, rate)
            hidden_l, context_l = F.avg_pool2d(hidden, rate), F.avg_pool2d(context, rate)
            # Offsets come from the plain pooled features, before any encoding or attention.
            offsets = (torch.sigmoid(self.offset_convs[name](left_l)) - 0.5) * 2.0  # (B, 2K, h, w) in [-1, 1] px
            if rate == coarsest:
                left_l, right_l = self.positional_encodings(left_l), self.positional_encodings(right_l)
                left_l, right_l = self.self_attn_block.forward_maps(left_l, right_l)
            correlation = self.correlation_layers[name]
            left_l, right_l = correlation.attend(left_l, right_l)

            flow = self._resample_flow(prior, left_l)
            context_l = self._context_input(context_l)
            for it in range(num_iters // 2):
                hidden_l, flow, prior = self._refine(
                    correlation, left_l, right_l, hidden_l, context_l, flow.detach(), self.windows[it % 2], offsets
                )
                predictions.append(-upsample_flow(prior, None, factor=rate))  # bilinear to full resolution
        return predictions, self._resample_flow(prior, left)

    @staticmethod
    def _resample_flow(prior: Tensor | None, features: Tensor) -> Tensor:
        """The starting flow (B, 2, h, w) of the level whose features are ``features`` (B, C, h, w), from the previous
        level's convex-upsampled flow ``prior`` (zeros if there is none).

        The result is *minus* the rescaled prior although every level uses the same flow convention. That looks like
        a slip, but it is in the original code (megvii-research/CREStereo ``nets/crestereo.py``) and in torchvision's
        port, and the published weights were trained and evaluated with it, so it is kept.
        """
        b, _, h, w = features.shape
        if prior is None:  # coarsest level, or no coarse updates at all (num_iters < 2)
            return torch.zeros(b, 2, h, w, device=features.device, dtype=features.dtype)
        return -(w / prior.shape[-1]) * F.interpolate(prior, size=(h, w), mode="bilinear", align_corners=True)

    def _flow_from_init(self, flow_init: Tensor, size: torch.Size) -> Tensor:
        """(B, 1|2, h, w) prediction-convention flow_init -> (B, 2, H/4, W/4) network-convention flow."""
        if flow_init.shape[1] == 1:
            flow_init = torch.cat([flow_init, torch.zeros_like(flow_init)], dim=1)
        scale = size[1] / flow_init.shape[-1]
        return -scale * F.interpolate(flow_init, size=tuple(size), mode="bilinear", align_corners=True)

    def _context_input(self, context: Tensor) -> Any:
        """What the updates of one level read of the context (B, Cc, h, w): the context itself, or on the fast path
        its share of the GRU gates, the same for every update of the level (``UpdateBlock.context_gates``)."""
        if not self.fast_paths:
            return context
        return self.update_block.context_gates(context if self.channels_last else context.contiguous())

    def _refine(
        self,
        correlation: AdaptiveGroupCorrelation,
        left: Tensor,
        right: Tensor,
        hidden: Tensor,
        context: Any,
        flow: Tensor,
        window: SearchWindow,
        offsets: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One recurrent update at one level: (hidden, flow, flow convex-upsampled by ``base_factor``). ``context``
        comes from ``_context_input``."""
        step = self._refine_step
        if self._compiled_refine_step is not None and (self.training or self._compile_in_eval):
            step = self._compiled_refine_step
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            arguments = (correlation, left, right, hidden, context, flow, window, offsets)
            return checkpoint(step, *arguments, use_reentrant=False)
        return step(correlation, left, right, hidden, context, flow, window, offsets)

    def compile_updates(self, *, in_eval: bool = False, **options: Any) -> None:
        """Run every recurrent update through ``torch.compile(self._refine_step, **options)`` in training mode (and
        in eval mode with ``in_eval``): regional compilation. One update is the same code ``num_iters`` times per
        level, so a few compiled graphs (per level and window) serve every update, where compiling the whole
        unrolled forward pass would take many times longer to build. Same numbers up to float rounding
        (``tests/test_speed.py``); ``stereo_exp.models.speed.prepare_for_training`` calls it (``speed.compile``)."""
        self._compiled_refine_step = torch.compile(self._refine_step, **options)
        self._compile_in_eval = in_eval

    def _refine_step(
        self,
        correlation: AdaptiveGroupCorrelation,
        left: Tensor,
        right: Tensor,
        hidden: Tensor,
        context: Any,
        flow: Tensor,
        window: SearchWindow,
        offsets: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        corr = correlation(left, right, flow, window, offsets, fast=self.fast_paths)  # (B, groups * K, h, w)
        if self.fast_paths:
            if self.channels_last:  # the correlation and the hidden state are channels-last already
                flow = to_channels_last(flow)
            else:
                corr, hidden, flow = corr.contiguous(), hidden.contiguous(), flow.contiguous()
            hidden, delta_flow = self.update_block.forward_fast(hidden, context, corr, flow)
        else:
            hidden, delta_flow = self.update_block(hidden, context, corr, flow)
        mask = self.mask_predictor(hidden)
        flow = flow + delta_flow
        return hidden, flow, convex_upsample(flow, mask, self.base_factor)

    def _check_inputs(self, left: Tensor, right: Tensor, flow_init: Tensor | None, num_iters: int) -> None:
        if left.ndim != 4 or left.shape != right.shape or left.shape[1] != 3:
            raise ValueError(
                f"CREStereo expects left and right images of the same shape (B, 3, H, W); got left "
                f"{tuple(left.shape)} and right {tuple(right.shape)}."
            )
        h, w = left.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"CREStereo needs H and W to be multiples of model.size_multiple={m}; got left {tuple(left.shape)}, "
                f"right {tuple(right.shape)}. Pad the inputs (stereo_exp.models.inference.predict_disparity does)."
            )
        coarsest = self.size_multiple
        if max(h, w) // coarsest > self.positional_encodings.max_size:
            raise ValueError(
                f"Input {h}x{w} is too large for the positional encoding table: its coarsest level "
                f"{h // coarsest}x{w // coarsest} exceeds positional_encoding_max_size="
                f"{self.positional_encodings.max_size}. Raise that model key (it changes the checkpoint layout) or "
                "downscale the input."
            )
        if num_iters < 1:
            raise ValueError(f"num_iters must be >= 1; got {num_iters}.")
        if flow_init is not None and (
            flow_init.ndim != 4 or flow_init.shape[0] != left.shape[0] or flow_init.shape[1] not in (1, 2)
        ):
            raise ValueError(
                f"flow_init must be (B, 1, h, w) positive disparity (or (B, 2, h, w) with vertical flow) with "
                f"B={left.shape[0]}; got {tuple(flow_init.shape)}."
            )


# --------------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------------


_NORM_LAYERS: dict[FeatureNorm, Callable[[int], nn.Module] | None] = {
    FeatureNorm.instance: nn.InstanceNorm2d,
    FeatureNorm.batch: nn.BatchNorm2d,
    FeatureNorm.none: None,
}


def crestereo(config: CREStereoConfig) -> CREStereo:
    """The CREStereo network ``config`` describes, randomly initialised (``CREStereoConfig`` checked the numbers)."""
    window_1d = SearchWindow(tuple(config.corr_search_window_1d), tuple(config.corr_search_dilate_1d))  # type: ignore[arg-type]
    window_2d = SearchWindow(tuple(config.corr_search_window_2d), tuple(config.corr_search_dilate_2d))  # type: ignore[arg-type]
    feature_encoder = FeatureEncoder(
        block=partial(ResidualBlock, always_project=True),  # CREStereo projects the shortcut of every block
        layers=tuple(config.feature_encoder_layers),
        strides=tuple(config.feature_encoder_strides),
        norm_layer=_NORM_LAYERS[config.feature_encoder_norm],
    )
    dim = feature_encoder.output_dim
    hidden_size = config.recurrent_block_hidden_state_size
    motion_encoder = MotionEncoder(
        in_channels_corr=config.corr_groups * window_1d.num_candidates,
        corr_layers=tuple(config.motion_encoder_corr_layers),
        flow_layers=tuple(config.motion_encoder_flow_layers),
        out_channels=config.motion_encoder_out_channels,
    )
    recurrent_block = SeparableConvGRU(
        input_size=motion_encoder.out_channels + dim - hidden_size,  # motion features + context
        hidden_size=hidden_size,
        kernel_length=config.recurrent_block_kernel_length,
    )
    flow_head = FlowHead(in_channels=hidden_size, hidden_size=config.flow_head_hidden_size)
    update_block = UpdateBlock(motion_encoder=motion_encoder, recurrent_block=recurrent_block, flow_head=flow_head)
    mask_predictor = ConvexMaskPredictor(
        in_channels=hidden_size,
        hidden_size=config.mask_predictor_hidden_size,
        upsample_factor=feature_encoder.downsampling_factor,
    )
    transformer = partial(FeatureTransformer, dim=dim, num_heads=config.num_attention_heads, attention=config.attention)
    return CREStereo(
        feature_encoder=feature_encoder,
        update_block=update_block,
        mask_predictor=mask_predictor,
        self_attention=transformer(directions=["self"] * config.num_self_attention_layers),
        cross_attention=transformer(directions=["cross"] * config.num_cross_attention_layers),
        positional_encoding=PositionalEncodingSine(dim, max_size=config.positional_encoding_max_size),
        feature_downsample_rates=tuple(config.feature_downsample_rates),
        corr_groups=config.corr_groups,
        search_window_1d=window_1d,
        search_window_2d=window_2d,
        activation_checkpointing=config.activation_checkpointing,
        fast_paths=config.fast_paths,
        channels_last=config.channels_last,
    )


def crestereo_base(**overrides: Any) -> CREStereo:
    """CREStereo as published (5,432,948 parameters; weights: ``stereo_exp.models.weights.CREStereo_Base_Weights``);
    ``overrides`` replace fields of ``CREStereoConfig`` (``weights="MEGVII_V1"`` loads those)."""
    return build_model(model_config("crestereo_base", overrides))  # type: ignore[return-value]


def crestereo_tiny(**overrides: Any) -> CREStereo:
    """``CRESTEREO_TINY`` (stereo_exp/models/config.py): same structure and forward semantics as ``crestereo_base``
    with about a fifth of the channels; ``overrides`` as for ``crestereo_base``."""
    return build_model(model_config("crestereo_tiny", overrides))  # type: ignore[return-value]
