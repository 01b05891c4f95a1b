"""RAFT-Stereo: published parameter layout, equality with torchvision's prototype, contract of ``forward``.

The prototype comparison reads ``fixtures/raft_stereo_prototype_outputs.pt`` (see ``tests/raft_stereo_oracle.py``).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch import Tensor, nn

from stereo_exp import models
from stereo_exp.models.config import RAFT_STEREO_TINY
from stereo_exp.models.raft_stereo import (
    CorrBlock1d,
    RaftStereo,
    raft_stereo_base,
    raft_stereo_realtime,
    raft_stereo_tiny,
)
from stereo_exp.testing.weights_layout import read_layout
from tests.raft_stereo_oracle import CASES, oracle_inputs, oracle_state_dict, summarise

CONF = Path(__file__).parent.parent / "conf"
PROTOTYPE_OUTPUTS = Path(__file__).parent / "fixtures" / "raft_stereo_prototype_outputs.pt"
BUILDERS = {"raft_stereo_base": raft_stereo_base, "raft_stereo_realtime": raft_stereo_realtime}


def stereo_pair(batch: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """A random left view in [-1, 1] and a right view that is it shifted 3 px to the left, plus noise."""
    generator = torch.Generator().manual_seed(1)
    left = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    right = torch.roll(left, -3, dims=-1) + 0.05 * torch.randn(batch, 3, height, width, generator=generator)
    return left, right


# --------------------------------------------------------------------------------------------------------------------
# Published layout
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [("raft_stereo_base", 11_116_176), ("raft_stereo_realtime", 8_077_152)])
def test_published_variants_have_the_published_parameter_counts(name, expected):
    model = BUILDERS[name]()
    assert sum(p.numel() for p in model.parameters()) == expected  # shared backbone counted once


@pytest.mark.parametrize("name", list(BUILDERS))
def test_state_dict_has_exactly_the_published_keys_shapes_and_dtypes(name):
    model = BUILDERS[name]()
    ours = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
    assert ours == [(e.key, e.shape, e.dtype) for e in read_layout(name)]  # same order too, buffers included


@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_state_dict_in_the_published_layout_loads_strictly(name):
    model = BUILDERS[name]()
    state = oracle_state_dict(name)
    model.load_state_dict(state, strict=True)
    key = "update_block.motion_encoder.convcorr1.0.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_realtime_feature_and_context_encoders_share_one_backbone():
    model = raft_stereo_realtime()
    assert model.feature_encoder.base_encoder is model.context_encoder.base_encoder


# --------------------------------------------------------------------------------------------------------------------
# Equality with torchvision's prototype
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prototype_outputs() -> dict[str, dict[str, Tensor]]:
    return torch.load(PROTOTYPE_OUTPUTS, weights_only=True)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_outputs_equal_torchvision_prototype_with_the_same_weights(case, prototype_outputs):
    model = BUILDERS[case.model]()
    model.load_state_dict(oracle_state_dict(case.model), strict=True)
    model.train(case.training)
    left, right, flow_init = oracle_inputs(case.model)
    with torch.set_grad_enabled(case.training):
        predictions = model(left, right, flow_init if case.with_init else None, num_iters=case.num_iters)

    assert len(predictions) == case.num_iters
    assert all(p.shape == (2, 1, *left.shape[-2:]) for p in predictions)
    expected = prototype_outputs[case.name]
    summary = summarise(predictions)
    torch.testing.assert_close(summary["means"], expected["means"], atol=1e-4, rtol=0)
    torch.testing.assert_close(summary["last"], expected["last"], atol=1e-4, rtol=0)


def test_prototype_fixture_spans_several_pixels_so_that_1e_4_is_a_strict_tolerance(prototype_outputs):
    # A sign error, a lost iteration or a mis-scaled flow_init would be off by pixels, not by 1e-4.
    for name, summary in prototype_outputs.items():
        assert summary["last"].max() - summary["last"].min() > 5, name
        assert (summary["means"][1:] - summary["means"][:-1]).abs().min() > 0.1, name  # every iteration moves


# --------------------------------------------------------------------------------------------------------------------
# Forward contract
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny() -> RaftStereo:
    torch.manual_seed(0)
    return raft_stereo_tiny()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_iteration_returns_a_full_resolution_disparity(tiny, mode):
    left, right = stereo_pair(2, 32, 48)
    tiny.train(mode == "train")
    predictions = tiny(left, right, num_iters=3)
    assert len(predictions) == 3
    assert all(p.shape == (2, 1, 32, 48) and p.dtype == torch.float32 for p in predictions)
    assert not torch.equal(predictions[0], predictions[-1])  # the iterations refine


def test_flow_init_is_returned_unchanged_when_the_updates_are_zero():
    # Zero disparity updates + bilinear upsampling: the prediction is flow_init taken to 1/4 resolution and back. A
    # linear disparity ramp survives both bilinear resamplings exactly, so the output must equal it pixel for pixel,
    # with its positive sign.
    model = raft_stereo_tiny(use_mask_predictor=False)
    nn.init.zeros_(model.disparity_head.conv2.weight)
    nn.init.zeros_(model.disparity_head.conv2.bias)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
    ramp = (2 + 0.05 * xs + 0.02 * ys).expand(2, 1, 32, 48)  # 2 .. 4.97 px
    left, right = stereo_pair(2, 32, 48)
    model.eval()
    predictions = model(left, right, flow_init=ramp, num_iters=2)
    torch.testing.assert_close(predictions[-1], ramp, atol=1e-5, rtol=0)


def test_flow_init_of_another_resolution_is_rescaled_by_the_width_ratio():
    # 3 px at half resolution are 6 px at full resolution.
    model = raft_stereo_tiny(use_mask_predictor=False)
    nn.init.zeros_(model.disparity_head.conv2.weight)
    nn.init.zeros_(model.disparity_head.conv2.bias)
    left, right = stereo_pair(1, 32, 48)
    model.eval()
    prediction = model(left, right, flow_init=torch.full((1, 1, 16, 24), 3.0), num_iters=1)[-1]
    torch.testing.assert_close(prediction, torch.full((1, 1, 32, 48), 6.0), atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter_that_trains(tiny):
    left, right = stereo_pair(2, 32, 48)
    target = torch.full((2, 1, 32, 48), 3.0)
    tiny.train()
    predictions = tiny(left, right, num_iters=3)
    sum((p - target).abs().mean() for p in predictions).backward()
    for name, parameter in tiny.named_parameters():
        grad = parameter.grad
        assert grad is not None and torch.isfinite(grad).all(), name
        if name.startswith("disparity_head.conv2."):
            # Output channel 1 is the vertical update, unused in stereo (kept for the published layout).
            assert grad[1].abs().max() == 0, name
            assert grad[0].abs().max() > 0, name
        else:
            assert grad.abs().max() > 0, name


def test_the_same_seed_gives_the_same_network_and_output():
    left, right = stereo_pair(1, 32, 48)
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        model = raft_stereo_tiny().eval()
        outputs.append(model(left, right, num_iters=2)[-1])
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_activation_checkpointing_gives_the_same_outputs_and_gradients_and_recomputes(tiny):
    checkpointed = copy.deepcopy(tiny)
    checkpointed.activation_checkpointing = True
    left, right = stereo_pair(2, 32, 48)

    def forward_backward(model: RaftStereo) -> tuple[list[Tensor], dict[str, Tensor], int]:
        calls = []
        hook = model.update_block.register_forward_hook(lambda *_: calls.append(1))
        model.train()
        predictions = model(left, right, num_iters=3)
        sum(p.abs().mean() for p in predictions).backward()
        hook.remove()
        return predictions, {n: p.grad for n, p in model.named_parameters()}, len(calls)

    plain, plain_grads, plain_calls = forward_backward(tiny)
    ckpt, ckpt_grads, ckpt_calls = forward_backward(checkpointed)
    for a, b in zip(plain, ckpt, strict=True):
        assert torch.equal(a, b)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # tiny: 3 GRU levels with slow-fast = 3 update-block calls per iteration; checkpointing replays them in backward.
    assert plain_calls == 3 * 3
    assert ckpt_calls == 2 * 3 * 3


def test_bf16_autocast_keeps_coordinates_in_fp32(tiny):
    left, right = stereo_pair(1, 32, 48)
    tiny.eval()
    reference = tiny(left, right, num_iters=2)[-1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prediction = tiny(left, right, num_iters=2)[-1]
    assert prediction.dtype == torch.float32 and torch.isfinite(prediction).all()
    assert (prediction - reference).abs().mean() < 0.05 * reference.abs().mean()


# --------------------------------------------------------------------------------------------------------------------
# Errors for bad input
# --------------------------------------------------------------------------------------------------------------------


def test_sizes_that_do_not_divide_by_the_size_multiple_are_rejected_naming_both_shapes(tiny):
    assert tiny.size_multiple == 16  # 1/4 features, two further GRU levels
    left, right = stereo_pair(1, 32, 40)
    with pytest.raises(ValueError, match=r"multiples of 16.*\(1, 3, 32, 40\).*\(1, 3, 32, 40\)"):
        tiny(left, right, num_iters=1)


def test_left_and_right_of_different_shapes_are_rejected(tiny):
    left, _ = stereo_pair(1, 32, 48)
    _, right = stereo_pair(1, 32, 64)
    with pytest.raises(ValueError, match=r"left \(1, 3, 32, 48\) and right \(1, 3, 32, 64\)"):
        tiny(left, right, num_iters=1)


def test_a_flow_init_with_two_channels_is_rejected(tiny):
    left, right = stereo_pair(1, 32, 48)
    with pytest.raises(ValueError, match=r"flow_init must be a \(B, 1, h, w\).*\(1, 2, 32, 48\)"):
        tiny(left, right, flow_init=torch.zeros(1, 2, 32, 48), num_iters=1)


def test_images_too_narrow_for_the_correlation_pyramid_are_rejected():
    model = raft_stereo_base().eval()  # 4 pyramid levels at 1/4: the coarsest needs 1 column, i.e. 4 * 2**3 px
    left, right = stereo_pair(1, 16, 16)
    with pytest.raises(ValueError, match=r"Input width 16 .* 4-level correlation pyramid .* at least 32 px"):
        model(left, right, num_iters=1)


def test_zero_iterations_are_rejected(tiny):
    left, right = stereo_pair(1, 32, 48)
    with pytest.raises(ValueError, match="num_iters must be >= 1; got 0"):
        tiny(left, right, num_iters=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"feature_encoder_norm": "group"}, r"model.feature_encoder_norm='group' is not one of batch, instance, none"),
        ({"update_block_hidden_dims": (16, 16)}, r"context_encoder_out_with_blocks=.*one entry per GRU level"),
        ({"update_block_hidden_dims": (8, 8, 8)}, r"every model.update_block_hidden_dims entry must be 16"),
        ({"context_encoder_strides": (2, 1, 2, 2)}, r"model.feature_encoder_strides=\[1, 1, 2, 2\]"),
    ],
)
def test_inconsistent_hyper_parameters_name_the_config_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(RAFT_STEREO_TINY, **overrides)


# --------------------------------------------------------------------------------------------------------------------
# Correlation (known answers)
# --------------------------------------------------------------------------------------------------------------------


def test_correlation_pyramid_holds_scaled_row_dot_products_averaged_per_level():
    fmap1 = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0]]).view(
        1, 4, 1, 2
    )  # pixels (2,0,0,0) (0,2,0,0)
    fmap2 = torch.tensor([[1.0, 3.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).view(
        1, 4, 1, 2
    )  # pixels (1,1,0,0) (3,0,0,0)
    level0, level1 = CorrBlock1d(num_levels=2, radius=1).pyramid(fmap1, fmap2)
    # dot products / sqrt(4): left pixel 0 -> [2/2, 6/2], left pixel 1 -> [2/2, 0/2]; level 1 averages pairs.
    torch.testing.assert_close(level0, torch.tensor([[1.0, 3.0], [1.0, 0.0]]))
    torch.testing.assert_close(level1, torch.tensor([[2.0], [0.5]]))


def test_correlation_lookup_interpolates_linearly_and_reads_zero_outside_the_row():
    pyramid = [torch.tensor([[0.0, 10.0, 20.0, 30.0]]), torch.tensor([[5.0, 25.0]])]
    features = CorrBlock1d(num_levels=2, radius=1).lookup(pyramid, torch.tensor([[[[1.25]]]]))
    # level 0 at 0.25, 1.25, 2.25; level 1 at 1.25 / 2 + (-1, 0, 1) = -0.375 (only 0.625 of pixel 0), 0.625, 1.625
    # (only 0.375 of pixel 1).
    expected = [2.5, 12.5, 22.5, 0.625 * 5, 0.375 * 5 + 0.625 * 25, 0.375 * 25]
    torch.testing.assert_close(features.flatten(), torch.tensor(expected))


def test_correlation_lookup_equals_grid_sample_on_random_rows():
    g = torch.Generator().manual_seed(0)
    block = CorrBlock1d(num_levels=3, radius=2)
    fmap1, fmap2 = torch.randn(2, 2, 8, 3, 16, generator=g)
    pyramid = block.pyramid(fmap1, fmap2)
    x = torch.rand(2, 1, 3, 16, generator=g) * 24 - 4  # includes positions left and right of the row
    features = block.lookup(pyramid, x)
    reference = []
    for k, level in enumerate(pyramid):
        width = level.shape[1]
        positions = x.permute(0, 2, 3, 1).reshape(-1, 1) / 2**k + torch.arange(-2.0, 3.0)  # (N, 5) pixels
        grid = torch.stack([2 * positions / (width - 1) - 1, torch.zeros_like(positions)], dim=-1).unsqueeze(1)
        sampled = torch.nn.functional.grid_sample(level[:, None, None, :], grid, align_corners=True)
        reference.append(sampled.view(2, 3, 16, 5))
    torch.testing.assert_close(features, torch.cat(reference, dim=-1).permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def model_configs():
    models.register_configs(ConfigStore.instance())
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        yield lambda name, *overrides: compose(overrides=[f"+model={name}", *overrides]).model
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("name", "parameters", "slow_fast"),
    [
        ("raft_stereo_base", 11_116_176, False),
        ("raft_stereo_realtime", 8_077_152, True),
        ("raft_stereo_tiny", 175_504, True),
    ],
)
def test_each_option_file_builds_its_model(name, parameters, slow_fast, model_configs):
    # Parameter counts: torchvision's published num_params (base, realtime); the tiny model's as first released.
    cfg = model_configs(name)
    assert cfg.name == name
    model = models.build_model(OmegaConf.to_object(cfg))
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert (model.slow_fast, model.size_multiple) == (slow_fast, 16)


@pytest.mark.parametrize("name", ["raft_stereo_base", "raft_stereo_realtime", "raft_stereo_tiny"])
def test_option_files_hold_no_numbers_of_their_own(name):
    # The numbers live once, in stereo_exp/models/config.py; the option file only composes its variant.
    options = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    assert options == {"defaults": [f"{name}_schema", "_self_"]}


def test_a_misspelt_encoder_norm_fails_at_composition(model_configs):
    with pytest.raises(ConfigCompositionException, match="feature_encoder_norm"):
        model_configs("raft_stereo_tiny", "model.feature_encoder_norm=group")


def test_activation_checkpointing_is_a_config_key_that_reaches_the_model(model_configs):
    cfg = model_configs("raft_stereo_tiny", "model.activation_checkpointing=true")
    assert models.build_model(OmegaConf.to_object(cfg)).activation_checkpointing is True
