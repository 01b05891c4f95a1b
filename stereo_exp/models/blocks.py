"""Building blocks shared by the RAFT family of stereo networks (RAFT-Stereo and CREStereo).

Every block keeps the attribute names of torchvision's optical-flow RAFT and its stereo prototypes, because those
names are the state_dict keys of the published checkpoints (``stereo_exp/testing/weights-layout/*.tsv``):
``convnormrelu1.0.weight`` is the convolution of a residual block, ``convnormrelu1.1.*`` its norm layer.
Renaming an attribute here breaks loading of every published weight file.

Conventions used in the docstrings: images and feature maps are (B, C, H, W); a *flow* is (B, 2, H, W) with channel
0 the x-displacement and channel 1 the y-displacement, in pixels of the map it lives on; coordinates are absolute pixel
positions (x, y), not the [-1, 1] coordinates of ``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

# A norm layer is built from its channel count: nn.BatchNorm2d, nn.InstanceNorm2d (no parameters), or None.
NormLayer = Callable[[int], nn.Module]

__all__ = [
    "BaseEncoder",
    "BottleneckBlock",
    "ConvGRU",
    "ConvexMaskPredictor",
    "FastGates",
    "FeatureEncoder",
    "FlowHead",
    "MaskPredictor",
    "MotionEncoder",
    "NormLayer",
    "ResidualBlock",
    "SeparableConvGRU",
    "UpdateBlock",
    "convex_upsample",
    "coords_grid",
    "cpu_rewrite_applies",
    "grid_sample_pixels",
    "memory_format_of",
    "recurrent_channels_last",
    "sample_pixels_channels_last",
    "swap_height_width",
    "tanh_fast",
    "to_channels_last",
    "upsample_flow",
]


# --------------------------------------------------------------------------------------------------------------------
# Residual blocks and encoders
# --------------------------------------------------------------------------------------------------------------------


def _conv_norm_relu(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    stride: int = 1,
    norm_layer: NormLayer | None,
    relu: bool = True,
) -> Conv2dNormActivation:
    # bias=True even in front of a norm layer: the published weights have conv biases (RAFT trains its BatchNorm only
    # on the first dataset and then freezes it, so the bias keeps being useful afterwards).
    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        norm_layer=norm_layer,
        activation_layer=nn.ReLU if relu else None,
        bias=True,
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-norm-ReLU layers plus a shortcut, followed by a ReLU (RAFT's variant of the ResNet basic block).

    (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride). The shortcut is the identity when the shape
    is unchanged, else a 1x1 conv-norm (``downsample``); ``always_project=True`` uses the 1x1 projection even at
    stride 1 (CREStereo's layout has one in every block).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm_layer: NormLayer | None,
        stride: int = 1,
        always_project: bool = False,
    ) -> None:
        super().__init__()
        self.convnormrelu1 = _conv_norm_relu(
            in_channels, out_channels, kernel_size=3, stride=stride, norm_layer=norm_layer
        )
        self.convnormrelu2 = _conv_norm_relu(out_channels, out_channels, kernel_size=3, norm_layer=norm_layer)
        self.downsample: nn.Module
        if stride == 1 and in_channels == out_channels and not always_project:
            self.downsample = nn.Identity()
        else:
            self.downsample = _conv_norm_relu(
                in_channels, out_channels, kernel_size=1, stride=stride, norm_layer=norm_layer, relu=False
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.convnormrelu2(self.convnormrelu1(x))
        return self.relu(self.downsample(x) + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 conv-norm-ReLU with out_channels // 4 inside, a shortcut and a final ReLU.

    (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride); the shortcut is a 1x1 conv-norm when the
    shape changes (RAFT-small's encoder block).
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm_layer: NormLayer | None, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 4
        self.convnormrelu1 = _conv_norm_relu(in_channels, mid, kernel_size=1, norm_layer=norm_layer)
        self.convnormrelu2 = _conv_norm_relu(mid, mid, kernel_size=3, stride=stride, norm_layer=norm_layer)
        self.convnormrelu3 = _conv_norm_relu(mid, out_channels, kernel_size=1, norm_layer=norm_layer)
        self.downsample: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.downsample = nn.Identity()
        else:
            self.downsample = _conv_norm_relu(
                in_channels, out_channels, kernel_size=1, stride=stride, norm_layer=norm_layer, relu=False
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.convnormrelu3(self.convnormrelu2(self.convnormrelu1(x)))
        return self.relu(self.downsample(x) + y)


class BaseEncoder(nn.Module):
    """Convolutional backbone: a 7x7 conv-norm-ReLU stem and three stages of two blocks each.

    (B, 3, H, W) -> (B, layers[3], H / f, W / f) with ``f = downsampling_factor = prod(strides)``; ``strides[0]`` is
    the stem's stride and ``strides[1:]`` those of the first block of each stage. RAFT-Stereo base uses strides
    (1, 1, 2, 2) (f = 4), the realtime variant and RAFT (2, 1, 2, 2) (f = 8). Exposes ``output_dim`` and
    ``downsampling_factor``.
    """

    def __init__(
        self,
        *,
        block: Callable[..., nn.Module] = ResidualBlock,
        layers: Sequence[int] = (64, 64, 96, 128),
        strides: Sequence[int] = (2, 1, 2, 2),
        norm_layer: NormLayer | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(strides) != 4:
            raise ValueError(f"BaseEncoder expects 4 layer widths and 4 strides, got layers={layers} strides={strides}")
        self.convnormrelu = _conv_norm_relu(3, layers[0], kernel_size=7, stride=strides[0], norm_layer=norm_layer)
        self.layer1 = self._stage(block, layers[0], layers[1], strides[1], norm_layer)
        self.layer2 = self._stage(block, layers[1], layers[2], strides[2], norm_layer)
        self.layer3 = self._stage(block, layers[2], layers[3], strides[3], norm_layer)
        self.output_dim = layers[3]
        self.downsampling_factor = strides[0] * strides[1] * strides[2] * strides[3]
        _init_encoder_weights(self)

    @staticmethod
    def _stage(
        block: Callable[..., nn.Module], in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer | None
    ) -> nn.Sequential:
        return nn.Sequential(
            block(in_channels, out_channels, norm_layer=norm_layer, stride=stride),
            block(out_channels, out_channels, norm_layer=norm_layer, stride=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer3(self.layer2(self.layer1(self.convnormrelu(x))))


class FeatureEncoder(BaseEncoder):
    """``BaseEncoder`` followed by a 1x1 projection ``conv`` to ``output_dim`` channels (RAFT's and CREStereo's).

    (B, 3, H, W) -> (B, output_dim, H / f, W / f), f = ``downsampling_factor``. ``layers`` has 5 entries: the four
    backbone widths and the output width.
    """

    def __init__(
        self,
        *,
        block: Callable[..., nn.Module] = ResidualBlock,
        layers: Sequence[int] = (64, 64, 96, 128, 256),
        strides: Sequence[int] = (2, 1, 2, 2),
        norm_layer: NormLayer | None = nn.BatchNorm2d,
    ) -> None:
        if len(layers) != 5:
            raise ValueError(f"FeatureEncoder expects 5 layer widths (4 backbone + output), got {layers}")
        super().__init__(block=block, layers=layers[:4], strides=strides, norm_layer=norm_layer)
        self.conv = nn.Conv2d(layers[3], layers[4], kernel_size=1)
        self.output_dim = layers[4]
        _init_encoder_weights(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(super().forward(x))


def _init_encoder_weights(module: nn.Module) -> None:
    # He initialisation of convolutions and unit/zero norms, as RAFT does for its encoders.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------------
# Recurrent update: motion encoder, GRUs, heads
# --------------------------------------------------------------------------------------------------------------------


class MotionEncoder(nn.Module):
    """Encodes the current flow and the correlation features looked up around it.

    ``forward(flow (B, flow_channels, H, W), corr (B, in_channels_corr, H, W)) -> (B, out_channels, H, W)``: the last
    ``flow_channels`` output channels are the input flow itself, the others the encoded features.
    ``corr_layers`` has 1 or 2 widths (1x1 then 3x3 convs), ``flow_layers`` 2 widths (7x7 then 3x3 convs).
    """

    def __init__(
        self,
        *,
        in_channels_corr: int,
        corr_layers: Sequence[int] = (256, 192),
        flow_layers: Sequence[int] = (128, 64),
        out_channels: int = 128,
        flow_channels: int = 2,
    ) -> None:
        super().__init__()
        if len(corr_layers) not in (1, 2) or len(flow_layers) != 2:
            raise ValueError(
                f"MotionEncoder expects 1-2 corr_layers and 2 flow_layers, got {corr_layers} {flow_layers}"
            )
        self.convcorr1 = _conv_norm_relu(in_channels_corr, corr_layers[0], kernel_size=1, norm_layer=None)
        self.convcorr2: nn.Module = (
            _conv_norm_relu(corr_layers[0], corr_layers[1], kernel_size=3, norm_layer=None)
            if len(corr_layers) == 2
            else nn.Identity()
        )
        self.convflow1 = _conv_norm_relu(flow_channels, flow_layers[0], kernel_size=7, norm_layer=None)
        self.convflow2 = _conv_norm_relu(flow_layers[0], flow_layers[1], kernel_size=3, norm_layer=None)
        self.conv = _conv_norm_relu(
            corr_layers[-1] + flow_layers[-1], out_channels - flow_channels, kernel_size=3, norm_layer=None
        )
        self.out_channels = out_channels

    def forward(self, flow: Tensor, corr_features: Tensor) -> Tensor:
        corr = self.convcorr2(self.convcorr1(corr_features))
        motion = self.convflow2(self.convflow1(flow))
        features = self.conv(torch.cat([corr, motion], dim=1))
        return torch.cat([features, flow], dim=1)


class ConvGRU(nn.Module):
    """Convolutional GRU cell: ``forward(h (B, hidden_size, H, W), x (B, input_size, H, W)) -> new h``.

    ``context`` optionally holds three precomputed maps (B, hidden_size, H, W) added to the z, r and q gate
    pre-activations (RAFT-Stereo convolves the context once per image instead of at every iteration).
    """

    def __init__(
        self,
        *,
        input_size: int,
        hidden_size: int,
        kernel_size: int | tuple[int, int] = 3,
        padding: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        channels = hidden_size + input_size
        self.convz = nn.Conv2d(channels, hidden_size, kernel_size=kernel_size, padding=padding)
        self.convr = nn.Conv2d(channels, hidden_size, kernel_size=kernel_size, padding=padding)
        self.convq = nn.Conv2d(channels, hidden_size, kernel_size=kernel_size, padding=padding)
        self.hidden_size = hidden_size

    def forward(self, h: Tensor, x: Tensor, context: Sequence[Tensor] | None = None) -> Tensor:
        hx = torch.cat([h, x], dim=1)
        z_in, r_in = self.convz(hx), self.convr(hx)
        if context is not None:
            z_in, r_in = z_in + context[0], r_in + context[1]
        z = torch.sigmoid(z_in)
        r = torch.sigmoid(r_in)
        q_in = self.convq(torch.cat([r * h, x], dim=1))
        if context is not None:
            q_in = q_in + context[2]
        return (1 - z) * h + z * torch.tanh(q_in)

    # Fast path (same numbers as ``forward`` up to float rounding; ``tests/test_fast_paths.py``). A convolution is
    # linear in its input channels, so the gates' pre-activations split into a part from input channels that stay
    # the same across recurrent updates (computed once, ``input_gates``) and a part from those that change
    # (``forward_fast``), and the z and r convolutions, which read the same input, run as one convolution. Everything
    # that does not change between updates (those static gates, split into z|r and q, and the kernels of the changing
    # channels) is prepared once per image and level (``FastGates``): each update then only convolves, and autograd
    # differentiates the slicing and concatenation of kernels and gates once instead of at every update.

    def gate_biases(self) -> Tensor:
        """The z, r, q biases as one (1, 3 * hidden_size, 1, 1) tensor, to add to precomputed gates."""
        return torch.cat([self.convz.bias, self.convr.bias, self.convq.bias]).view(1, -1, 1, 1)

    def fast_gates(self, gates: Tensor, static_channels: int = 0, *, transposed: bool = False) -> FastGates:
        """What ``forward_fast`` reads, from ``gates`` (B, 3 * hidden_size, H, W): the z, r, q pre-activations
        (biases included) of the first ``static_channels`` input channels, the same for every update.
        ``transposed``: the maps are (B, C, W, H), height and width swapped (``swap_height_width``), and the kernels
        are swapped to match."""
        n = self.hidden_size

        def dynamic_weight(conv: nn.Conv2d) -> Tensor:  # the kernels of h's and the changing input channels
            return torch.cat([conv.weight[:, :n], conv.weight[:, n + static_channels :]], dim=1)

        if static_channels == 0 and not transposed:
            # convq's weight is used as it is; passing the parameter itself around would make it an input of the
            # update block, which module hooks (e.g. FlopCounterMode's) cannot follow under inference mode.
            zr_weight, q_weight = torch.cat([self.convz.weight, self.convr.weight]), None
        else:
            zr_weight = torch.cat([dynamic_weight(self.convz), dynamic_weight(self.convr)])
            q_weight = dynamic_weight(self.convq)
        if transposed:
            zr_weight, q_weight = _transpose_kernel(zr_weight), _transpose_kernel(q_weight)
        zr, q = gates.split([2 * n, n], dim=1)
        layout = memory_format_of(gates)  # that of the maps the updates convolve (the model's recurrent layout)
        return FastGates(
            # Contiguous once here: every update adds them to a fresh convolution output of the same layout.
            zr=zr.contiguous(memory_format=layout),
            q=q.contiguous(memory_format=layout),
            zr_weight=zr_weight,
            q_weight=q_weight,
            static_channels=static_channels,
            transposed=transposed,
        )

    def input_gates(self, static: Tensor, *, transposed: bool = False) -> FastGates:
        """``fast_gates`` of ``static`` (B, S, H, W), the first S channels of every ``x`` this cell will read; pass
        the result to ``forward_fast`` with the remaining channels. ``transposed``: ``static`` is (B, S, W, H) and
        so will be every ``h`` and ``x`` passed with the result."""
        n, s = self.hidden_size, static.shape[1]
        weight = torch.cat([conv.weight[:, n : n + s] for conv in (self.convz, self.convr, self.convq)])
        weight = _transpose_kernel(weight) if transposed else weight
        gates = F.conv2d(static, weight, self.gate_biases().flatten(), padding=self._padding(transposed))
        return self.fast_gates(gates, s, transposed=transposed)

    def _padding(self, transposed: bool) -> tuple[int, int]:
        """The gate convolutions' padding, height and width swapped for transposed maps."""
        ph, pw = self.convz.padding
        return (pw, ph) if transposed else (ph, pw)

    def forward_fast(self, h: Tensor, x: Tensor, gates: FastGates) -> Tensor:
        """``forward(h, cat([static, x]))`` for ``gates = input_gates(static)`` (S >= 0 static channels), or
        RAFT-Stereo's ``forward(h, x, context)`` for ``gates = fast_gates(cat(context) + gate_biases())``."""
        n = self.hidden_size
        if self.convz.in_channels != n + gates.static_channels + x.shape[1]:
            raise ValueError(
                f"ConvGRU.forward_fast: {gates.static_channels} static + {x.shape[1]} input channels != the cell's "
                f"{self.convz.in_channels - n}."
            )
        padding = self._padding(gates.transposed)
        zr = torch.sigmoid(F.conv2d(torch.cat([h, x], dim=1), gates.zr_weight, padding=padding) + gates.zr)
        z, r = zr.split(n, dim=1)
        q_weight = self.convq.weight if gates.q_weight is None else gates.q_weight
        q_in = F.conv2d(torch.cat([r * h, x], dim=1), q_weight, padding=padding)
        q = tanh_fast(q_in + gates.q)
        return h + z * (q - h)


def _transpose_kernel(weight: Tensor) -> Tensor:
    """(O, I, kh, kw) -> (O, I, kw, kh), contiguous: torch's slow_conv2d (chosen for some small maps) refuses the
    gradient of a transposed view, and of a channels-last (O, I, 1, k) kernel, as not contiguous."""
    return weight.transpose(2, 3).contiguous()


class FastGates(NamedTuple):
    """One ``ConvGRU``'s inputs that stay the same across the recurrent updates of one image and level
    (``ConvGRU.fast_gates``)."""

    zr: Tensor  # (B, 2 * hidden, H, W) z and r pre-activations of the static input channels and the biases
    q: Tensor  # (B, hidden, H, W) the same for q
    zr_weight: Tensor  # (2 * hidden, hidden + dynamic channels, kh, kw) z and r kernels of h and the changing channels
    q_weight: Tensor | None  # (hidden, hidden + dynamic channels, kh, kw) q kernels; None: all of convq's (S = 0)
    static_channels: int  # input channels folded into zr and q
    transposed: bool  # maps and kernels with height and width swapped (``SeparableConvGRU.forward_fast``)


class SeparableConvGRU(nn.Module):
    """Two ConvGRU cells applied in turn: a horizontal (1 x k) then a vertical (k x 1) one (RAFT's recurrent block).

    ``forward(h (B, hidden_size, H, W), x (B, input_size, H, W)) -> new h``. Exposes ``hidden_size``.
    """

    def __init__(self, *, input_size: int, hidden_size: int, kernel_length: int = 5) -> None:
        super().__init__()
        pad = kernel_length // 2
        self.convgru1 = ConvGRU(
            input_size=input_size, hidden_size=hidden_size, kernel_size=(1, kernel_length), padding=(0, pad)
        )
        self.convgru2 = ConvGRU(
            input_size=input_size, hidden_size=hidden_size, kernel_size=(kernel_length, 1), padding=(pad, 0)
        )
        self.hidden_size = hidden_size

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.convgru2(self.convgru1(h, x), x)

    def input_gates(self, static: Tensor) -> tuple[FastGates, FastGates]:
        """Both cells' ``ConvGRU.input_gates`` for the leading input channels ``static``. On a CPU the vertical
        cell's are transposed for a wide channels-last hidden state (``forward_fast``, ``cpu_rewrite_applies``)."""
        if cpu_rewrite_applies(static, self.hidden_size) and memory_format_of(static) == torch.channels_last:
            vertical = self.convgru2.input_gates(swap_height_width(static), transposed=True)
        else:
            vertical = self.convgru2.input_gates(static)
        return self.convgru1.input_gates(static), vertical

    def forward_fast(self, h: Tensor, x: Tensor, gates: tuple[FastGates, FastGates]) -> Tensor:
        """``forward(h, cat([static, x]))`` for ``gates = input_gates(static)``.

        With transposed vertical gates (CPU) the vertical cell runs on height and width swapped, its (k x 1) kernels
        as (1 x k) ones: the same sums, but oneDNN's weight gradient of a (1 x 5) convolution runs at 1.5x the rate
        of the (5 x 1) one (CREStereo base, 256 channels at 64x80: 17 vs 25 ms), more than the three transposing
        copies of h and x cost (about 0.3 ms each).
        """
        h = self.convgru1.forward_fast(h, x, gates[0])
        if not gates[1].transposed:
            return self.convgru2.forward_fast(h, x, gates[1])
        h = self.convgru2.forward_fast(swap_height_width(h), swap_height_width(x), gates[1])
        return swap_height_width(h)


class FlowHead(nn.Module):
    """Two 3x3 convs with a ReLU between: hidden state (B, in_channels, H, W) -> update (B, out_channels, H, W)."""

    def __init__(self, *, in_channels: int, hidden_size: int, out_channels: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(hidden_size, out_channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """Single-level RAFT update: motion encoder -> recurrent block -> flow head.

    ``forward(hidden (B, Ch, H, W), context (B, Cc, H, W), corr (B, Ck, H, W), flow (B, 2, H, W))
    -> (new hidden, delta_flow (B, 2, H, W))``. The recurrent block's input is ``cat(context, motion features)``.
    Exposes ``hidden_state_size``.
    """

    def __init__(self, *, motion_encoder: MotionEncoder, recurrent_block: nn.Module, flow_head: FlowHead) -> None:
        super().__init__()
        self.motion_encoder = motion_encoder
        self.recurrent_block = recurrent_block
        self.flow_head = flow_head
        self.hidden_state_size: int = recurrent_block.hidden_size

    def forward(self, hidden: Tensor, context: Tensor, corr_features: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        motion = self.motion_encoder(flow, corr_features)
        hidden = self.recurrent_block(hidden, torch.cat([context, motion], dim=1))
        return hidden, self.flow_head(hidden)

    def context_gates(self, context: Tensor) -> Any:
        """The recurrent block's gate pre-activations from ``context``, which is the same for every update of a
        level: computed once, then passed to ``forward_fast`` (needs a recurrent block with ``input_gates``)."""
        return self.recurrent_block.input_gates(context)

    def forward_fast(
        self, hidden: Tensor, context_gates: Any, corr_features: Tensor, flow: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``forward(hidden, context, corr_features, flow)`` for ``context_gates = context_gates(context)``."""
        motion = self.motion_encoder(flow, corr_features)
        hidden = self.recurrent_block.forward_fast(hidden, motion, context_gates)
        return hidden, self.flow_head(hidden)


# --------------------------------------------------------------------------------------------------------------------
# Convex upsampling
# --------------------------------------------------------------------------------------------------------------------

# RAFT scales the mask logits by 0.25 to damp the gradients of that branch (princeton-vl/RAFT issues #24 and #119);
# the published weights were trained with it, so it is the default everywhere.
MASK_GRADIENT_SCALE = 0.25


class MaskPredictor(nn.Module):
    """Convex-upsampling weights from a hidden state; RAFT / RAFT-Stereo key layout (``convrelu``, ``conv``).

    (B, in_channels, H, W) -> (B, 9 * upsample_factor**2, H, W) mask logits for ``convex_upsample``.
    """

    def __init__(
        self, *, in_channels: int, hidden_size: int, upsample_factor: int, multiplier: float = MASK_GRADIENT_SCALE
    ) -> None:
        super().__init__()
        self.convrelu = _conv_norm_relu(in_channels, hidden_size, kernel_size=3, norm_layer=None)
        self.conv = nn.Conv2d(hidden_size, 9 * upsample_factor**2, kernel_size=1)
        self.multiplier = multiplier

    def forward(self, x: Tensor) -> Tensor:
        return self.multiplier * self.conv(self.convrelu(x))


class ConvexMaskPredictor(nn.Module):
    """Same computation as ``MaskPredictor``, in CREStereo's key layout (``mask_head.0`` conv-ReLU, ``mask_head.1``).

    (B, in_channels, H, W) -> (B, 9 * upsample_factor**2, H, W) mask logits for ``convex_upsample``.
    """

    def __init__(
        self, *, in_channels: int, hidden_size: int, upsample_factor: int, multiplier: float = MASK_GRADIENT_SCALE
    ) -> None:
        super().__init__()
        self.mask_head = nn.Sequential(
            _conv_norm_relu(in_channels, hidden_size, kernel_size=3, norm_layer=None),
            nn.Conv2d(hidden_size, 9 * upsample_factor**2, kernel_size=1),
        )
        self.multiplier = multiplier

    def forward(self, x: Tensor) -> Tensor:
        return self.multiplier * self.mask_head(x)


def convex_upsample(flow: Tensor, mask: Tensor, factor: int) -> Tensor:
    """Upsample ``flow`` (B, C, h, w) by ``factor`` with learned convex weights (RAFT paper, appendix B).

    ``mask`` (B, 9 * factor**2, h, w) holds logits; each output pixel is a softmax-weighted mean of the 3x3
    neighbourhood of its coarse pixel. Values are multiplied by ``factor`` (a displacement of 1 coarse pixel is
    ``factor`` fine pixels). Returns (B, C, h * factor, w * factor).
    """
    b, c, h, w = flow.shape
    if mask.shape != (b, 9 * factor * factor, h, w):
        raise ValueError(f"convex_upsample: mask shape {tuple(mask.shape)} != expected {(b, 9 * factor**2, h, w)}")
    # Mask channel n * factor**2 + i * factor + j weighs neighbour n for the output sub-pixel (i, j). Pixel-major
    # layout (a view of a channels-last mask): the weighted sums are one (C x 9) @ (9 x factor**2) product per pixel,
    # about twice as fast forward and backward as broadcasting the product and summing it.
    weights = torch.softmax(mask.permute(0, 2, 3, 1).reshape(b, h, w, 9, factor * factor), dim=3)
    neighbours = F.unfold(factor * flow, kernel_size=3, padding=1).view(b, c, 9, h, w).permute(0, 3, 4, 1, 2)
    with torch.autocast(flow.device.type, enabled=False):  # pixel coordinates: never in bf16 / fp16
        dtype = torch.promote_types(neighbours.dtype, weights.dtype)
        up = torch.matmul(neighbours.to(dtype), weights.to(dtype))  # (B, h, w, C, factor**2)
    return up.view(b, h, w, c, factor, factor).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * factor, w * factor)


def upsample_flow(flow: Tensor, mask: Tensor | None, factor: int) -> Tensor:
    """Upsample ``flow`` (B, C, h, w) -> (B, C, h * factor, w * factor), values scaled by ``factor``.

    Convex upsampling when ``mask`` is given, else bilinear interpolation with ``align_corners=True``.
    """
    if mask is not None:
        return convex_upsample(flow, mask, factor)
    h, w = flow.shape[-2:]
    return factor * F.interpolate(flow, size=(h * factor, w * factor), mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------------------------------------------------
# Coordinates and sampling
# --------------------------------------------------------------------------------------------------------------------


def coords_grid(
    batch_size: int,
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Pixel coordinates (B, 2, H, W): channel 0 holds x (column index), channel 1 holds y (row index)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([xs, ys], dim=0).unsqueeze(0).expand(batch_size, 2, height, width).contiguous()


def grid_sample_pixels(image: Tensor, coords: Tensor, *, mode: str = "bilinear") -> Tensor:
    """``F.grid_sample`` with absolute pixel coordinates: ``coords`` (B, h_out, w_out, 2) holds (x, y) in pixels.

    Samples ``image`` (B, C, H, W) with ``align_corners=True`` (pixel centres at integer coordinates) and zeros
    outside. A single-row image (H == 1) is sampled along x only, whatever y holds.
    """
    h, w = image.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    x = 2 * x / (w - 1) - 1
    # With H == 1 the row normaliser is 0; every y maps to the only row when align_corners=True, so pass y as is.
    if h > 1:
        y = 2 * y / (h - 1) - 1
    return F.grid_sample(image, torch.cat([x, y], dim=-1), mode=mode, align_corners=True)


def sample_pixels_channels_last(image: Tensor, coords: Tensor) -> Tensor:
    """``grid_sample_pixels(image, coords)`` (bilinear, zeros outside) for a CPU ``image`` (B, C, H, W), returned
    channels-last (same values up to float rounding). ``coords`` (B, h, w, 2): (x, y) in pixels.

    Bilinear sampling is a sparse matrix (one row per output pixel, four corner weights) times the image as a
    (B * H * W, C) matrix, which channels-last memory already is: forward and backward are two sparse-dense products
    (the backward one with the transposed matrix), where ``grid_sample`` on a CPU reads each channel of each corner
    with its own stride and scatter-adds its gradient one value at a time (3-5x slower for CREStereo's 256-channel
    1/4 level, forward and backward). Computed and returned in float32 or wider (autocast runs ``grid_sample`` in
    float32 too). The gradient reaches ``coords`` as well when they require it.
    """
    c, h = image.shape[1:3]
    if h == 1:  # grid_sample_pixels' single-row case: every y maps to the only row
        coords = torch.stack([coords[..., 0], torch.zeros_like(coords[..., 1])], dim=-1)
    dtype = torch.promote_types(image.dtype, torch.float32)
    with torch.autocast(image.device.type, enabled=False):  # no sparse products in bf16
        sampled = _SparseBilinear.apply(image.permute(0, 2, 3, 1).to(dtype), coords.to(dtype))  # (B * h * w, C)
    return sampled.view(*coords.shape[:-1], c).permute(0, 3, 1, 2)


def _bilinear_matrices(coords: Tensor, height: int, width: int, with_derivatives: bool) -> tuple[Tensor, ...]:
    """The sparse (N, B * H * W) matrix of bilinear weights for the N = B * h * w sampling points ``coords``
    (B, h, w, 2), and with ``with_derivatives`` its derivatives by x and by y. Corners outside the image weigh 0."""
    batch = coords.shape[0]
    x, y = coords.detach().unbind(-1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    image_start = (torch.arange(batch, device=coords.device) * height * width).view(batch, 1, 1)
    columns, weights, by_x, by_y = [], [], [], []
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            inside = ((xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)).to(x.dtype)
            ax, ay = (fx if dx else 1 - fx), (fy if dy else 1 - fy)  # the corner's weight along x and along y
            # Outside corners (and non-finite coordinates) point at pixel 0 with weight 0.
            xi = torch.nan_to_num(xi, nan=0.0).clamp(0, width - 1).long()
            yi = torch.nan_to_num(yi, nan=0.0).clamp(0, height - 1).long()
            columns.append(image_start + yi * width + xi)
            weights.append(torch.nan_to_num(ax * ay * inside, nan=0.0))
            if with_derivatives:
                by_x.append(torch.nan_to_num((2 * dx - 1) * ay * inside, nan=0.0))
                by_y.append(torch.nan_to_num((2 * dy - 1) * ax * inside, nan=0.0))
    points = x.numel()
    row_starts = torch.arange(0, 4 * points + 1, 4, device=coords.device)
    columns_ = torch.stack(columns, dim=-1).reshape(-1)

    def matrix(values: list[Tensor]) -> Tensor:
        with warnings.catch_warnings():  # torch warns once that its sparse CSR support is in beta
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                row_starts,
                columns_,
                torch.stack(values, dim=-1).reshape(-1),
                (points, batch * height * width),
                check_invariants=False,  # valid by construction
            )

    return tuple(matrix(v) for v in ([weights, by_x, by_y] if with_derivatives else [weights]))


class _SparseBilinear(torch.autograd.Function):
    """(B, H, W, C) image, (B, h, w, 2) pixel coordinates -> (B * h * w, C) bilinear samples (zeros outside).
    Backward: image gradient = transposed weights @ grad; coordinate gradient = per point, grad . (derivative of the
    weights by x (y) @ image)."""

    @staticmethod
    def forward(ctx: Any, image: Tensor, coords: Tensor) -> Tensor:
        _, height, width, channels = image.shape
        matrices = _bilinear_matrices(coords, height, width, with_derivatives=ctx.needs_input_grad[1])
        pixels = image.reshape(-1, channels)
        ctx.save_for_backward(pixels, *matrices)
        ctx.image_shape, ctx.coords_shape = image.shape, coords.shape
        return matrices[0] @ pixels

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        pixels, weights, *derivatives = ctx.saved_tensors
        grad_image = grad_coords = None
        if ctx.needs_input_grad[0]:
            with warnings.catch_warnings():  # the beta warning again
                warnings.simplefilter("ignore", UserWarning)
                transposed = weights.t().to_sparse_csr()
            grad_image = (transposed @ grad).view(ctx.image_shape)
        if ctx.needs_input_grad[1]:
            by_x, by_y = ((m @ pixels).mul_(grad).sum(dim=1) for m in derivatives)
            grad_coords = torch.stack([by_x, by_y], dim=-1).view(ctx.coords_shape)
        return grad_image, grad_coords


# The fast paths' CPU rewrites (the sparse warp of the 1/4 level, the transposed vertical GRU, tanh from the sigmoid,
# linear layers as oneDNN convolutions, the written-out candidate correlation) pay on wide maps and cost more than they
# save on narrow ones, where their extra calls and copies dominate. Train step on 2 cores: crestereo_base (128-256
# channels, 256x320) 4% faster with them; crestereo_tiny (24-48 channels, 128x160, the embedded default) 4% slower.
# The warp alone, forward + backward on one core: 48 channels at 32x40, grid_sample 1.1 ms vs sparse 1.6 ms; 128
# channels at 64x80, 17.8 vs 6.6 ms; 256 channels, 45 vs 14 ms.
CPU_REWRITE_MIN_CHANNELS = 64


def cpu_rewrite_applies(x: Tensor, channels: int) -> bool:
    """Whether the fast paths rewrite an operation on ``x`` for the CPU: ``x`` is on a CPU and has ``channels`` >=
    ``CPU_REWRITE_MIN_CHANNELS`` channels."""
    return x.device.type == "cpu" and channels >= CPU_REWRITE_MIN_CHANNELS


class _SwapHeightWidth(torch.autograd.Function):
    """(B, C, H, W) -> (B, C, W, H) channels-last, and the gradient back the same way: autograd's own backward of
    transpose + contiguous would hand on a gradient with transposed strides, which every later elementwise kernel and
    convolution would then read in the slow order (or copy)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.transpose(2, 3).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.transpose(2, 3).contiguous(memory_format=torch.channels_last)


def swap_height_width(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, W, H), channels-last in memory (a transposing copy; its gradient too)."""
    return _SwapHeightWidth.apply(x)


class _TanhFromSigmoid(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, differentiated as tanh. torch's CPU tanh is about 10x slower than its sigmoid
    (1.4 vs 0.14 ms for a (2, 128, 64, 80) map on 2 cores); the identity differs from it by ~1e-7."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.sigmoid(2 * x).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh_fast(x: Tensor) -> Tensor:
    """``torch.tanh(x)`` up to float rounding, computed through the sigmoid for wide float32 maps (B, C, ...) on a
    CPU (``_TanhFromSigmoid``, ``cpu_rewrite_applies``). Not for bf16: its sigmoid rounds to 8 bits before the
    subtraction, which near 0 is far coarser than a rounded tanh."""
    if x.dtype == torch.float32 and cpu_rewrite_applies(x, x.shape[1]):
        return _TanhFromSigmoid.apply(x)
    return torch.tanh(x)


def recurrent_channels_last(channels: int) -> bool:
    """The fast paths' memory layout for a recurrent part of ``channels`` channels when the config leaves it open
    (``model.channels_last: null``): channels-last (True), except for wide maps (``CPU_REWRITE_MIN_CHANNELS``) on a
    machine without a GPU whose CPU lacks AVX-512. There oneDNN's channels-first convolution backward is the faster
    one: on an AMD EPYC (Zen 3, AVX2) 10-35% per GRU or head convolution, 15% of crestereo_base's train step
    (docs/PERFORMANCE.md); with AVX-512, and on a GPU, channels-last is."""
    if torch.cuda.is_available() or channels < CPU_REWRITE_MIN_CHANNELS:
        return True
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a (B, C, H, W) tensor whose channels are innermost, else the default layout."""
    return torch.channels_last if x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` (B, C, H, W) in channels-last memory order (a no-op when it already is). Same values and shape: only
    the strides change. oneDNN's CPU convolutions run on such tensors without converting them back and forth."""
    return x.contiguous(memory_format=torch.channels_last)
