"""The dataset catalog on tiny replicas in the real on-disk formats (stereo_exp/testing/dataset_replicas.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError
from PIL import Image

from stereo_exp.data.catalog import (
    DatasetFileError,
    DatasetRootError,
    build_dataset,
    check_dataset_root,
    describe_dataset,
    list_datasets,
)
from stereo_exp.data.checks import check_datasets
from stereo_exp.data.options import (
    Calibration,
    DatasetOptions,
    ETH3DOptions,
    FallingThingsOptions,
    FallingThingsVariant,
    FlyingThingsSubset,
    InStereo2kOptions,
    Middlebury2014Options,
    MiddleburySplitOptions,
    RenderPass,
    SceneFlowOptions,
    SintelOptions,
)
from stereo_exp.data.synthetic import SyntheticConfig
from stereo_exp.testing.dataset_replicas import (
    REPLICAS,
    write_carla_highres,
    write_instereo2k,
    write_kitti2015,
    write_middlebury2014,
    write_pfm,
    write_png,
    write_replica,
    write_sceneflow,
    write_sintel,
)

EMBEDDED = ("motorcycle", "synthetic", "synthetic-val")
ON_DISK = [name for name in list_datasets() if name not in EMBEDDED]
SUBSET = FlyingThingsSubset
RAW_KEYS = {"left", "right", "disparity", "valid", "disparity_right", "valid_right", "dataset", "index", "path"}


def middlebury(**splits: MiddleburySplitOptions) -> DatasetOptions:
    return DatasetOptions(middlebury2014=Middlebury2014Options(**splits))


def read_all(name: str, root: Path, options: DatasetOptions | None = None) -> dict[str, dict]:
    """Every raw sample of ``name`` by its path (test splits too: they are read with require_disparity=False)."""
    dataset = build_dataset(name, data_root=root, options=options, require_disparity=False)
    return {sample["path"]: sample for sample in (dataset[i] for i in range(len(dataset)))}


def test_the_catalog_names_every_dataset_of_the_published_recipes():
    recipes = {
        "crestereo",
        "eth3d-train",
        "middlebury2014-train",
        "middlebury2014-other",
        "middlebury2014-test",
        "instereo2k",
        "fallingthings",
        "carla-highres",
        "sintel",
        "sceneflow-monkaa",
        "sceneflow-driving",
        "sceneflow-flyingthings",
        "kitti2012-train",
        "kitti2015-train",
        "synthetic",
        "synthetic-val",
        "motorcycle",
    }
    assert recipes <= set(list_datasets())
    assert set(REPLICAS) == set(ON_DISK)  # every on-disk name has a replica writer


@pytest.mark.parametrize("name", ON_DISK)
def test_each_name_reads_its_replica_with_exact_disparities_masks_and_right_views(name, tmp_path):
    expected = {str(s.left_path): s for s in write_replica(name, tmp_path)}
    samples = read_all(name, tmp_path)
    assert check_dataset_root(name, tmp_path) == len(samples) == len(expected)
    assert samples.keys() == expected.keys()
    for path, sample in samples.items():
        want = expected[path]
        assert sample.keys() == RAW_KEYS and sample["dataset"] == name
        assert sample["left"].dtype == np.uint8 and sample["left"].flags.writeable
        np.testing.assert_array_equal(sample["left"], want.left)
        if "right_views" in want.extras:  # ambient views: any of im1, im1E, im1L
            assert any(np.array_equal(sample["right"], view) for view in want.extras["right_views"])
        else:
            np.testing.assert_array_equal(sample["right"], want.right)
        if want.disparity is None:
            assert sample["disparity"] is None and sample["valid"] is None
            continue
        assert sample["disparity"].dtype == np.float32 and sample["valid"].dtype == np.bool_
        np.testing.assert_array_equal(sample["valid"], want.valid)
        assert 0 < want.valid.sum() < want.valid.size or want.valid.all()
        np.testing.assert_array_equal(sample["disparity"][want.valid], want.disparity[want.valid])  # bit-exact
        if want.disparity_right is None:
            assert sample["disparity_right"] is None and sample["valid_right"] is None
        else:
            np.testing.assert_array_equal(sample["valid_right"], want.valid_right)
            np.testing.assert_array_equal(
                sample["disparity_right"][want.valid_right], want.disparity_right[want.valid_right]
            )


@pytest.mark.parametrize("name", ON_DISK)
def test_a_missing_root_fails_before_training_with_the_layout_and_the_download_page(name, tmp_path):
    with pytest.raises(DatasetRootError) as error:
        check_dataset_root(name, tmp_path)
    message = str(error.value)
    assert name in message and str(tmp_path) in message
    assert "Expected layout" in message and "Download: http" in message
    assert describe_dataset(name, tmp_path) in message


def test_a_missing_paths_data_folder_is_named(tmp_path):
    with pytest.raises(DatasetRootError, match="is not a folder"):
        build_dataset("crestereo", data_root=tmp_path / "nowhere")


def test_a_missing_disparity_file_is_reported_before_any_sample_is_read(tmp_path):
    write_replica("eth3d-train", tmp_path)
    (tmp_path / "ETH3D" / "two_view_training_gt" / "electro_1l" / "disp0GT.pfm").unlink()
    with pytest.raises(DatasetRootError, match="2 image pairs but 1 disparity files"):
        check_dataset_root("eth3d-train", tmp_path)


def test_files_paired_across_folders_by_sort_order_alone_are_caught(tmp_path):
    # Same counts, different frames: torchvision would pair 000001_10 (left) with 000007_10 (right).
    write_replica("kitti2012-train", tmp_path)
    right = tmp_path / "Kitti2012" / "training" / "colored_1"
    (right / "000001_10.png").rename(right / "000007_10.png")
    with pytest.raises(DatasetRootError, match=r"1 of 2 samples pair files of different scenes or frames"):
        build_dataset("kitti2012-train", data_root=tmp_path)


def test_missing_sintel_masks_are_reported_before_training(tmp_path):
    write_replica("sintel", tmp_path)
    (tmp_path / "Sintel" / "training" / "outofframe" / "alley_1" / "frame_0001.png").unlink()
    with pytest.raises(DatasetRootError, match=r"1 companion files are missing(.|\n)*outofframe/alley_1"):
        check_dataset_root("sintel", tmp_path)


def test_kitti2015_keeps_the_t_frames_and_never_takes_disp_occ_1_for_the_right_view(tmp_path):
    expected = write_kitti2015(tmp_path, frames=2)
    # The folders hold frames t and t+1; torchvision (0.29) lists both against t-only disparities (pytorch/vision#7128).
    assert len(list((tmp_path / "Kitti2015" / "training" / "image_2").glob("*_11.png"))) == 2
    samples = read_all("kitti2015-train", tmp_path)
    assert len(samples) == 2
    for want in expected:
        sample = samples[str(want.left_path)]
        assert sample["disparity_right"] is None  # disp_occ_1 is frame t+1's disparity
        assert not np.array_equal(sample["disparity"], want.extras["disp_occ_1"])


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    path.write_bytes(b"not an image" * 8)


@pytest.mark.parametrize(
    ("name", "relative", "damage"),
    [
        ("middlebury2014-train", "Middlebury2014/train/Adirondack-perfect/im0.png", truncate),  # PNG image
        ("middlebury2014-train", "Middlebury2014/train/Jadeplant-perfect/disp1.pfm", truncate),  # right PFM
        ("kitti2015-train", "Kitti2015/training/disp_occ_0/000001_10.png", truncate),  # 16-bit PNG
        ("crestereo", "CREStereo/tree/tree0000_right.jpg", truncate),  # JPEG
        ("eth3d-train", "ETH3D/two_view_training/electro_1l/im1.png", garble),  # not an image at all
        ("eth3d-train", "ETH3D/two_view_training_gt/electro_1l/mask0nocc.png", truncate),
        ("sintel", "Sintel/training/occlusions/bamboo_2/frame_0001.png", truncate),
        ("fallingthings", "FallingThings/mixed/kitchen_0/_camera_settings.json", truncate),
        ("carla-highres", "carla-highres/trainingF/scene1/disp0GT.pfm", garble),
    ],
)
def test_a_corrupt_or_truncated_file_raises_an_error_naming_the_file(name, relative, damage, tmp_path):
    write_replica(name, tmp_path)
    damage(tmp_path / relative)
    dataset = build_dataset(name, data_root=tmp_path)
    with pytest.raises(DatasetFileError, match=f"cannot read {tmp_path / relative}"):
        for index in range(len(dataset)):
            dataset[index]


def test_left_and_right_views_of_different_sizes_name_both_files_and_sizes(tmp_path):
    write_carla_highres(tmp_path, size=(24, 32))
    scene = tmp_path / "carla-highres" / "trainingF" / "scene0"
    write_png(scene / "im1.png", np.zeros((24, 30, 3), np.uint8))
    with pytest.raises(ValueError) as error:
        build_dataset("carla-highres", data_root=tmp_path)[0]
    message = str(error.value)
    assert f"{scene / 'im0.png'} is 24x32 (HxW)" in message and f"{scene / 'im1.png'} is 24x30 (HxW)" in message


def test_a_disparity_of_another_size_than_its_image_names_the_file(tmp_path):
    write_carla_highres(tmp_path, size=(24, 32))
    disparity = tmp_path / "carla-highres" / "trainingF" / "scene0" / "disp0GT.pfm"
    write_pfm(disparity, np.ones((12, 16), np.float32))
    with pytest.raises(ValueError, match=f"disparity {disparity} is 12x16 \\(HxW\\)"):
        build_dataset("carla-highres", data_root=tmp_path)[0]


def test_non_finite_disparities_are_invalid_not_errors(tmp_path):
    write_carla_highres(tmp_path, size=(24, 32))
    disparity = np.ones((24, 32), np.float32)
    disparity[0, :6] = [np.nan, np.inf, -np.inf, 0.0, 5.0, -3.0]  # torchvision takes |d| for CARLA
    write_pfm(tmp_path / "carla-highres" / "trainingF" / "scene0" / "disp0GT.pfm", disparity)
    sample = build_dataset("carla-highres", data_root=tmp_path)[0]
    assert sample["valid"][0, :6].tolist() == [False, False, False, False, True, True]
    assert sample["disparity"][0, 5] == 3.0
    assert sample["valid"].sum() == 24 * 32 - 4  # nan, inf, -inf and 0


def test_the_dataset_mask_makes_finite_positive_disparities_invalid(tmp_path):
    write_replica("sintel", tmp_path)
    sample = build_dataset("sintel", data_root=tmp_path)[0]
    disparity, valid = sample["disparity"], sample["valid"]
    assert np.isfinite(disparity).all()
    assert (valid == (disparity > 0) & valid).all() and ((disparity > 0) & ~valid).any()


def test_motorcycle_loads_offline_from_scikit_image_with_infinite_disparities_invalid():
    dataset = build_dataset("motorcycle", data_root="/nonexistent")  # embedded: paths.data is not read
    assert len(dataset) == 1 and check_dataset_root("motorcycle", "/nonexistent") == 1
    sample = dataset[0]
    assert sample.keys() == RAW_KEYS and sample["dataset"] == "motorcycle"
    assert sample["left"].shape == sample["right"].shape == (500, 741, 3) and sample["left"].dtype == np.uint8
    assert np.isposinf(sample["disparity"]).sum() == 27_226  # the pixels without ground truth in scikit-image 0.26
    assert sample["valid"].sum() == 500 * 741 - 27_226
    assert sample["disparity"][sample["valid"]].min() == pytest.approx(7.19, abs=0.01)
    assert sample["disparity"][sample["valid"]].max() == pytest.approx(59.91, abs=0.01)
    assert sample["disparity_right"] is None and sample["valid_right"] is None


def test_synthetic_names_build_the_train_and_held_out_splits_from_the_options():
    options = DatasetOptions(synthetic=SyntheticConfig(height=24, width=32, train_samples=3, val_samples=2))
    train = build_dataset("synthetic", data_root="/nonexistent", options=options)
    val = build_dataset("synthetic-val", data_root="/nonexistent", options=options)
    assert (len(train), len(val)) == (3, 2)
    assert (train[0]["dataset"], val[0]["dataset"]) == ("synthetic", "synthetic-val")
    assert train[0]["left"].shape == (24, 32, 3) and not np.array_equal(train[0]["left"], val[0]["left"])


def test_test_splits_without_ground_truth_are_refused_unless_asked_for_prediction(tmp_path):
    write_replica("middlebury2014-test", tmp_path)
    with pytest.raises(ValueError, match=r"no ground-truth disparity.*require_disparity=False"):
        build_dataset("middlebury2014-test", data_root=tmp_path)
    sample = build_dataset("middlebury2014-test", data_root=tmp_path, require_disparity=False)[0]
    assert sample["disparity"] is None and sample["left"].shape == (24, 32, 3)


def test_middlebury_ambient_views_are_drawn_from_the_callers_generator(tmp_path):
    views = write_middlebury2014(tmp_path, split="additional")[0].extras["right_views"]
    dataset = build_dataset("middlebury2014-other", data_root=tmp_path)

    def drawn(seed: int) -> int:
        right = dataset.load(0, rng=np.random.default_rng(seed))["right"]
        return next(i for i, view in enumerate(views) if np.array_equal(right, view))

    draws = [drawn(seed) for seed in range(12)]
    assert draws == [drawn(seed) for seed in range(12)]  # same generator state, same view
    assert set(draws) == {0, 1, 2}  # im1, im1E, im1L all drawn


def test_instereo2k_follows_the_official_scale_of_100_unless_configured(tmp_path):
    want = write_instereo2k(tmp_path)[0]
    values = np.array(Image.open(tmp_path / "InStereo2k" / "train" / "000001" / "left_disp.png"))
    sample = read_all("instereo2k", tmp_path)[str(want.left_path)]
    np.testing.assert_array_equal(sample["disparity"], values.astype(np.float32) / np.float32(100))
    legacy_options = DatasetOptions(instereo2k=InStereo2kOptions(disparity_scale=1024.0))
    legacy = read_all("instereo2k", tmp_path, legacy_options)[str(want.left_path)]
    np.testing.assert_array_equal(legacy["disparity"], values.astype(np.float32) / np.float32(1024))


def test_eth3d_non_occluded_only_keeps_the_benchmark_noc_pixels(tmp_path):
    expected = {str(s.left_path): s for s in write_replica("eth3d-train", tmp_path)}
    options = DatasetOptions(eth3d=ETH3DOptions(non_occluded_only=True))
    for path, sample in read_all("eth3d-train", tmp_path, options).items():
        mask = expected[path].extras["mask0nocc"]
        np.testing.assert_array_equal(sample["valid"], mask == 255)
        assert ((mask == 128) & expected[path].valid).any()  # occluded ground truth, valid by default


@pytest.mark.parametrize(
    ("name", "options", "count"),
    [
        ("sceneflow-flyingthings", DatasetOptions(), 4),  # TRAIN only: 2 frames x 2 passes
        ("sceneflow-flyingthings", DatasetOptions(sceneflow=SceneFlowOptions(flyingthings_subset=SUBSET.test)), 4),
        ("sceneflow-flyingthings", DatasetOptions(sceneflow=SceneFlowOptions(flyingthings_subset=SUBSET.both)), 8),
        ("sceneflow-flyingthings", DatasetOptions(sceneflow=SceneFlowOptions(pass_name=RenderPass.clean)), 2),
        ("sintel", DatasetOptions(), 2),  # final pass, 2 scenes
        ("sintel", DatasetOptions(sintel=SintelOptions(pass_name=RenderPass.both)), 4),
        ("fallingthings", DatasetOptions(fallingthings=FallingThingsOptions(FallingThingsVariant.single)), 1),
        ("middlebury2014-train", middlebury(train=MiddleburySplitOptions(Calibration.both)), 4),
        (
            "middlebury2014-other",
            middlebury(other=MiddleburySplitOptions(Calibration.imperfect, use_ambient_views=True)),
            2,
        ),
    ],
)
def test_options_choose_the_passes_variants_subsets_and_calibrations(name, options, count, tmp_path):
    write_sceneflow(tmp_path, variant="FlyingThings3D")
    write_sintel(tmp_path)
    write_replica("fallingthings", tmp_path)
    write_middlebury2014(tmp_path, split="train")
    write_middlebury2014(tmp_path, split="additional")
    samples = read_all(name, tmp_path, options)
    assert len(samples) == count
    if name == "sceneflow-flyingthings":
        subset = options.sceneflow.flyingthings_subset.value
        found = {part for path in samples for part in Path(path).parts if part in ("TRAIN", "TEST")}
        assert found == {"train": {"TRAIN"}, "test": {"TEST"}, "both": {"TRAIN", "TEST"}}[subset]


def test_bad_option_values_name_the_key():
    schema = OmegaConf.structured(DatasetOptions)
    with pytest.raises(ValidationError, match="dirty"):  # in the config: OmegaConf's enum check at composition
        OmegaConf.merge(schema, {"sintel": {"pass_name": "dirty"}})
    with pytest.raises(ValueError, match="must be > 0"):  # the schema's own check, when the config is converted
        OmegaConf.to_object(OmegaConf.merge(schema, {"instereo2k": {"disparity_scale": 0.0}}))
    # Options built in Python skip both; the catalog names the key.
    with pytest.raises(ValueError, match=r"datasets\.sintel\.pass_name='dirty' is not one of clean \| final \| both"):
        build_dataset("sintel", data_root="/", options=DatasetOptions(sintel=SintelOptions(pass_name="dirty")))


def test_build_dataset_takes_the_datasets_node_of_the_config_converted_once(tmp_path):
    write_sintel(tmp_path)  # both passes
    node = OmegaConf.merge(OmegaConf.structured(DatasetOptions), {"sintel": {"pass_name": "both"}})
    assert len(build_dataset("sintel", data_root=str(tmp_path), options=OmegaConf.to_object(node))) == 4


def test_an_unknown_name_lists_the_catalog():
    with pytest.raises(ValueError, match=r"Unknown dataset 'middlebury2014-additional'.*middlebury2014-other"):
        build_dataset("middlebury2014-additional", data_root="/")


def test_catalog_datasets_pickle_for_dataloader_workers(tmp_path):
    write_replica("middlebury2014-other", tmp_path)
    dataset = build_dataset("middlebury2014-other", data_root=tmp_path)
    copy = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(copy[1]["disparity"], dataset[1]["disparity"])


def test_docs_describe_every_catalog_name_with_its_download_page():
    text = (Path(__file__).parents[1] / "docs" / "DATASETS.md").read_text()
    for name in list_datasets():
        assert f"`{name}`" in text, name
        description = describe_dataset(name)
        if "Download: " in description:
            url = description.split("Download: ")[1].split()[0]
            assert url in text, (name, url)


def test_every_unusable_dataset_of_a_list_is_named_in_one_error(tmp_path):
    # A mix of several datasets used to stop at the first missing one: one run per missing dataset to find them all.
    write_replica("eth3d-train", tmp_path)
    with pytest.raises(DatasetRootError) as error:
        check_datasets(["crestereo", "eth3d-train", "sintel"], key="mix.datasets", data_root=tmp_path)
    lines = str(error.value).splitlines()
    assert lines[0] == "mix.datasets: 2 of 3 datasets cannot be used:"
    assert lines[1].startswith(f"Dataset 'crestereo' is missing or incomplete under paths.data='{tmp_path}'")
    assert sum(line.startswith("Dataset 'sintel' is missing") for line in lines) == 1
    assert not any("'eth3d-train'" in line for line in lines)
