"""The fast paths compute what the plain computation computes (1e-4), and the benchmark tools measure what they say.

Every fast path of ``stereo_exp.models`` (``fast_paths=True``, the default) is checked against the plain path it
replaces (``fast_paths=False``): block by block with random inputs, then whole models in training (outputs and
gradients) and evaluation, with and without ``flow_init``. Speed is not tested here (``benchmarks/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmarks.common import Timing, count_flops, format_table, timing_fields
from stereo_exp.config import register_configs
from stereo_exp.models import build_model
from stereo_exp.models.blocks import (
    CPU_REWRITE_MIN_CHANNELS,
    ConvGRU,
    SeparableConvGRU,
    grid_sample_pixels,
    sample_pixels_channels_last,
    swap_height_width,
    tanh_fast,
    to_channels_last,
)
from stereo_exp.models.crestereo import (
    AdaptiveGroupCorrelation,
    SearchWindow,
    crestereo_base,
    crestereo_tiny,
    deformable_window_correlation,
    fixed_window_correlation,
    fixed_window_correlation_fast,
)
from stereo_exp.models.raft_stereo import raft_stereo_base, raft_stereo_realtime, raft_stereo_tiny
from stereo_exp.testing.weights_layout import layout_state_dict, read_layout

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ATOL = 1e-4  # the contract: fast paths equal the plain computation to 1e-4 (px for disparities)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _pair(height: int, width: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images in [-1, 1] whose right view is the left one shifted 3 px left (disparity 3)."""
    left = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return left, torch.roll(left, shifts=-3, dims=-1)


def _plain_and_fast(builder, seed: int = 0, **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same seeded weights in a plain and a fast model."""
    torch.manual_seed(seed)
    plain = builder(fast_paths=False, **overrides)
    fast = builder(fast_paths=True, **overrides)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _assert_gradients_close(plain: torch.nn.Module, fast: torch.nn.Module) -> None:
    """Gradients agree to 1e-4 of the largest gradient: conv biases in front of instance norms have a gradient that
    is exactly zero in theory and float noise (~1e-8) in practice, so a relative check per tensor would be noise."""
    scale = max(p.grad.abs().max().item() for p in plain.parameters() if p.grad is not None)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-4 * scale, rtol=0, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window", [SearchWindow((1, 9)), SearchWindow((3, 3)), SearchWindow((3, 3), (2, 3))], ids=["1x9", "3x3", "dil"]
)
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_fast_fixed_window_correlation_equals_the_plain_one(window, memory_format):
    left = _randn(2, 32, 7, 11, seed=1).contiguous(memory_format=memory_format)
    right = _randn(2, 32, 7, 11, seed=2).contiguous(memory_format=memory_format)
    plain = fixed_window_correlation(left, right, groups=4, window=window)
    fast = fixed_window_correlation_fast(left, right, groups=4, window=window)
    assert fast.shape == plain.shape == (2, 4 * window.num_candidates, 7, 11)
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)


def test_fast_correlation_layer_peaks_where_the_flow_points_at_the_match():
    left = _randn(1, 128, 6, 24)  # 64 channels per group: the self-match clearly wins
    right = torch.roll(left, shifts=-3, dims=-1)  # x_right = x_left - 3: a disparity of 3 px
    correlation = AdaptiveGroupCorrelation(groups=2)
    matched_flow = torch.cat([torch.full((1, 1, 6, 24), -3.0), torch.zeros(1, 1, 6, 24)], dim=1)  # flow x = -d
    fast = correlation(left, right, matched_flow, SearchWindow((1, 9)), fast=True)
    best = fast.reshape(1, 2, 9, 6, 24).argmax(dim=2)[..., 5:19]  # interior columns
    assert (best == 4).all()  # the centre candidate (dx = 0) of both groups
    # 1e-5: grid_sample (plain path) round-trips the pixel coordinates through [-1, 1], which puts ~1e-7 of weight on
    # the neighbours of whole-pixel points; the fast path's sparse sampler weighs them exactly 0.
    torch.testing.assert_close(fast, correlation(left, right, matched_flow, SearchWindow((1, 9))), atol=1e-5, rtol=0)


@pytest.mark.parametrize("height", [1, 7])
def test_sparse_bilinear_sampler_equals_grid_sample_values_and_both_gradients(height):
    # Points inside, on the border, between the border and the zero padding, far outside, and on whole pixels.
    image = _randn(2, 16, height, 9, seed=1).double().requires_grad_()
    coords = torch.rand(2, 5, 6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    coords = coords * torch.tensor([13.0, height + 4.0], dtype=torch.float64) - 2
    coords[0, 0, :3] = torch.tensor([[0.0, 0.0], [8.0, height - 1.0], [3.0, 2.0]], dtype=torch.float64)
    coords[0, 1, 0] = torch.tensor([40.0, -30.0], dtype=torch.float64)
    coords.requires_grad_()
    plain = grid_sample_pixels(image, coords)
    fast = sample_pixels_channels_last(image, coords)
    assert fast.shape == plain.shape == (2, 16, 5, 6) and fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, plain, atol=1e-12, rtol=0)
    grad = _randn(2, 16, 5, 6, seed=3).double()
    for fast_grad, plain_grad in zip(
        torch.autograd.grad(fast, (image, coords), grad), torch.autograd.grad(plain, (image, coords), grad), strict=True
    ):
        torch.testing.assert_close(fast_grad, plain_grad, atol=1e-12, rtol=0)


def test_sparse_bilinear_sampler_runs_float32_under_bf16_autocast_and_ignores_non_finite_points():
    image, coords = _randn(1, 8, 6, 6, seed=1), torch.full((1, 2, 2, 2), 2.5)
    coords[0, 0, 0] = torch.tensor([float("nan"), float("inf")])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sampled = sample_pixels_channels_last(image.bfloat16(), coords)
    assert sampled.dtype == torch.float32
    assert (sampled[0, :, 0, 0] == 0).all() and sampled.isfinite().all()
    torch.testing.assert_close(sampled[0, :, 1, 1], image.bfloat16().float()[0, :, 2:4, 2:4].mean(dim=(1, 2)))


def test_gru_with_precomputed_static_gates_equals_the_gru_on_the_full_input():
    torch.manual_seed(0)
    gru = ConvGRU(input_size=12, hidden_size=8, kernel_size=(1, 5), padding=(0, 2))
    h, static, dynamic = _randn(2, 8, 6, 7, seed=1), _randn(2, 5, 6, 7, seed=2), _randn(2, 7, 6, 7, seed=3)
    plain = gru(h, torch.cat([static, dynamic], dim=1))  # x = cat(static 5 channels, dynamic 7 channels)
    fast = gru.forward_fast(to_channels_last(h), to_channels_last(dynamic), gru.input_gates(to_channels_last(static)))
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)


def test_gru_fast_path_with_raft_context_gates_equals_the_gru_with_context():
    torch.manual_seed(0)
    gru = ConvGRU(input_size=6, hidden_size=4)
    h, x, context = _randn(1, 4, 5, 5, seed=1), _randn(1, 6, 5, 5, seed=2), _randn(1, 12, 5, 5, seed=3)
    plain = gru(h, x, context.split(4, dim=1))  # RAFT-Stereo: context maps added to the z, r, q pre-activations
    fast = gru.forward_fast(h, x, gru.fast_gates(context + gru.gate_biases()))
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_separable_gru_fast_path_equals_both_cells_on_the_full_input_values_and_gradients(layout):
    torch.manual_seed(0)
    gru = SeparableConvGRU(input_size=10, hidden_size=CPU_REWRITE_MIN_CHANNELS, kernel_length=5)
    shapes = ((CPU_REWRITE_MIN_CHANNELS, 1), (4, 2), (6, 3))
    h, static, dynamic = (
        _randn(1, c, 9, 8, seed=s).contiguous(memory_format=layout).requires_grad_() for c, s in shapes
    )
    plain = gru(h, torch.cat([static, dynamic], dim=1))
    gates = gru.input_gates(static)
    # On a CPU the vertical cell of a wide channels-last state runs on transposed maps with (1 x 5) kernels.
    assert gates[1].transposed is (layout == torch.channels_last)
    fast = gru.forward_fast(h, dynamic, gates)
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)
    assert fast.is_contiguous(memory_format=layout)
    grad = _randn(*plain.shape, seed=4)
    inputs = (h, static, dynamic, *gru.parameters())
    for fast_grad, plain_grad in zip(
        torch.autograd.grad(fast, inputs, grad), torch.autograd.grad(plain, inputs, grad), strict=True
    ):
        torch.testing.assert_close(fast_grad, plain_grad, atol=1e-5, rtol=0)


def test_swap_height_width_transposes_values_and_hands_back_a_channels_last_gradient():
    x = _randn(2, 3, 4, 5, seed=1).requires_grad_()
    swapped = swap_height_width(x)
    assert swapped.shape == (2, 3, 5, 4) and swapped.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(swapped, x.transpose(2, 3))
    grad = _randn(2, 3, 5, 4, seed=2)
    (x_grad,) = torch.autograd.grad(swapped, x, grad)
    assert torch.equal(x_grad, grad.transpose(2, 3)) and x_grad.is_contiguous(memory_format=torch.channels_last)


def test_tanh_fast_equals_tanh_values_and_gradient():
    x = torch.linspace(-20, 20, 64 * CPU_REWRITE_MIN_CHANNELS).view(1, CPU_REWRITE_MIN_CHANNELS, -1).requires_grad_()
    assert not torch.equal(tanh_fast(x), torch.tanh(x))  # the sigmoid form ran, not torch.tanh
    torch.testing.assert_close(tanh_fast(x), torch.tanh(x), atol=3e-7, rtol=0)
    (fast_grad,) = torch.autograd.grad(tanh_fast(x).sum(), x)
    (plain_grad,) = torch.autograd.grad(torch.tanh(x).sum(), x)
    torch.testing.assert_close(fast_grad, plain_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_fast_deformable_correlation_equals_the_plain_one_values_and_gradients(memory_format):
    window = SearchWindow((1, 9))
    channels = CPU_REWRITE_MIN_CHANNELS  # narrower maps take the plain path
    left = _randn(2, channels, 5, 7, seed=1).contiguous(memory_format=memory_format).requires_grad_()
    right = _randn(2, channels, 5, 7, seed=2).contiguous(memory_format=memory_format).requires_grad_()
    flow = (_randn(2, 2, 5, 7, seed=3) * 2).requires_grad_()
    offsets = _randn(2, 2 * window.num_candidates, 5, 7, seed=4).requires_grad_()
    results = [
        deformable_window_correlation(left, right, flow, offsets, groups=4, window=window, fast=fast)
        for fast in (False, True)
    ]
    assert results[1].shape == results[0].shape == (2, 4 * 9, 5, 7)
    assert "_CandidateCorrelationBackward" in str(results[1].grad_fn.next_functions)  # the written-out path ran
    torch.testing.assert_close(results[1], results[0], atol=1e-6, rtol=0)
    grad = _randn(2, 36, 5, 7, seed=5)
    inputs = (left, right, flow, offsets)
    plain_grads, fast_grads = (torch.autograd.grad(result, inputs, grad) for result in results)
    for fast_grad, plain_grad in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(fast_grad, plain_grad, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------------------------------------


# The fast paths' two memory layouts of the recurrent part (``channels_last``; ``recurrent_channels_last`` picks one
# per machine): both are tested on every machine.
LAYOUTS = pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])


@LAYOUTS
@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
def test_crestereo_fast_paths_train_like_the_plain_computation(checkpointing, channels_last):
    plain, fast = _plain_and_fast(crestereo_tiny, activation_checkpointing=checkpointing, channels_last=channels_last)
    left, right = _pair(32, 48, batch=2)
    results = []
    for model in (plain, fast):
        predictions = model.train()(left, right, num_iters=4)  # 2 updates at 1/16, 2 at 1/8, 4 at 1/4
        sum(p.abs().mean() for p in predictions).backward()
        results.append(predictions)
    for p, q in zip(*results, strict=True):
        torch.testing.assert_close(q, p, atol=ATOL, rtol=0)
    _assert_gradients_close(plain, fast)


def test_crestereo_fast_paths_evaluate_like_the_plain_computation_with_and_without_flow_init():
    plain, fast = _plain_and_fast(crestereo_tiny)
    left, right = _pair(32, 48)
    flow_init = torch.rand(1, 2, 16, 24, generator=torch.Generator().manual_seed(3)) * 4  # a cascade's (d, v) flow
    with torch.no_grad():
        for init in (None, flow_init):
            expected = plain.eval().forward_flow(left, right, init, num_iters=3)
            for p, q in zip(expected, fast.eval().forward_flow(left, right, init, num_iters=3), strict=True):
                torch.testing.assert_close(q, p, atol=ATOL, rtol=0)


def test_crestereo_base_fast_paths_equal_the_plain_computation_with_the_published_layout_weights():
    plain, fast = _plain_and_fast(crestereo_base)
    state_dict = layout_state_dict("crestereo_base", seed=0)  # the weights of the prototype fixture
    plain.load_state_dict(state_dict)
    fast.load_state_dict(state_dict)
    left, right = _pair(64, 96)
    with torch.no_grad():
        expected = plain.eval()(left, right, num_iters=4)
        got = fast.eval()(left, right, num_iters=4)
    assert expected[-1].abs().mean() > 0.1  # a real disparity map, not zeros: the comparison means something
    for p, q in zip(expected, got, strict=True):
        torch.testing.assert_close(q, p, atol=ATOL, rtol=0)


@LAYOUTS
def test_crestereo_base_fast_paths_train_like_the_plain_computation(channels_last):
    # crestereo_base's 128-256 channel maps take every CPU rewrite of the fast paths (cpu_rewrite_applies), which
    # crestereo_tiny's 24-48 channels do not: the sparse warp, the transposed vertical GRU (channels-last only), tanh
    # from the sigmoid, the written-out candidate correlation.
    plain, fast = _plain_and_fast(crestereo_base, channels_last=channels_last)
    left, right = _pair(64, 96, batch=2)
    results = []
    for model in (plain, fast):
        predictions = model.train()(left, right, num_iters=4)  # 2 updates at 1/16, 2 at 1/8, 4 at 1/4
        loss = sum(p.abs().mean() for p in predictions)
        results.append((predictions, _autograd_node_names(loss)))
        loss.backward()
    (expected, plain_nodes), (got, fast_nodes) = results
    names = ["SparseBilinear", "TanhFromSigmoid", "CandidateCorrelation", *(["SwapHeightWidth"] * channels_last)]
    rewrites = {f"_{name}Backward" for name in names}
    assert rewrites <= fast_nodes and not rewrites & plain_nodes  # the fast model ran every rewrite, the plain none
    assert ("_SwapHeightWidthBackward" in fast_nodes) == channels_last
    for p, q in zip(expected, got, strict=True):
        torch.testing.assert_close(q, p, atol=ATOL, rtol=0)
    _assert_gradients_close(plain, fast)


def _autograd_node_names(output: torch.Tensor) -> set[str]:
    """The names of every node of ``output``'s autograd graph."""
    names, seen, stack = set(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@LAYOUTS
def test_raft_stereo_fast_paths_train_like_the_plain_computation(channels_last):
    # 3 GRU levels with slow-fast updates: every path of the update
    plain, fast = _plain_and_fast(raft_stereo_tiny, channels_last=channels_last)
    left, right = _pair(32, 64, batch=2)
    results = []
    for model in (plain, fast):
        predictions = model.train()(left, right, num_iters=3)
        sum(p.abs().mean() for p in predictions).backward()
        results.append(predictions)
    for p, q in zip(*results, strict=True):
        torch.testing.assert_close(q, p, atol=ATOL, rtol=0)
    _assert_gradients_close(plain, fast)


@pytest.mark.parametrize("builder", [raft_stereo_base, raft_stereo_realtime], ids=["base", "realtime"])
def test_published_raft_stereo_fast_paths_evaluate_like_the_plain_computation(builder):
    plain, fast = _plain_and_fast(builder)
    left, right = _pair(64, 128)
    flow_init = torch.full((1, 1, 32, 64), 1.5)  # positive disparity on a half-resolution grid
    with torch.no_grad():
        for init in (None, flow_init):
            expected = plain.eval()(left, right, init, num_iters=3)
            for p, q in zip(expected, fast.eval()(left, right, init, num_iters=3), strict=True):
                torch.testing.assert_close(q, p, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("builder", "layout"),
    [(crestereo_base, "crestereo_base"), (raft_stereo_base, "raft_stereo_base")],
    ids=["crestereo", "raft_stereo"],
)
def test_fast_models_keep_the_published_state_dict_layout_and_load_into_plain_ones(builder, layout):
    plain, fast = _plain_and_fast(builder)
    fast_state = fast.state_dict()
    assert [(k, tuple(v.shape)) for k, v in fast_state.items()] == [(e.key, e.shape) for e in read_layout(layout)]
    plain.load_state_dict(fast_state, strict=True)  # channels-last strides are not part of the layout
    for key, value in plain.state_dict().items():
        assert torch.equal(value, fast_state[key]), key


@pytest.mark.parametrize(
    ("capability", "cuda", "expected"),
    [("AVX2", False, {"crestereo_base": False, "crestereo_tiny": True, "raft_stereo_base": False}),
     ("AVX512", False, {"crestereo_base": True, "crestereo_tiny": True, "raft_stereo_base": True}),
     ("AVX2", True, {"crestereo_base": True, "crestereo_tiny": True, "raft_stereo_base": True})],
    ids=["avx2-cpu", "avx512-cpu", "avx2-with-gpu"],
)  # fmt: skip
def test_channels_last_null_is_channels_first_only_for_wide_maps_on_a_cpu_without_avx512(
    monkeypatch, capability, cuda, expected
):
    # On an AMD EPYC (Zen 3, AVX2) oneDNN's channels-last convolution backward ran 10-35% slower than its
    # channels-first one, and crestereo_base's train step 15% slower for it (docs/PERFORMANCE.md).
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for model_name, channels_last in expected.items():
            cfg = compose("config", overrides=[f"model={model_name}", "tracking=none"]).model
            assert cfg.channels_last is None
            model = build_model(cfg)
            assert model.channels_last is channels_last, model_name
            weight = next(model.mask_predictor.parameters())
            assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last, model_name
            forced = compose("config", overrides=[f"model={model_name}", f"model.channels_last={not channels_last}"])
            assert build_model(forced.model).channels_last is (not channels_last), model_name


@pytest.mark.parametrize("model_name", ["crestereo_tiny", "raft_stereo_tiny"])
def test_model_fast_paths_is_a_config_key_that_defaults_to_true(model_name):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        default = compose("config", overrides=[f"model={model_name}", "tracking=none"]).model
        plain = compose("config", overrides=[f"model={model_name}", "model.fast_paths=false", "tracking=none"]).model
    assert build_model(default).fast_paths is True
    assert build_model(plain).fast_paths is False


# ----------------------------------------------------------------------------------------------------------------
# Benchmark tools (benchmarks/common.py)
# ----------------------------------------------------------------------------------------------------------------


def test_flop_counting_counts_a_multiply_add_as_two_flops_forward_and_backward():
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    # 4 output channels x 25 pixels x (3 x 9) multiply-adds = 2700 MACs = 5400 FLOPs
    assert count_flops(lambda: conv(x)) == 5400
    # backward: the input gradient and the weight gradient cost one forward each -> 3 x 5400
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * 5400


def test_share_uses_the_ceiling_measured_around_each_repeat():
    timing = Timing(seconds=[1.0, 2.0, 4.0], ceilings={"fp32": [100.0, 50.0, 20.0]})
    # shares: 100/1/100 = 1.0, 100/2/50 = 1.0, 100/4/20 = 1.25 -> median 1.0; the time's median is 2 s
    assert timing.share(100, "fp32") == pytest.approx(1.0)
    assert timing.median == 2.0
    assert timing.ceiling("fp32") == 50.0


def test_tables_right_align_numbers_and_mark_missing_values():
    table = format_table([("model", "model"), ("latency_s", "latency s")], [{"model": "a", "latency_s": 1.23456}, {}])
    assert table.splitlines() == ["model  latency s", "-----  ---------", "    a       1.23", "    -          -"]


def test_a_bf16_case_on_a_cpu_without_bf16_arithmetic_has_no_ceiling_and_no_share():
    # On an AVX2 CPU every benchmark stopped in the bf16 ceiling: oneDNN has no bf16 convolution there, and bf16
    # torch.mm is emulated at ~1 GFLOP/s (one ceiling sample took minutes). The fp32 figures stay.
    timing = Timing(seconds=[2.0], ceilings={"fp32": [100.0]})
    fields = timing_fields(timing, model_flops=100, executed_flops=80, precision="bf16")
    assert (fields["ceiling_gflops"], fields["share_pct"], fields["share_best_pct"]) == (None, None, None)
    assert fields["share_of_fp32_ceiling_pct"] == pytest.approx(50.0)


def test_flop_counting_counts_a_sparse_product_by_its_stored_entries():
    # torch's formula counted the fast paths' sparse warp as a dense (points x pixels) @ (pixels x channels) product:
    # crestereo_base's inference showed 1566 "executed" GFLOP against 917 model GFLOP.
    image = _randn(1, 8, 6, 7).contiguous(memory_format=torch.channels_last)
    coords = torch.rand(1, 6, 7, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([5.0, 4.0]) + 0.5
    points, corners = 6 * 7, 4  # every point strictly inside: four corners with a weight each
    assert count_flops(lambda: sample_pixels_channels_last(image, coords)) == 2 * points * corners * 8
