"""``python -m stereo_exp.predict`` (predict.py): any image size, PFM / .npy and PNG outputs, globs, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from torchvision.datasets._stereo_matching import _read_pfm_file

from stereo_exp.config import register_configs
from stereo_exp.data.transforms import image_to_tensor, normalize
from stereo_exp.engine.checkpoint import save_checkpoint
from stereo_exp.models import build_model
from stereo_exp.models.inference import predict_disparity
from stereo_exp.predict import build_parser, main
from tests.conftest import CONF_DIR

HEIGHT, WIDTH = 37, 53  # odd: neither divides the model's size multiple


@pytest.fixture
def weights(tmp_path) -> Path:
    """A training checkpoint of ours with a seeded raft_stereo_tiny."""
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        model_cfg = compose("evaluate", overrides=["model=raft_stereo_tiny", "tracking=none"]).model
    torch.manual_seed(0)
    config = {"model": OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)}
    return save_checkpoint(
        tmp_path / "m.pth", {"model": build_model(model_cfg).state_dict(), "step": 1, "config": config}
    )


def write_pair(folder: Path, *, size: tuple[int, int] = (HEIGHT, WIDTH), seed: int = 0) -> tuple[Path, Path]:
    """A textured left image and the right view shifted by 4 px, as PNG files."""
    rng = np.random.default_rng(seed)
    left = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    right = np.roll(left, -4, axis=1)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(left).save(folder / "left.png")
    Image.fromarray(right).save(folder / "right.png")
    return folder / "left.png", folder / "right.png"


def test_an_odd_sized_pair_gives_a_pfm_of_the_same_size_and_a_png_with_a_colour_bar(tmp_path, weights):
    left, right = write_pair(tmp_path)
    out = tmp_path / "out" / "disp.pfm"
    assert main([str(left), str(right), "-o", str(out), "--weights", str(weights), "--iters", "2"]) == 0

    disparity = _read_pfm_file(out)  # torchvision's reader: the file is a real PFM
    assert disparity.shape == (1, HEIGHT, WIDTH)
    # Known answer: the model run directly on the pixels of the files, normalised as training and evaluation
    # normalise them (data/transforms.py), not by predict's own reader.
    model = build_model(OmegaConf.create(torch.load(weights, weights_only=True)["config"]["model"]))
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    left_image, right_image = (normalize(image_to_tensor(np.asarray(Image.open(p))))[None] for p in (left, right))
    with torch.inference_mode():
        expected = predict_disparity(model.eval(), left_image, right_image, num_iters=2)
    np.testing.assert_array_equal(disparity[0], expected[0, 0].numpy())

    png = Image.open(out.with_suffix(".png"))
    assert png.width > WIDTH and png.height >= HEIGHT  # the disparity plus a colour bar beside it


def test_a_npy_output_name_writes_numpy_and_cascades_run_on_odd_sizes(tmp_path, weights):
    left, right = write_pair(tmp_path)
    out = tmp_path / "disp.npy"
    args = [str(left), str(right), "-o", str(out), "--weights", str(weights), "--iters", "1", "--cascades", "2"]
    assert main(args) == 0
    disparity = np.load(out)
    assert disparity.shape == (HEIGHT, WIDTH) and disparity.dtype == np.float32 and np.isfinite(disparity).all()


def test_glob_patterns_pair_sorted_matches_and_name_outputs_by_their_folder(tmp_path, weights):
    for seed, scene in enumerate(("Adirondack", "Jadeplant")):  # Middlebury-like: every left image is im0.png
        left, right = write_pair(tmp_path / "scenes" / scene, size=(20, 30), seed=seed)
        left.rename(left.with_name("im0.png"))
        right.rename(right.with_name("im1.png"))
    pattern = str(tmp_path / "scenes" / "*" / "im{}.png")
    out = tmp_path / "pred"
    assert main([pattern.format(0), pattern.format(1), "-o", str(out), "--weights", str(weights), "--iters", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "Adirondack_im0.pfm",
        "Adirondack_im0.png",
        "Jadeplant_im0.pfm",
        "Jadeplant_im0.png",
    ]


def test_images_of_different_sizes_are_an_error_naming_both_files_and_sizes(tmp_path, weights, capsys):
    left, _ = write_pair(tmp_path / "a")
    _, right = write_pair(tmp_path / "b", size=(HEIGHT, WIDTH + 1))
    assert main([str(left), str(right), "-o", str(tmp_path / "d.pfm"), "--weights", str(weights)]) == 2
    message = capsys.readouterr().err
    assert f"{left} is 53x37 (WxH)" in message and f"{right} is 54x37" in message
    assert not (tmp_path / "d.pfm").exists()


def test_an_unreadable_or_missing_image_is_named(tmp_path, weights, capsys):
    left, right = write_pair(tmp_path)
    left.write_bytes(left.read_bytes()[:60])  # truncated PNG
    assert main([str(left), str(right), "--weights", str(weights)]) == 2
    assert f"Cannot read image {left}" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.png"), str(right), "--weights", str(weights)]) == 2
    assert f"Image {tmp_path / 'nope.png'} does not exist" in capsys.readouterr().err


def test_patterns_with_different_match_counts_or_a_png_output_name_are_refused(tmp_path, capsys):
    write_pair(tmp_path / "a")
    write_pair(tmp_path / "b")
    assert main([str(tmp_path / "*/left.png"), str(tmp_path / "a/right.png")]) == 2
    assert "matches 2 files but RIGHT" in capsys.readouterr().err
    assert main([str(tmp_path / "a/left.png"), str(tmp_path / "a/right.png"), "-o", str(tmp_path / "x.png")]) == 2
    assert "the PNG is written beside it" in capsys.readouterr().err


def test_without_weights_or_a_checkpoint_it_refuses_unless_random_weights_are_asked_for(tmp_path, capsys):
    left, right = write_pair(tmp_path)
    out = tmp_path / "pred" / "d.pfm"
    args = [str(left), str(right), "-o", str(out), "--checkpoints", str(tmp_path / "no_runs"), "--iters", "1"]
    assert main(args) == 2
    assert "No weights" in capsys.readouterr().err and "--random-weights" in build_parser().format_help()
    assert not out.parent.exists()  # nothing written
    assert main([*args, "--random-weights"]) == 0
    assert out.is_file() and out.with_suffix(".png").is_file()
    first = out.read_bytes()
    assert main([*args, "--random-weights", "--overwrite"]) == 0
    assert out.read_bytes() == first  # seeded (conf/evaluate.yaml's seed): the same noise every time


def test_outputs_never_replace_the_input_images_and_existing_ones_only_with_overwrite(tmp_path, weights, capsys):
    left, right = write_pair(tmp_path / "pair")
    images = {path: path.read_bytes() for path in (left, right)}
    base = [str(left), str(right), "--weights", str(weights), "--iters", "1"]
    # The PNG beside `-o left.pfm` is left.png; `-o` the images' own folder names the PNG after the left image.
    for output in (left.with_suffix(".pfm"), right.with_suffix(".npy"), left.parent):
        for overwrite in ([], ["--overwrite"]):
            assert main([*base, "-o", str(output), *overwrite]) == 2
            assert "would replace the input image" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in left.parent.iterdir()} == images  # nothing written, nothing changed

    out = tmp_path / "out" / "d.pfm"
    assert main([*base, "-o", str(out)]) == 0
    written = {path: path.read_bytes() for path in (out, out.with_suffix(".png"))}
    out.write_bytes(b"an earlier prediction")
    assert main([*base, "-o", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{out}, {out.with_suffix('.png')} already exist (2 of the 2 files" in error and "--overwrite" in error
    assert out.read_bytes() == b"an earlier prediction"
    assert main([*base, "-o", str(out), "--overwrite"]) == 0
    assert {path: path.read_bytes() for path in written} == written


def test_a_checkpoint_file_given_as_the_folder_to_search_says_to_pass_it_as_weights(tmp_path, weights, capsys):
    # argparse completes `--checkpoint m.pth` to --checkpoints, the folder searched for the newest checkpoint: it
    # used to say there was no checkpoint "under m.pth/".
    left, right = write_pair(tmp_path)
    assert main([str(left), str(right), "--checkpoint", str(weights), "-o", str(tmp_path / "d.pfm")]) == 2
    assert f"--checkpoints {weights} is a file; " in capsys.readouterr().err
    assert not (tmp_path / "d.pfm").exists()
    assert main([str(left), str(right), "--weights", str(weights), "-o", str(tmp_path / "d.pfm")]) == 0


def test_help_lists_the_options_and_examples():
    text = build_parser().format_help()
    for option in ("--output", "--weights", "--model", "--iters", "--cascades", "--device", "examples:"):
        assert option in text
