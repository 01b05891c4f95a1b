"""CREStereo: published layout, equality with torchvision's prototype, forward semantics, gradients, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from stereo_exp.models import build_model, register_configs
from stereo_exp.models.crestereo import (
    AdaptiveGroupCorrelation,
    CREStereoConfig,
    PositionalEncodingSine,
    SearchWindow,
    crestereo_base,
    crestereo_tiny,
)
from stereo_exp.models.inference import predict_disparity
from stereo_exp.models.weights import CREStereo_Base_Weights, parameter_count
from stereo_exp.testing.weights_layout import layout_state_dict, read_layout
from tests.crestereo_oracle import CASES, Case, oracle_inputs, summarise

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
FIXTURE = Path(__file__).parent / "fixtures" / "crestereo_prototype_outputs.pt"


def _pair(height: int = 32, width: int = 48, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    left = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    return left, torch.roll(left, shifts=-2, dims=-1)


@pytest.fixture(scope="module")
def base_with_layout_weights() -> torch.nn.Module:
    """crestereo_base with the seeded layout-shaped weights the prototype fixture was recorded with."""
    model = crestereo_base()
    state_dict = layout_state_dict("crestereo_base", seed=0)
    state_dict["positional_encodings.pe"] = model.positional_encodings.pe  # the fixture used the prototype's own table
    model.load_state_dict(state_dict, strict=True)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Published layout
# ----------------------------------------------------------------------------------------------------------------


def test_crestereo_base_has_the_published_parameter_count():
    model = crestereo_base()
    assert parameter_count(model) == 5_432_948  # torchvision's num_params for every CREStereo checkpoint
    assert CREStereo_Base_Weights.MEGVII_V1.value.num_params == 5_432_948


def test_crestereo_base_state_dict_has_exactly_the_published_keys_shapes_and_dtypes():
    state_dict = crestereo_base().state_dict()
    layout = read_layout("crestereo_base")
    assert list(state_dict) == [entry.key for entry in layout]  # same keys, same order
    for entry in layout:
        assert tuple(state_dict[entry.key].shape) == entry.shape, entry.key
        assert state_dict[entry.key].dtype == entry.dtype, entry.key


def test_a_layout_shaped_state_dict_loads_strictly_and_sets_every_tensor():
    model = crestereo_base()
    state_dict = layout_state_dict("crestereo_base", seed=3)
    model.load_state_dict(state_dict, strict=True)
    loaded = model.state_dict()
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value), key


def test_positional_encoding_reproduces_the_published_table():
    pe = PositionalEncodingSine(256, max_size=8).pe  # (1, 256, 8, 8); positions are 1-based, frequencies exp(-2i)
    assert pe.shape == (1, 256, 8, 8)
    assert pe[0, 0, 0, 0].item() == pytest.approx(math.sin(1.0))  # sin(x=1 * f_0=1)
    assert pe[0, 1, 0, 2].item() == pytest.approx(math.cos(3.0))  # cos(x=3 * f_0)
    assert pe[0, 2, 3, 0].item() == pytest.approx(math.sin(4.0))  # sin(y=4 * f_0)
    assert pe[0, 7, 4, 6].item() == pytest.approx(math.cos(5 * math.exp(-2.0)))  # cos(y=5 * f_1)
    assert pe[0, 252, 0, 0].item() == pytest.approx(math.sin(math.exp(-126.0)), abs=1e-30)  # f_63 = e^-126: ~0


# ----------------------------------------------------------------------------------------------------------------
# Equality with torchvision's prototype (outputs recorded in tests/fixtures, see tests/crestereo_oracle.py)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_outputs_equal_torchvision_prototype_with_the_same_weights(base_with_layout_weights, case: Case):
    model = base_with_layout_weights.train(case.training)
    left, right, flow_init = oracle_inputs()
    with torch.no_grad():
        if case.n_cascades > 1:
            predictions = [predict_disparity(model, left, right, num_iters=case.num_iters, n_cascades=case.n_cascades)]
        else:
            predictions = model(left, right, flow_init if case.with_init else None, num_iters=case.num_iters)
    expected = torch.load(FIXTURE, weights_only=True)[case.name]
    ours = summarise(predictions)
    assert ours["means"].shape == expected["means"].shape  # same number of predictions
    torch.testing.assert_close(ours["means"], expected["means"], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours["last"], expected["last"], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Forward semantics
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_iters", [1, 4, 5])
def test_without_flow_init_every_update_of_every_level_is_returned_at_full_resolution(num_iters):
    model = crestereo_tiny().train()
    left, right = _pair(batch=2)
    predictions = model(left, right, num_iters=num_iters)
    # num_iters // 2 at 1/16, num_iters // 2 at 1/8, num_iters at 1/4
    assert len(predictions) == 2 * (num_iters // 2) + num_iters
    assert all(p.shape == (2, 1, 32, 48) for p in predictions)


def test_with_flow_init_only_the_quarter_resolution_updates_run():
    model = crestereo_tiny().eval()
    left, right = _pair()
    with torch.no_grad():
        predictions = model(left, right, flow_init=torch.ones(1, 1, 16, 24), num_iters=3)
    assert len(predictions) == 3
    assert all(p.shape == (1, 1, 32, 48) for p in predictions)


def test_flow_init_is_a_positive_disparity_rescaled_from_its_own_grid():
    model = crestereo_tiny().eval()
    # With a zero update head nothing changes the initial flow, so every prediction is flow_init brought to full
    # resolution: 2.5 px on a half-resolution grid is 5 px at full resolution.
    torch.nn.init.zeros_(model.update_block.flow_head.conv2.weight)
    torch.nn.init.zeros_(model.update_block.flow_head.conv2.bias)
    left, right = _pair()
    with torch.no_grad():
        from_half = model(left, right, flow_init=torch.full((1, 1, 16, 24), 2.5), num_iters=2)
        from_full = model(left, right, flow_init=torch.full((1, 1, 32, 48), 5.0), num_iters=2)
        from_scratch = model(left, right, num_iters=2)
    # Convex upsampling pads with zeros, so only pixels away from the border keep the exact value.
    for prediction in (*from_half, *from_full):
        torch.testing.assert_close(prediction[..., 4:-4, 4:-4], torch.full((1, 1, 24, 40), 5.0))
    assert all(torch.count_nonzero(p) == 0 for p in from_scratch)


def test_correlation_peaks_where_the_flow_points_at_the_match():
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(1, 128, 6, 24, generator=generator)  # 64 channels per group: the self-match clearly wins
    right = torch.roll(left, shifts=-3, dims=-1)  # x_right = x_left - 3: a disparity of 3 px
    correlation = AdaptiveGroupCorrelation(groups=2)
    window = SearchWindow((1, 9))  # candidates dx = -4 .. 4
    zero_flow = torch.zeros(1, 2, 6, 24)
    matched_flow = torch.cat([torch.full((1, 1, 6, 24), -3.0), torch.zeros(1, 1, 6, 24)], dim=1)  # flow x = -d
    interior = (..., slice(5, 19))
    best_from_zero = correlation(left, right, zero_flow, window).reshape(1, 2, 9, 6, 24).argmax(dim=2)  # per group
    best_from_match = correlation(left, right, matched_flow, window).reshape(1, 2, 9, 6, 24).argmax(dim=2)
    assert (best_from_zero[interior] == 1).all()  # candidate 1 is dx = -3
    assert (best_from_match[interior] == 4).all()  # the centre candidate


def test_deformable_window_with_zero_offsets_equals_the_fixed_window_for_a_constant_flow():
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(2, 1, 8, 9, 12, generator=generator)
    flow = torch.tensor([-1.3, 0.4]).view(1, 2, 1, 1).expand(1, 2, 9, 12)
    correlation = AdaptiveGroupCorrelation(groups=4)
    window = SearchWindow((3, 3))
    fixed = correlation(left, right, flow, window)
    deformable = correlation(left, right, flow, window, extra_offsets=torch.zeros(1, 18, 9, 12))
    # Fixed: warp by the flow, then shift with replicated borders; deformable: sample every candidate directly (zeros
    # outside). Equal wherever neither the flow nor the window reaches outside the image.
    torch.testing.assert_close(deformable[..., 2:-2, 3:-2], fixed[..., 2:-2, 3:-2], atol=1e-5, rtol=0)


def test_inputs_of_other_sizes_are_rejected_with_both_shapes_in_the_message():
    model = crestereo_tiny()
    with pytest.raises(ValueError, match=r"multiples of model.size_multiple=16.*\(1, 3, 30, 48\).*\(1, 3, 30, 48\)"):
        model(torch.zeros(1, 3, 30, 48), torch.zeros(1, 3, 30, 48))
    with pytest.raises(ValueError, match=r"left \(1, 3, 32, 48\) and right \(1, 3, 32, 64\)"):
        model(torch.zeros(1, 3, 32, 48), torch.zeros(1, 3, 32, 64))
    with pytest.raises(ValueError, match=r"flow_init must be .* got \(1, 3, 8, 12\)"):
        model(torch.zeros(1, 3, 32, 48), torch.zeros(1, 3, 32, 48), flow_init=torch.zeros(1, 3, 8, 12))


def test_inputs_larger_than_the_positional_encoding_table_name_the_key():
    model = crestereo_tiny(positional_encoding_max_size=2)
    with pytest.raises(ValueError, match="positional_encoding_max_size=2"):
        model(torch.zeros(1, 3, 48, 48), torch.zeros(1, 3, 48, 48))


# ----------------------------------------------------------------------------------------------------------------
# Training properties
# ----------------------------------------------------------------------------------------------------------------


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = crestereo_tiny().train()
    left, right = _pair(batch=2)
    predictions = model(left, right, num_iters=2)
    sum(p.abs().mean() for p in predictions).backward()
    no_gradient = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert no_gradient == []


def test_the_same_seed_gives_the_same_model_and_output():
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        model = crestereo_tiny().eval()
        left, right = _pair()
        with torch.no_grad():
            return model(left, right, num_iters=2)[-1]

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))


def test_activation_checkpointing_changes_neither_outputs_nor_gradients():
    left, right = _pair()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = crestereo_tiny(activation_checkpointing=checkpointing).train()
        predictions = model(left, right, num_iters=2)
        sum(p.abs().mean() for p in predictions).backward()
        results.append((predictions[-1].detach(), [p.grad for p in model.parameters()]))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=0)
    for a, b in zip(checkpointed_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_configs():
    register_configs(ConfigStore.instance())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return {name: compose(overrides=[f"+model={name}"]).model for name in ("crestereo_base", "crestereo_tiny")}


@pytest.mark.parametrize(("name", "parameters"), [("crestereo_base", 5_432_948), ("crestereo_tiny", 244_228)])
def test_each_option_file_builds_its_model(model_configs, name, parameters):
    # Parameter counts: torchvision's published num_params (base); the tiny model's as it was first released.
    cfg = model_configs[name]
    assert cfg.name == name
    assert parameter_count(build_model(OmegaConf.to_object(cfg))) == parameters
    assert cfg.train_iters == {"crestereo_base": 10, "crestereo_tiny": 4}[name]


def test_the_schema_rejects_inconsistent_search_windows_naming_the_keys():
    with pytest.raises(ValueError, match=r"corr_search_window_1d.*corr_search_window_2d"):
        CREStereoConfig(name="crestereo_base", corr_search_window_2d=[3, 5])
    with pytest.raises(ValueError, match=r"model\.num_attention_heads=7"):
        CREStereoConfig(name="crestereo_base", num_attention_heads=7)
    with pytest.raises(ValueError, match=r"model\.train_iters must be >= 2"):
        CREStereoConfig(name="crestereo_base", train_iters=1)
    with pytest.raises(ValueError, match=r"model\.recurrent_block_hidden_state_size=256 must be between 0 and .* 256"):
        CREStereoConfig(recurrent_block_hidden_state_size=256)
    with pytest.raises(ValueError, match=r"model\.feature_downsample_rates must be increasing"):
        CREStereoConfig(feature_downsample_rates=[4, 2])
    with pytest.raises(ValueError, match=r"model\.attention='flash' is not one of linear, softmax"):
        CREStereoConfig(attention="flash")  # type: ignore[arg-type]
