"""Disparity for image pairs: ``python -m stereo_exp.predict LEFT RIGHT [-o OUT]`` (``--help`` for the options).

Any image size works: the model pads to its size multiple and crops back. For each pair it writes the left view's
disparity in pixels (PFM, or NumPy ``.npy`` by extension) and a colour-mapped PNG with a colour bar beside it.
LEFT and RIGHT may be glob patterns (quote them): the sorted matches are paired in order. An output file that
already exists is an error unless ``--overwrite``; an input image is never replaced.

The model comes from ``--weights`` exactly as in ``python -m stereo_exp.evaluate`` (published name, state_dict or
checkpoint file, MLflow run, or by default the newest checkpoint under outputs/); the rest of its config from
``conf/evaluate.yaml`` and ``conf/model/``. Without any weights it refuses, unless ``--random-weights`` asks for an
untrained model.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stereo_exp import CONF_DIR

if TYPE_CHECKING:  # torch and PIL are imported where used: --help answers without loading them
    import torch

log = logging.getLogger("stereo_exp.predict")

DISPARITY_SUFFIXES = (".pfm", ".npy")
_GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """A problem with the command's inputs (files, sizes, options); the message says which and what was expected."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stereo_exp.predict",
        description="Predict the left view's disparity (px) of rectified stereo pairs of any size.",
        epilog=(
            "examples:\n"
            "  python -m stereo_exp.predict left.png right.png -o disp.pfm --weights MEGVII_V1 --model crestereo_base\n"
            "  python -m stereo_exp.predict 'scenes/*/im0.png' 'scenes/*/im1.png' -o predictions/ --cascades 2\n"
            "  python -m stereo_exp.predict l.png r.png --weights outputs/DATE/TIME/checkpoints/step_0000300.pth"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("left", help="left image, or a quoted glob pattern of left images")
    parser.add_argument("right", help="right image, or a quoted glob pattern matching as many right images")
    parser.add_argument(
        "-o",
        "--output",
        default="predictions",
        help="a .pfm or .npy file (one pair; the PNG goes beside it) or a folder (default: %(default)s/), which gets "
        "<left name>.<format> and <left name>.png per pair",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace disparity files and PNGs that already exist (never the input images); without it an existing "
        "output is an error, before anything is computed",
    )
    parser.add_argument(
        "--format",
        choices=[s[1:] for s in DISPARITY_SUFFIXES],
        default="pfm",
        help="disparity file format when --output is a folder (default: %(default)s)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="published name (e.g. MEGVII_V1), a state_dict or checkpoint file, or an MLflow run (runs:/<run id>); "
        "default: the newest checkpoint under --checkpoints",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="architecture (conf/model/<name>.yaml) for published names and state_dict files; checkpoints bring "
        "their own (default: the one of conf/evaluate.yaml)",
    )
    parser.add_argument("--checkpoints", default="outputs", help="folder searched when --weights is not given")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="allow an untrained model when there are no weights (its disparities are noise: for testing the "
        "pipeline; initialised from conf/evaluate.yaml's seed)",
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of --weights runs:/<id> (default: conf)")
    parser.add_argument("--iters", type=int, default=None, help="recurrent updates (default: the model's eval_iters)")
    parser.add_argument("--cascades", type=int, default=1, help="coarse-to-fine cascade levels (default: 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype (default: %(default)s)"
    )
    parser.add_argument(
        "--vmax",
        type=float,
        default=None,
        help="upper end of the PNG colour scale in px (default: each prediction's own maximum)",
    )
    return parser


# ---- inputs ----------------------------------------------------------------------------------------------------


def expand_pairs(left: str, right: str) -> list[tuple[Path, Path]]:
    """Pair LEFT and RIGHT: two files, or two glob patterns with the same number of matches (sorted, in order)."""
    lefts, rights = _expand(left, "LEFT"), _expand(right, "RIGHT")
    if len(lefts) != len(rights):
        raise InputError(
            f"LEFT {left!r} matches {len(lefts)} files but RIGHT {right!r} matches {len(rights)}; they are paired "
            "in sorted order, so the counts must be equal."
        )
    return list(zip(lefts, rights, strict=True))


def _expand(pattern: str, what: str) -> list[Path]:
    if _GLOB_CHARS & set(pattern):
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise InputError(f"{what} pattern {pattern!r} matches no file.")
        return matches
    return [Path(pattern)]


def read_image(path: Path) -> torch.Tensor:
    """An image file as a (3, H, W) float32 tensor in [-1, 1] (grey and RGBA images become RGB)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"Image {path} does not exist.")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, with its name
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"Cannot read image {path}: {error}") from error
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def read_pair(left: Path, right: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images of a pair; they must have the same size (a rectified pair)."""
    left_image, right_image = read_image(left), read_image(right)
    if left_image.shape != right_image.shape:
        lh, lw = left_image.shape[-2:]
        rh, rw = right_image.shape[-2:]
        raise InputError(
            f"Left image {left} is {lw}x{lh} (WxH) but right image {right} is {rw}x{rh}: a rectified stereo pair "
            "has two images of the same size."
        )
    return left_image, right_image


# ---- outputs ---------------------------------------------------------------------------------------------------


def output_paths(lefts: Sequence[Path], output: Path, fmt: str) -> list[Path]:
    """Disparity file of each pair (the PNG is the same path with ``.png``)."""
    if output.suffix.lower() == ".png":
        raise InputError(f"--output {output}: name the disparity file (.pfm or .npy); the PNG is written beside it.")
    if output.suffix.lower() in DISPARITY_SUFFIXES:
        if len(lefts) > 1:
            raise InputError(f"--output {output} names one file but there are {len(lefts)} pairs; pass a folder.")
        return [output]
    names = [p.stem for p in lefts]
    if len(set(names)) < len(names):  # e.g. Middlebury's <scene>/im0.png: prefix the scene folder
        names = [f"{p.parent.name}_{p.stem}" for p in lefts]
    if len(set(names)) < len(names):
        raise InputError("Left images share names even with their folder; predict them in separate calls.")
    return [output / f"{name}.{fmt}" for name in names]


def check_outputs(pairs: Sequence[tuple[Path, Path]], outputs: Sequence[Path], *, overwrite: bool) -> None:
    """Refuse, before anything is computed, outputs that would replace an input image (the PNG beside ``-o
    left.pfm`` is ``left.png``; ``-o .`` beside the images names the PNGs after the left images), and outputs that
    already exist unless ``overwrite``."""
    inputs = {path.resolve() for pair in pairs for path in pair}
    written = [path for out in outputs for path in (out, out.with_suffix(".png"))]
    for path in written:
        if path.resolve() in inputs:
            raise InputError(
                f"--output would replace the input image {path} with a disparity picture; choose another --output "
                "(e.g. the default predictions/)."
            )
    existing = [path for path in written if path.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(path) for path in existing[:3]) + (
            f" and {len(existing) - 3} more" if existing[3:] else ""
        )
        raise InputError(
            f"{shown} already exist{'s' if len(existing) == 1 else ''} ({len(existing)} of the {len(written)} files "
            "this command writes). Pass --overwrite to replace them, or choose another --output."
        )


def write_pfm(path: Path, disparity: np.ndarray) -> None:
    """A single-channel little-endian PFM (rows bottom to top, as the format wants)."""
    array = np.asarray(disparity, dtype="<f4")
    if array.ndim != 2:
        raise ValueError(f"PFM disparity must be (H, W); got {array.shape}.")
    height, width = array.shape
    with open(path, "wb") as f:
        f.write(b"Pf\n")
        f.write(f"{width} {height}\n".encode("ascii"))
        f.write(b"-1.0\n")  # negative scale = little-endian
        f.write(np.ascontiguousarray(np.flipud(array)).tobytes())


def write_disparity(path: Path, disparity: np.ndarray) -> None:
    """(H, W) disparity in px as PFM or ``.npy`` by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".pfm":
        write_pfm(path, disparity)
    elif path.suffix.lower() == ".npy":
        np.save(path, np.asarray(disparity, dtype=np.float32))
    else:
        raise InputError(f"Disparity file {path}: expected a .pfm or .npy extension.")


# ---- running ---------------------------------------------------------------------------------------------------


def predict_pairs(
    model: torch.nn.Module,
    pairs: Sequence[tuple[Path, Path]],
    outputs: Sequence[Path],
    *,
    num_iters: int,
    n_cascades: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    vmax: float | None = None,
) -> list[Path]:
    """Predict each pair and write its disparity file and PNG; returns the files written."""
    import torch

    from stereo_exp.evaluation.visualize import disparity_figure, figure_to_png
    from stereo_exp.models.inference import predict_disparity

    written: list[Path] = []
    model = model.to(device).eval()
    for (left_path, right_path), out in zip(pairs, outputs, strict=True):
        left, right = read_pair(left_path, right_path)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None),
        ):
            pred = predict_disparity(
                model, left[None].to(device), right[None].to(device), num_iters=num_iters, n_cascades=n_cascades
            )
        disparity = pred[0, 0].float().cpu().numpy()  # (H, W) px, the size of the input
        write_disparity(out, disparity)
        png = out.with_suffix(".png")
        png.write_bytes(figure_to_png(disparity_figure(disparity, vmin=0.0 if vmax is not None else None, vmax=vmax)))
        written += [out, png]
        low, high = float(np.nanmin(disparity)), float(np.nanmax(disparity))
        log.info(
            "%s + %s -> %s (%dx%d, disparity %.1f..%.1f px)",
            left_path,
            right_path,
            out,
            disparity.shape[1],
            disparity.shape[0],
            low,
            high,
        )
    return written


def _compose_config(args: argparse.Namespace) -> object:
    """conf/evaluate.yaml with the command's choices: the same model resolution as ``evaluate``."""
    from hydra import compose, initialize_config_dir

    from stereo_exp.config import register_configs

    register_configs("evaluate")
    overrides = ["tracking.backend=none"] if args.tracking_uri is None else [f"tracking.uri={args.tracking_uri}"]
    if args.model:
        overrides.append(f"model={args.model}")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="predict"):
        return compose(config_name="evaluate", overrides=overrides)


def _check_weights_exist(args: argparse.Namespace, model_weights: str | None) -> None:
    """Without ``--weights`` the newest checkpoint under ``--checkpoints`` is used; when there is none, an untrained
    model would write plausible-looking noise: refuse unless ``--random-weights`` asks for it."""
    from stereo_exp.evaluation.model_source import find_latest_checkpoint

    if args.weights is None and Path(args.checkpoints).is_file():  # `--checkpoint FILE` abbreviates --checkpoints
        raise InputError(
            f"--checkpoints {args.checkpoints} is a file; --checkpoints names the folder searched for the newest "
            f"checkpoint. To predict with this file: --weights {args.checkpoints}"
        )
    no_weights = args.weights is None and model_weights is None and not args.random_weights
    if no_weights and find_latest_checkpoint(args.checkpoints) is None:
        raise InputError(
            f"No weights: --weights is not given and there is no checkpoint under --checkpoints "
            f"{args.checkpoints}/. Pass --weights NAME|FILE|runs:/RUN_ID (e.g. --weights MEGVII_V1 --model "
            "crestereo_base), or --random-weights to run an untrained model (its output is noise)."
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 for bad inputs, with the reason on stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.cascades < 1 or (args.iters is not None and args.iters < 1):
            raise InputError(f"--cascades and --iters must be >= 1; got {args.cascades} and {args.iters}.")
        pairs = expand_pairs(args.left, args.right)
        outputs = output_paths([left for left, _ in pairs], Path(args.output), args.format)
        for left, right in pairs:  # fail before loading the model when an input is bad
            for path in (left, right):
                if not path.is_file():
                    raise InputError(f"Image {path} does not exist.")
        check_outputs(pairs, outputs, overwrite=args.overwrite)

        import torch

        from stereo_exp.distributed import DistEnv
        from stereo_exp.evaluation.model_source import load_model
        from stereo_exp.schemas import amp_dtype, emulated_precision_warning

        cfg = _compose_config(args)
        _check_weights_exist(args, cfg.model.weights)
        torch.manual_seed(cfg.seed)  # only matters for --random-weights: the same noise every time
        try:
            loaded = load_model(args.weights, cfg.model, checkpoints=args.checkpoints, tracking_uri=cfg.tracking.uri)
        except (ValueError, KeyError, RuntimeError) as error:  # the weights' messages say what to pass instead
            raise InputError(str(error)) from error
        log.info("Model: %s", loaded.source)
        device = DistEnv.from_environment(args.device).device
        if slow := emulated_precision_warning("--precision", args.precision, device):
            log.warning(slow)
        predict_pairs(
            loaded.model,
            pairs,
            outputs,
            num_iters=args.iters or loaded.eval_iters,
            n_cascades=args.cascades,
            device=device,
            amp_dtype=amp_dtype(args.precision),
            vmax=args.vmax,
        )
    except (InputError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from stereo_exp.cli import exit_interrupted, ignore_stops_while_exiting

    try:
        status = main()
    except KeyboardInterrupt as stop:
        exit_interrupted(stop, "Prediction")
    ignore_stops_while_exiting()  # the files are written: a stop now would only print an exit handler's traceback
    sys.exit(status)
