"""Published-weights registry and ``load_weights``: names, files, checkpoints, hashes and errors. Nothing downloads:
files in the published layout are written here, and "downloads" read ``file://`` URLs."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf.errors import ConfigKeyError
from torch.nn.parallel import DistributedDataParallel

from stereo_exp.models import build_model, build_network, list_models, model_config, register_model
from stereo_exp.models.crestereo import crestereo_base, crestereo_tiny
from stereo_exp.models.registry import unwrap_ddp
from stereo_exp.models.weights import (
    WEIGHT_ENUMS,
    CREStereo_Base_Weights,
    PublishedWeights,
    Raft_Stereo_Base_Weights,
    Raft_Stereo_Realtime_Weights,
    load_weights,
    parameter_count,
    resolve_published,
)
from stereo_exp.testing.weights_layout import layout_state_dict, read_layout


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub cache for the test: torch.hub.get_dir() is $TORCH_HOME/hub."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub"


def _assert_loaded(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value), key


class NotATensor:
    """A picklable object: a file holding one cannot be read with weights_only=True."""


# ----------------------------------------------------------------------------------------------------------------
# The registry is true
# ----------------------------------------------------------------------------------------------------------------


def test_every_published_entry_names_its_file_hash_and_a_registered_builder():
    builders = set(list_models())
    for enum in WEIGHT_ENUMS:
        assert "DEFAULT" in enum.__members__, enum.__name__
        for name, member in enum.__members__.items():
            weights: PublishedWeights = member.value
            assert weights.url.startswith("https://download.pytorch.org/models/"), name
            assert weights.file_name.endswith(f"-{weights.sha256_prefix}.pth"), name
            assert weights.url == weights.url.strip(), name  # torchvision's FINETUNE_MULTI URL ends with a tab
            assert weights.builder in builders, name
            assert weights.metrics, name


@pytest.mark.parametrize("builder", ["crestereo_base", "raft_stereo_base", "raft_stereo_realtime"])
def test_recorded_parameter_counts_are_those_of_the_published_files_and_of_our_builders(builder):
    # Independent expectation: the keys and shapes of the published files (stereo_exp/testing/weights-layout),
    # whose "param" rows are the parameters (a second key for a shared parameter is of kind "other").
    published = sum(math.prod(entry.shape) for entry in read_layout(builder) if entry.kind == "param")
    recorded = {member.value.num_params for enum in WEIGHT_ENUMS for member in enum if member.value.builder == builder}
    assert recorded == {published}
    with torch.device("meta"):
        assert parameter_count(build_network(model_config(builder))) == published


def test_recorded_crestereo_metrics_are_the_published_tables():
    # references/depth/stereo/README.md: Middlebury 2014 train at 384x512
    eth_mbl = CREStereo_Base_Weights.CRESTEREO_ETH_MBL_V1.value
    assert eth_mbl.detailed_metrics[1][10]["mae"] == 1.416
    assert eth_mbl.metrics["middlebury2014-train"]["mae"] == 1.416
    assert CREStereo_Base_Weights.MEGVII_V1.value.detailed_metrics[2][20]["fl-all"] == 90.269
    assert CREStereo_Base_Weights.CRESTEREO_FINETUNE_MULTI_V1.value.detailed_metrics[1][2]["rmse"] == 3.797
    assert CREStereo_Base_Weights.MEGVII_V1.value.resize_size == (384, 512)


# ----------------------------------------------------------------------------------------------------------------
# Name resolution
# ----------------------------------------------------------------------------------------------------------------


def test_names_resolve_by_parameter_count_or_by_qualified_enum():
    cre, raft_base, raft_realtime = 5_432_948, 11_116_176, 8_077_152
    assert resolve_published("MEGVII_V1", cre) is CREStereo_Base_Weights.MEGVII_V1.value
    assert resolve_published("DEFAULT", raft_base) is Raft_Stereo_Base_Weights.MIDDLEBURY_V1.value
    assert resolve_published("SCENEFLOW_V1", raft_realtime) is Raft_Stereo_Realtime_Weights.SCENEFLOW_V1.value
    assert resolve_published("SCENEFLOW_V1", raft_base) is Raft_Stereo_Base_Weights.SCENEFLOW_V1.value
    qualified = "CREStereo_Base_Weights.CRESTEREO_ETH_MBL_V1"
    assert resolve_published(qualified, cre) is CREStereo_Base_Weights.CRESTEREO_ETH_MBL_V1.value


def test_an_ambiguous_name_for_a_model_of_another_size_names_the_candidates():
    with pytest.raises(ValueError, match=r"raft_stereo_base \(11,116,176 parameters\).*5,432,948"):
        resolve_published("SCENEFLOW_V1", 5_432_948)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"MEGVII_V2.*CREStereo_Base_Weights\.MEGVII_V1"):
        resolve_published("MEGVII_V2", 5_432_948)


# ----------------------------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------------------------


def test_a_state_dict_file_in_the_published_layout_loads_from_a_path(tmp_path):
    state_dict = layout_state_dict("crestereo_base", seed=1)
    path = tmp_path / "crestereo.pth"
    torch.save(state_dict, path)
    model = crestereo_base()
    load_weights(model, str(path))
    _assert_loaded(model, state_dict)


def test_a_training_checkpoint_of_a_ddp_model_loads_its_model_entry(tmp_path):
    torch.manual_seed(0)
    state_dict = crestereo_tiny().state_dict()
    checkpoint = {"model": {f"module.{k}": v for k, v in state_dict.items()}, "step": 7, "optimizer": {"state": {}}}
    path = tmp_path / "step_0000007.pth"
    torch.save(checkpoint, path)
    model = crestereo_tiny()
    load_weights(model, path)
    _assert_loaded(model, state_dict)


def test_the_model_weights_key_loads_a_file_through_build_model(tmp_path):
    torch.manual_seed(0)
    state_dict = crestereo_tiny().state_dict()
    torch.save(state_dict, tmp_path / "tiny.pth")
    _assert_loaded(build_model(model_config("crestereo_tiny", {"weights": str(tmp_path / "tiny.pth")})), state_dict)


def test_weights_of_another_architecture_name_the_model_and_the_file(tmp_path):
    path = tmp_path / "crestereo_tiny.pth"
    torch.save(crestereo_tiny().state_dict(), path)
    expected = r"crestereo_tiny\.pth does not fit this CREStereo model \(5,432,948 parameters\): .*file vs model shape"
    with pytest.raises(ValueError, match=expected):
        load_weights(crestereo_base(), str(path))


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth does not exist"):
        load_weights(crestereo_tiny(), str(tmp_path / "nowhere.pth"))


def test_a_truncated_file_names_the_path(tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(crestereo_tiny().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"Could not read weights file .*truncated\.pth"):
        load_weights(crestereo_tiny(), path)


def test_a_file_holding_other_objects_is_refused_without_running_them(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": crestereo_tiny().state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match="holds objects other than tensors and plain Python types, which are never"):
        load_weights(crestereo_tiny(), path)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"\x89PNG\r\n\x1a\n and the rest", r"it is not a file written by torch\.save \(it begins b'\\x89PNG"),
        (b"", "the file is empty"),
    ],
    ids=["image", "empty"],
)
def test_a_file_that_is_not_weights_is_named_with_its_cause_in_one_line(tmp_path, content, cause):
    # torch's own message ran to nine lines, advising weights_only=False (which would let the file run code).
    path = tmp_path / "left.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^Could not read weights file {re.escape(str(path))}: {cause}") as refused:
        load_weights(crestereo_tiny(), path)
    assert "\n" not in str(refused.value) and "weights_only" not in str(refused.value)


def test_weights_with_nan_name_the_tensor(tmp_path):
    state_dict = crestereo_tiny().state_dict()
    state_dict["mask_predictor.mask_head.1.bias"][3] = float("nan")
    torch.save(state_dict, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=r"'mask_predictor\.mask_head\.1\.bias' holds NaN"):
        load_weights(crestereo_tiny(), tmp_path / "nan.pth")


# ----------------------------------------------------------------------------------------------------------------
# Published names: torch.hub cache and hash (file:// URLs stand in for the download server)
# ----------------------------------------------------------------------------------------------------------------


def _published_copy(tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> PublishedWeights:
    staging = tmp_path / "staging.pth"
    torch.save(state_dict, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    server = tmp_path / "server"
    server.mkdir()
    source = server / f"crestereo_tiny-{digest[:8]}.pth"
    staging.rename(source)
    return PublishedWeights(
        builder="crestereo_tiny",
        url=source.as_uri(),
        sha256_prefix=digest[:8],
        num_params=parameter_count(crestereo_tiny()),
        recipe="tests",
        resize_size=(32, 48),
        metrics={"none": {}},
    )


def test_published_weights_are_fetched_into_the_hub_cache_and_loaded(tmp_path, hub_dir):
    torch.manual_seed(0)
    state_dict = crestereo_tiny().state_dict()
    weights = _published_copy(tmp_path, state_dict)
    model = crestereo_tiny()
    load_weights(model, weights, progress=False)
    _assert_loaded(model, state_dict)
    assert (hub_dir / "checkpoints" / weights.file_name).is_file()


def test_a_corrupted_cached_file_fails_the_hash_check(tmp_path, hub_dir):
    weights = _published_copy(tmp_path, crestereo_tiny().state_dict())
    cached = hub_dir / "checkpoints" / weights.file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the published file")
    with pytest.raises(RuntimeError, match=f"published with prefix {weights.sha256_prefix}"):
        load_weights(crestereo_tiny(), weights)


def test_a_published_name_is_looked_up_in_the_hub_cache_and_hash_checked(hub_dir):
    cached = hub_dir / "checkpoints" / "crestereo-756c8b0f.pth"  # MEGVII_V1's file name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"something else")
    with pytest.raises(RuntimeError, match=r"crestereo-756c8b0f\.pth has SHA-256 .* prefix 756c8b0f"):
        load_weights(crestereo_base(), "CREStereo_Base_Weights.MEGVII_V1")


def test_offline_the_error_names_the_url_and_where_to_put_the_file(tmp_path, hub_dir):
    weights = PublishedWeights(
        builder="crestereo_tiny",
        url=(tmp_path / "unreachable" / "crestereo_tiny-deadbeef.pth").as_uri(),
        sha256_prefix="deadbeef",
        num_params=0,
        recipe="tests",
        resize_size=(32, 48),
        metrics={},
    )
    expected_path = hub_dir / "checkpoints" / "crestereo_tiny-deadbeef.pth"
    expected = f"Could not download {re.escape(weights.url)}.*put the file at {re.escape(str(expected_path))}"
    with pytest.raises(RuntimeError, match=expected):
        load_weights(crestereo_tiny(), weights, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Model names (stereo_exp.models.registry)
# ----------------------------------------------------------------------------------------------------------------


def test_a_model_name_of_another_family_or_an_unknown_one_says_what_to_choose():
    with pytest.raises(ValueError, match=r"model.name=raft_stereo_tiny is a RaftStereoConfig model.*model=raft_stereo"):
        dataclasses.replace(model_config("crestereo_tiny"), name="raft_stereo_tiny")
    with pytest.raises(ValueError, match=r"Unknown model 'crestereo_small' \(model.name\). Known models: crestereo"):
        dataclasses.replace(model_config("crestereo_tiny"), name="crestereo_small")


def test_a_registered_name_must_be_new():
    with pytest.raises(ValueError, match=r"A model named 'crestereo_tiny' already exists"):
        register_model("crestereo_tiny")(lambda config: config.build_network())


def test_stored_model_entries_with_an_unknown_key_are_refused_naming_it():
    with pytest.raises(ConfigKeyError, match="feature_encoder_width"):
        model_config("crestereo_tiny", {"name": "crestereo_tiny", "feature_encoder_width": 8})


def test_unwrap_ddp_finds_the_network_inside_a_real_ddp_wrapper(tmp_path):
    # One process, gloo: a real DistributedDataParallel wrapper, as every rank of a run holds one.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        network = crestereo_tiny()
        assert unwrap_ddp(DistributedDataParallel(network)) is network
        assert unwrap_ddp(network) is network
    finally:
        dist.destroy_process_group()
