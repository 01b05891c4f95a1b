"""Tiny replicas of the stereo data sets in their real on-disk formats (for tests and benchmarks).

Each ``write_<dataset>(root, ...)`` writes, under ``root`` (what ``paths.data`` points at), the folder layout that
torchvision's class reads, with tiny random images (24x32 by default) and ground truth encoded the way the real
data set encodes it: PFM (little- or big-endian), 16-bit PNG scaled by 256 (KITTI), 32 (CREStereo) or 100
(InStereo2k), FallingThings' depth PNG + camera JSON, Sintel's RGB-encoded disparity with occlusion and
out-of-frame masks, ETH3D's grey images + mask0nocc.png, Middlebury's calib.txt and ambient views, JPEG images
where the real set has JPEG. Every writer returns one ``ReplicaSample`` per stereo pair it wrote: what the catalog
must decode for that pair (matched by ``left_path``, the raw sample's "path").

Disparity values are chosen so that the file's encoding is exact (k/256, k/32, integers from FallingThings'
depth, Sintel's r*4 + g/64 + b/16384, ...); a decoded value must equal the returned one bit for bit.
Images and disparities are independent random content: the replicas test reading and bookkeeping, not geometry.
``write_motorcycle_middlebury2014`` is the exception: a real scene (scikit-image's), in the Middlebury layout.

``write_replica(name, root)`` writes the replica of a catalog name with the writer's defaults and returns the
samples that ``build_dataset(name, ...)`` with default ``DatasetOptions`` yields.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

Size = tuple[int, int]  # (H, W) px
SIZE: Size = (24, 32)


@dataclass
class ReplicaSample:
    """What the catalog must return for one written pair (arrays as decoded, shapes (H, W[, 3]))."""

    left_path: Path  # the left image file (the raw sample's "path")
    left: np.ndarray  # uint8 (H, W, 3) RGB as decoded (grey files: grey in all channels; JPEG: PIL's decoding)
    right: np.ndarray  # uint8 (H, W, 3)
    disparity: np.ndarray | None  # float32 (H, W) px; invalid pixels hold what the file decodes to (0, inf)
    valid: np.ndarray | None  # bool (H, W): the expected valid mask
    disparity_right: np.ndarray | None = None  # float32 (H, W) where the data set has the right view's disparity
    valid_right: np.ndarray | None = None
    extras: dict[str, object] = field(default_factory=dict)  # writer-specific facts (masks, ambient views, subset)


# --------------------------------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------------------------------


def write_pfm(path: Path, array: np.ndarray, *, little_endian: bool = True) -> None:
    """Single-channel PFM ("Pf"): header, then float32 rows from the bottom row up; scale < 0 = little-endian."""
    array = np.asarray(array, dtype=np.float32)
    height, width = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = -1.0 if little_endian else 1.0
    data = np.flipud(array).astype("<f4" if little_endian else ">f4")
    with open(path, "wb") as f:
        f.write(f"Pf\n{width} {height}\n{scale}\n".encode("ascii"))
        f.write(data.tobytes())


def write_png(path: Path, array: np.ndarray) -> None:
    """PNG of a uint8 (H, W) / (H, W, 3) array (8 bit) or a uint16 (H, W) array (16-bit grey)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == np.uint16:
        Image.fromarray(array.astype(np.uint16)).save(path)  # mode I;16 -> 16-bit PNG
    else:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def write_jpeg(path: Path, rgb: np.ndarray, *, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=quality)


def read_rgb(path: Path) -> np.ndarray:
    """The decoded pixels of an image file as (H, W, 3) uint8 (how a JPEG replica decodes)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


# --------------------------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------------------------


def _image(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Blocky random RGB (4x4 blocks: JPEG keeps them close, so JPEG replicas still look like the array written)."""
    height, width = size
    blocks = rng.integers(0, 256, size=(-(-height // 4), -(-width // 4), 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((4, 4, 1), dtype=np.uint8))[:height, :width]


def _pfm_disparity(rng: np.random.Generator, size: Size, invalid_share: float = 0.0) -> np.ndarray:
    """float32 disparities in [0.5, 40) px; ``invalid_share`` of the pixels +inf (no ground truth, as Middlebury)."""
    disparity = rng.uniform(0.5, 40.0, size=size).astype(np.float32)
    disparity[rng.random(size) < invalid_share] = np.inf
    return disparity


def _scaled_png_disparity(
    rng: np.random.Generator, size: Size, scale: float, invalid_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 PNG values, float32 disparity = value / scale): values below 40 px * scale; 0 = no ground truth."""
    values = rng.integers(1, int(40 * scale), size=size).astype(np.uint16)
    values[rng.random(size) < invalid_share] = 0
    return values, values.astype(np.float32) / np.float32(scale)


def _ambient(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _middlebury_calib(size: Size, ndisp: int = 64) -> str:
    height, width = size
    return (
        f"cam0=[1000.0 0 {width / 2}; 0 1000.0 {height / 2}; 0 0 1]\n"
        f"cam1=[1000.0 0 {width / 2 + 4}; 0 1000.0 {height / 2}; 0 0 1]\n"
        f"doffs=4.0\nbaseline=193.001\nwidth={width}\nheight={height}\nndisp={ndisp}\n"
        "isint=0\nvmin=1\nvmax=40\ndyavg=0\ndymax=0\n"
    )


# --------------------------------------------------------------------------------------------------------------
# Writers, one per data set
# --------------------------------------------------------------------------------------------------------------


def write_crestereo(root: Path, *, per_folder: int = 1, size: Size = SIZE, seed: int = 0) -> list[ReplicaSample]:
    """CREStereo/{hole,reflective,shapenet,tree}/<id>_{left,right}.jpg + <id>_{left,right}.disp.png (uint16 x 32)."""
    rng = np.random.default_rng(seed)
    samples = []
    for folder in ("hole", "reflective", "shapenet", "tree"):
        for i in range(per_folder):
            base = Path(root) / "CREStereo" / folder / f"{folder}{i:04d}"
            left_path = base.with_name(base.name + "_left.jpg")
            write_jpeg(left_path, _image(rng, size))
            write_jpeg(base.with_name(base.name + "_right.jpg"), _image(rng, size))
            disparities = []
            for view in ("left", "right"):
                values, disparity = _scaled_png_disparity(rng, size, 32.0, invalid_share=0.1)
                write_png(base.with_name(f"{base.name}_{view}.disp.png"), values)
                disparities.append(disparity)
            samples.append(
                ReplicaSample(
                    left_path=left_path,
                    left=read_rgb(left_path),
                    right=read_rgb(base.with_name(base.name + "_right.jpg")),
                    disparity=disparities[0],
                    valid=disparities[0] > 0,
                    disparity_right=disparities[1],
                    valid_right=disparities[1] > 0,
                )
            )
    return samples


def write_eth3d(
    root: Path,
    *,
    split: str = "train",
    scenes: tuple[str, ...] = ("delivery_area_1l", "electro_1l"),
    size: Size = SIZE,
    seed: int = 0,
) -> list[ReplicaSample]:
    """ETH3D low-res two-view: grey PNG im0/im1 (+ calib/cameras/images txt); for "train" also
    two_view_training_gt/<scene>/disp0GT.pfm (inf = no ground truth) and mask0nocc.png (255 non-occluded,
    128 occluded, 0 no ground truth). ``extras["mask0nocc"]`` holds the mask values."""
    rng = np.random.default_rng(seed)
    image_dir = {"train": "two_view_training", "test": "two_view_test"}[split]
    samples = []
    for scene in scenes:
        folder = Path(root) / "ETH3D" / image_dir / scene
        grey = [rng.integers(0, 256, size=size, dtype=np.uint8) for _ in range(2)]
        write_png(folder / "im0.png", grey[0])
        write_png(folder / "im1.png", grey[1])
        _write_text(folder / "calib.txt", _middlebury_calib(size))
        _write_text(folder / "cameras.txt", f"0 PINHOLE {size[1]} {size[0]} 1000 1000 {size[1] / 2} {size[0] / 2}\n")
        _write_text(folder / "images.txt", "# image list\n")
        rgb = [np.repeat(g[..., None], 3, axis=2) for g in grey]
        if split == "test":
            samples.append(ReplicaSample(folder / "im0.png", rgb[0], rgb[1], None, None))
            continue
        disparity = _pfm_disparity(rng, size, invalid_share=0.2)
        mask = np.where(rng.random(size) < 0.2, 128, 255).astype(np.uint8)
        mask[~np.isfinite(disparity)] = 0
        gt_folder = Path(root) / "ETH3D" / "two_view_training_gt" / scene
        write_pfm(gt_folder / "disp0GT.pfm", disparity)
        write_png(gt_folder / "mask0nocc.png", mask)
        samples.append(
            ReplicaSample(
                folder / "im0.png",
                rgb[0],
                rgb[1],
                disparity,
                (mask > 0) & np.isfinite(disparity),
                extras={"mask0nocc": mask},
            )
        )
    return samples


MIDDLEBURY_SCENES = {  # the first scenes of torchvision's split lists (it requires official names)
    "train": ("Adirondack", "Jadeplant"),
    "additional": ("Backpack", "Bicycle1"),
    "test": ("Australia", "Bicycle2"),
}


def write_middlebury2014(
    root: Path,
    *,
    split: str = "train",
    scenes: tuple[str, ...] | None = None,
    calibrations: tuple[str, ...] = ("perfect", "imperfect"),
    size: Size = SIZE,
    seed: int = 0,
) -> list[ReplicaSample]:
    """Middlebury2014/<split>/<Scene>-<calibration>/: im0.png, im1.png, im1E.png (brighter), im1L.png (darker),
    disp0.pfm, disp1.pfm (inf = no ground truth), calib.txt; the test split: <Scene>/im0.png, im1.png, calib.txt.

    ``scenes`` must be official scene names of the split (torchvision checks); defaults: MIDDLEBURY_SCENES.
    ``extras["right_views"]`` = [im1, im1E, im1L] pixels (ambient views draw among them).
    """
    rng = np.random.default_rng(seed)
    scenes = scenes or MIDDLEBURY_SCENES[split]
    suffixes = [""] if split == "test" else [f"-{c}" for c in calibrations]
    samples = []
    for scene in scenes:
        for suffix in suffixes:
            folder = Path(root) / "Middlebury2014" / split / f"{scene}{suffix}"
            left, right = _image(rng, size), _image(rng, size)
            write_png(folder / "im0.png", left)
            write_png(folder / "im1.png", right)
            _write_text(folder / "calib.txt", _middlebury_calib(size))
            if split == "test":
                samples.append(ReplicaSample(folder / "im0.png", left, right, None, None))
                continue
            views = [right, _ambient(right, 1.3), _ambient(right, 0.6)]
            write_png(folder / "im1E.png", views[1])
            write_png(folder / "im1L.png", views[2])
            disparity, disparity_right = (_pfm_disparity(rng, size, invalid_share=0.2) for _ in range(2))
            write_pfm(folder / "disp0.pfm", disparity)
            write_pfm(folder / "disp1.pfm", disparity_right)
            samples.append(
                ReplicaSample(
                    folder / "im0.png",
                    left,
                    right,
                    disparity,
                    np.isfinite(disparity),
                    disparity_right,
                    np.isfinite(disparity_right),
                    extras={"right_views": views},
                )
            )
    return samples


def write_motorcycle_middlebury2014(root: Path | str) -> ReplicaSample:
    """scikit-image's real Motorcycle pair (500 x 741) as Middlebury2014/train/Motorcycle-perfect/: im0.png, im1.png,
    disp0.pfm (+inf = no ground truth, as the official file), disp1.pfm all +inf (scikit-image ships no right-view
    ground truth). The scene docs/REFERENCE.md evaluates beside torchvision's reference:
    ``python -c "from stereo_exp.testing.dataset_replicas import write_motorcycle_middlebury2014 as w; w('ROOT')"``.
    """
    left, right, disparity = (np.asarray(a) for a in skimage.data.stereo_motorcycle())
    disparity = disparity.astype(np.float32)
    folder = Path(root) / "Middlebury2014" / "train" / "Motorcycle-perfect"
    write_png(folder / "im0.png", left)
    write_png(folder / "im1.png", right)
    write_pfm(folder / "disp0.pfm", disparity)
    write_pfm(folder / "disp1.pfm", np.full_like(disparity, np.inf))
    return ReplicaSample(folder / "im0.png", left, right, disparity, np.isfinite(disparity))


def write_instereo2k(
    root: Path,
    *,
    split: str = "train",
    scenes: tuple[str, ...] = ("000001", "000002"),
    size: Size = SIZE,
    seed: int = 0,
) -> list[ReplicaSample]:
    """InStereo2k/<split>/<scene>/: left.png, right.png, left_disp.png, right_disp.png (uint16, disparity x 100)."""
    rng = np.random.default_rng(seed)
    samples = []
    for scene in scenes:
        folder = Path(root) / "InStereo2k" / split / scene
        left, right = _image(rng, size), _image(rng, size)
        write_png(folder / "left.png", left)
        write_png(folder / "right.png", right)
        decoded = []
        for view in ("left", "right"):
            values, disparity = _scaled_png_disparity(rng, size, 100.0, invalid_share=0.1)
            write_png(folder / f"{view}_disp.png", values)
            decoded.append(disparity)
        samples.append(
            ReplicaSample(folder / "left.png", left, right, decoded[0], decoded[0] > 0, decoded[1], decoded[1] > 0)
        )
    return samples


# Disparities FallingThings' depth PNG encodes exactly with fx = 768: 6 cm * 768 px / (depth * 0.1 mm) is an
# integer when depth = 460800 / d (the divisors of 460800 = 6 * 768 * 100 with depth < 65536).
_FALLINGTHINGS_DISPARITIES = np.array([8, 9, 10, 12, 15, 16, 18, 20, 24, 25, 30, 32, 36, 40], dtype=np.float32)


def write_fallingthings(
    root: Path,
    *,
    variants: tuple[str, ...] = ("single", "mixed"),
    frames: int = 1,
    size: Size = SIZE,
    seed: int = 0,
    fx: float = 768.0,
) -> list[ReplicaSample]:
    """FallingThings/single/<object>/<scene>/ and mixed/<scene>/: _camera_settings.json (fx), _object_settings.json,
    NNNNNN.{left,right}.jpg and NNNNNN.{left,right}.depth.png (uint16 depth in 0.1 mm; disparity = 6 cm * fx /
    depth). Depth 0 (no surface) decodes to an infinite, invalid disparity. Exact only for ``fx=768``."""
    rng = np.random.default_rng(seed)
    folders = {"single": Path("single") / "002_master_chef_can_16k" / "kitchen_0", "mixed": Path("mixed") / "kitchen_0"}
    constant = 6 * fx * 100  # baseline 6 cm, depth in units of 1e-4 m
    samples = []
    for variant in variants:
        folder = Path(root) / "FallingThings" / folders[variant]
        intrinsics = {"fx": fx, "fy": fx, "cx": size[1] / 2, "cy": size[0] / 2, "s": 0}
        camera = {"name": "left", "horizontal_fov": 64, "intrinsic_settings": intrinsics}
        camera["captured_image_size"] = {"width": size[1], "height": size[0]}
        _write_text(
            folder / "_camera_settings.json", json.dumps({"camera_settings": [camera, {**camera, "name": "right"}]})
        )
        _write_text(
            folder / "_object_settings.json", json.dumps({"exported_object_classes": [], "exported_objects": []})
        )
        for frame in range(frames):
            stem = folder / f"{frame:06d}"
            left_path = Path(f"{stem}.left.jpg")
            write_jpeg(left_path, _image(rng, size))
            write_jpeg(Path(f"{stem}.right.jpg"), _image(rng, size))
            decoded = []
            for view in ("left", "right"):
                disparity = rng.choice(_FALLINGTHINGS_DISPARITIES, size=size)
                depth = np.round(constant / disparity).astype(np.uint16)
                depth[rng.random(size) < 0.1] = 0  # no surface: infinite disparity
                write_png(Path(f"{stem}.{view}.depth.png"), depth)
                with np.errstate(divide="ignore"):
                    decoded.append((np.float32(constant) / depth.astype(np.float32)).astype(np.float32))
            samples.append(
                ReplicaSample(
                    left_path,
                    read_rgb(left_path),
                    read_rgb(Path(f"{stem}.right.jpg")),
                    decoded[0],
                    np.isfinite(decoded[0]),
                    decoded[1],
                    np.isfinite(decoded[1]),
                )
            )
    return samples


def write_carla_highres(
    root: Path, *, scenes: tuple[str, ...] = ("scene0", "scene1"), size: Size = SIZE, seed: int = 0
) -> list[ReplicaSample]:
    """carla-highres/trainingF/<scene>/: im0.png, im1.png, disp0GT.pfm, disp1GT.pfm (big-endian PFM: the reader's
    other byte order), calib.txt. Dense ground truth."""
    rng = np.random.default_rng(seed)
    samples = []
    for scene in scenes:
        folder = Path(root) / "carla-highres" / "trainingF" / scene
        left, right = _image(rng, size), _image(rng, size)
        write_png(folder / "im0.png", left)
        write_png(folder / "im1.png", right)
        _write_text(folder / "calib.txt", _middlebury_calib(size))
        disparity, disparity_right = _pfm_disparity(rng, size), _pfm_disparity(rng, size)
        write_pfm(folder / "disp0GT.pfm", disparity, little_endian=False)
        write_pfm(folder / "disp1GT.pfm", disparity_right, little_endian=False)
        samples.append(
            ReplicaSample(
                folder / "im0.png", left, right, disparity, np.ones(size, bool), disparity_right, np.ones(size, bool)
            )
        )
    return samples


def write_sintel(
    root: Path,
    *,
    passes: tuple[str, ...] = ("clean", "final"),
    scenes: tuple[str, ...] = ("alley_1", "bamboo_2"),
    frames: int = 1,
    size: Size = SIZE,
    seed: int = 0,
) -> list[ReplicaSample]:
    """Sintel/training/{pass}_{left,right}/<scene>/frame_NNNN.png, disparities/ (RGB: d = R*4 + G/2^6 + B/2^14),
    occlusions/ and outofframe/ (grey, 255 = occluded / out of frame). One sample per pass and frame."""
    rng = np.random.default_rng(seed)
    training = Path(root) / "Sintel" / "training"
    samples = []
    for scene in scenes:
        for frame in range(1, frames + 1):
            name = f"frame_{frame:04d}.png"
            rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            rgb[..., 0] = rgb[..., 0] // 8  # R < 32: disparities below 128 px
            r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
            disparity = (r * 4 + g / 2**6 + b / 2**14).astype(np.float32)  # exact in float32 (22 bits)
            occluded = np.where(rng.random(size) < 0.2, 255, 0).astype(np.uint8)
            out_of_frame = np.where(rng.random(size) < 0.1, 255, 0).astype(np.uint8)
            write_png(training / "disparities" / scene / name, rgb)
            write_png(training / "occlusions" / scene / name, occluded)
            write_png(training / "outofframe" / scene / name, out_of_frame)
            valid = (occluded == 0) & (out_of_frame == 0) & (disparity > 0)
            for pass_name in passes:
                left, right = _image(rng, size), _image(rng, size)
                write_png(training / f"{pass_name}_left" / scene / name, left)
                write_png(training / f"{pass_name}_right" / scene / name, right)
                left_path = training / f"{pass_name}_left" / scene / name
                samples.append(ReplicaSample(left_path, left, right, disparity, valid, extras={"pass": pass_name}))
    return samples


SCENEFLOW_SEQUENCES = {  # one sequence folder per subset, as the real archives name them
    "Monkaa": [Path("a_rain_of_stones_x2")],
    "Driving": [Path("15mm_focallength") / "scene_forwards" / "fast"],
    "FlyingThings3D": [Path("TRAIN") / "A" / "0000", Path("TEST") / "A" / "0000"],
}


def write_sceneflow(
    root: Path,
    *,
    variant: str = "Monkaa",
    passes: tuple[str, ...] = ("clean", "final"),
    frames: int = 2,
    size: Size = SIZE,
    seed: int = 0,
) -> list[ReplicaSample]:
    """SceneFlow/<variant>/frames_{clean,final}pass/<sequence>/{left,right}/NNNN.png and
    disparity/<sequence>/{left,right}/NNNN.pfm (dense, both views). FlyingThings3D gets a TRAIN and a TEST
    sequence (``extras["subset"]``). One sample per pass and frame."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "SceneFlow" / variant
    samples = []
    for sequence in SCENEFLOW_SEQUENCES[variant]:
        for frame in range(6, 6 + frames):  # real sequences need not start at 0
            name = f"{frame:04d}"
            disparity, disparity_right = _pfm_disparity(rng, size), _pfm_disparity(rng, size)
            write_pfm(base / "disparity" / sequence / "left" / f"{name}.pfm", disparity)
            write_pfm(base / "disparity" / sequence / "right" / f"{name}.pfm", disparity_right)
            for pass_name in passes:
                left, right = _image(rng, size), _image(rng, size)
                left_path = base / f"frames_{pass_name}pass" / sequence / "left" / f"{name}.png"
                write_png(left_path, left)
                write_png(base / f"frames_{pass_name}pass" / sequence / "right" / f"{name}.png", right)
                samples.append(
                    ReplicaSample(
                        left_path,
                        left,
                        right,
                        disparity,
                        np.ones(size, bool),
                        disparity_right,
                        np.ones(size, bool),
                        extras={"pass": pass_name, "subset": sequence.parts[0]},
                    )
                )
    return samples


def write_kitti2012(
    root: Path, *, split: str = "train", frames: int = 2, size: Size = SIZE, seed: int = 0
) -> list[ReplicaSample]:
    """Kitti2012/{training,testing}/colored_{0,1}/NNNNNN_{10,11}.png (RGB) and, for training,
    disp_noc/NNNNNN_10.png (uint16, disparity x 256, 0 = no ground truth: sparse)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "Kitti2012" / (split + "ing")
    samples = []
    for frame in range(frames):
        views = {}
        for suffix in ("10", "11"):  # t and t+1; only *_10 has ground truth
            for camera in ("colored_0", "colored_1"):
                views[camera, suffix] = _image(rng, size)
                write_png(folder / camera / f"{frame:06d}_{suffix}.png", views[camera, suffix])
        left_path = folder / "colored_0" / f"{frame:06d}_10.png"
        if split == "test":
            samples.append(ReplicaSample(left_path, views["colored_0", "10"], views["colored_1", "10"], None, None))
            continue
        values, disparity = _scaled_png_disparity(rng, size, 256.0, invalid_share=0.6)
        write_png(folder / "disp_noc" / f"{frame:06d}_10.png", values)
        samples.append(
            ReplicaSample(left_path, views["colored_0", "10"], views["colored_1", "10"], disparity, disparity > 0)
        )
    return samples


def write_kitti2015(
    root: Path, *, split: str = "train", frames: int = 2, size: Size = SIZE, seed: int = 0
) -> list[ReplicaSample]:
    """Kitti2015/{training,testing}/image_{2,3}/NNNNNN_{10,11}.png (RGB) and, for training, disp_occ_0/ and
    disp_occ_1/NNNNNN_10.png (uint16 x 256, sparse). disp_occ_1 is frame t+1's disparity, not the right view's:
    ``extras["disp_occ_1"]`` holds it, and the catalog must not return it."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "Kitti2015" / (split + "ing")
    samples = []
    for frame in range(frames):
        views = {}
        for suffix in ("10", "11"):
            for camera in ("image_2", "image_3"):
                views[camera, suffix] = _image(rng, size)
                write_png(folder / camera / f"{frame:06d}_{suffix}.png", views[camera, suffix])
        left_path = folder / "image_2" / f"{frame:06d}_10.png"
        if split == "test":
            samples.append(ReplicaSample(left_path, views["image_2", "10"], views["image_3", "10"], None, None))
            continue
        values, disparity = _scaled_png_disparity(rng, size, 256.0, invalid_share=0.6)
        write_png(folder / "disp_occ_0" / f"{frame:06d}_10.png", values)
        next_values, next_disparity = _scaled_png_disparity(rng, size, 256.0, invalid_share=0.6)
        write_png(folder / "disp_occ_1" / f"{frame:06d}_10.png", next_values)
        samples.append(
            ReplicaSample(
                left_path,
                views["image_2", "10"],
                views["image_3", "10"],
                disparity,
                disparity > 0,
                extras={"disp_occ_1": next_disparity},
            )
        )
    return samples


# --------------------------------------------------------------------------------------------------------------
# By catalog name
# --------------------------------------------------------------------------------------------------------------

REPLICAS: dict[str, Callable[[Path], list[ReplicaSample]]] = {
    "crestereo": write_crestereo,
    "eth3d-train": write_eth3d,
    "eth3d-test": lambda root: write_eth3d(root, split="test"),
    "middlebury2014-train": lambda root: write_middlebury2014(root, calibrations=("perfect",)),
    "middlebury2014-other": lambda root: write_middlebury2014(root, split="additional"),
    "middlebury2014-test": lambda root: write_middlebury2014(root, split="test"),
    "instereo2k": write_instereo2k,
    "instereo2k-test": lambda root: write_instereo2k(root, split="test"),
    "fallingthings": write_fallingthings,
    "carla-highres": write_carla_highres,
    "sintel": lambda root: write_sintel(root, passes=("final",)),
    "sceneflow-monkaa": lambda root: write_sceneflow(root, variant="Monkaa"),
    "sceneflow-driving": lambda root: write_sceneflow(root, variant="Driving"),
    # Both subsets are written; the default options read TRAIN only.
    "sceneflow-flyingthings": lambda root: [
        s for s in write_sceneflow(root, variant="FlyingThings3D") if s.extras["subset"] == "TRAIN"
    ],
    "kitti2012-train": write_kitti2012,
    "kitti2012-test": lambda root: write_kitti2012(root, split="test"),
    "kitti2015-train": write_kitti2015,
    "kitti2015-test": lambda root: write_kitti2015(root, split="test"),
}


def write_replica(name: str, root: Path) -> list[ReplicaSample]:
    """Write the replica of catalog name ``name`` under ``root``; the samples default options read from it."""
    if name not in REPLICAS:
        raise KeyError(f"No replica writer for {name!r}; writers exist for: {', '.join(sorted(REPLICAS))}.")
    return REPLICAS[name](Path(root))
