"""Procedural stereo pairs with exact ground truth: the embedded training and validation set.

A scene is a background plane and a few layers in front of it. Every surface is a plane of disparity
``d(x, y) = a + b x + c y`` (x, y in left-image pixels) bounded by a superellipse outline, and carries a texture
``T(x, y)`` defined in left-image coordinates: either a photo (one of the images scikit-image ships, zoomed, rotated,
mirrored at its borders and tinted: real edges, shading and textureless areas) or a procedural texture (sharp-edged
patches of two colours plus multi-octave colour value noise). Both views sample these continuous functions (photos
bilinearly), so each is a rendering of the same scene:

- left pixel ``(x, y)``: among the surfaces whose outline covers it, the nearest (largest disparity) is visible;
  colour ``T(x, y)``, disparity ``d(x, y)``;
- right pixel ``(x_r, y)``: a surface point ``x_l`` appears at ``x_r = x_l - d(x_l, y)``, which for a plane inverts to
  ``x_l = (x_r + a + c y) / (1 - b)``; again the nearest covering surface is visible; colour ``T(x_l, y)``, right
  disparity ``x_l - x_r`` (positive, ``x_l = x_r + d_right``).

Occlusions are therefore rendered in depth order in both views, and slanted layers may cut through each other.

Valid masks: with ``occluded_valid`` (the default) every pixel is valid: the disparity is the true geometry even where
the matching point is hidden in, or outside, the other view, as in SceneFlow's dense ground truth. With
``occluded_valid: false`` a left pixel is valid only where its surface point is visible inside the right frame
(and symmetrically for the right view): the mask the geometric-consistency tests rely on.

Determinism: sample ``index`` of a split depends only on (seed, split, index), through its own
``numpy.random.Generator`` seeded with that triple; "train" and "val" use disjoint streams.

Defaults: the embedded default run's training data. Half of the surfaces carry a photo: real texture, and what took
the run's motorcycle mae (a real capture) from 7.3 to 5.3 px at 1500 steps. Disparities stay within 2 to 40 px; the
embedded augmentation's scaling by up to 1.5 (conf/augmentation/embedded.yaml) carries them to the motorcycle's 60 px.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from stereo_exp.data.options import SyntheticConfig, check_synthetic_config

SPLITS = {"train": 0, "val": 1}  # split name -> random stream id (disjoint seed sequences)
DATASET_NAMES = {"train": "synthetic", "val": "synthetic-val"}  # catalog names reported in raw samples
SHAPE_EXPONENTS = (1.0, 2.0, 4.0)  # superellipse outlines: diamond, ellipse, rounded rectangle (cheap integer powers)
_DOMAIN_MARGIN = 2.0  # px of texture beyond every point a view can sample, so bilinear lookups never clamp


@dataclass
class _Photo:
    """A photo texture: the photo, the affine map from left-image px to photo px, and a per-channel tint."""

    name: str  # skimage.data function name
    affine: np.ndarray  # (2, 3) float64: (u, v) = affine @ (x, y, 1)
    tint: np.ndarray  # (3, 1) float32 factors of R, G, B


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as float32 (3, H, W) RGB in [0, 1] (grey photos repeated), read once per process."""
    import skimage.data  # here, not at the top: composing a config (every --help) need not load scikit-image

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3].astype(np.float32) / np.float32(255.0 if image.dtype == np.uint8 else 1.0)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


@dataclass
class _Scene:
    """Parameters of one scene; layer 0 is the background, which covers everything."""

    planes: np.ndarray  # (L, 3) float64: a, b, c of d = a + b x + c y, left-image px
    outlines: np.ndarray  # (L, 6) float64: centre x, centre y, radius x, radius y, angle (rad), exponent
    colours: np.ndarray  # (6, L) float32: RGB of the first, then the second colour of each layer, [0, 1]
    octaves: list[np.ndarray]  # per noise spacing: (3, L * gh * gw) float32 node values (RGB, channels first)
    patch_nodes: np.ndarray  # (L * gh * gw,) float32 node values in [-1, 1] of the patch field
    patch_threshold: float  # patch where the patch field exceeds this
    x0: float  # left edge of the texture domain (px); y domain starts at -_DOMAIN_MARGIN
    spacings: list[float]  # grid step of each octave, then of the patch field, px
    grid_shapes: list[tuple[int, int]]  # (gh, gw) of each octave, then of the patch field
    photos: list[_Photo | None]  # per layer: its photo texture, or None for the procedural one


class SyntheticStereo(Dataset):
    """Procedural stereo pairs (see the module docstring), ``len`` = ``cfg.train_samples`` or ``cfg.val_samples``.

    ``__getitem__`` returns a raw sample: ``left``, ``right`` uint8 (H, W, 3) RGB; ``disparity``, ``disparity_right``
    float32 (H, W) positive px; ``valid``, ``valid_right`` bool (H, W); ``dataset`` ("synthetic" or "synthetic-val"),
    ``index``, ``path`` (``synthetic://<split>/<index>``, nothing on disk).
    """

    def __init__(self, cfg: SyntheticConfig, *, split: str, seed: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"synthetic split must be one of {sorted(SPLITS)}, got {split!r}")
        check_synthetic_config(cfg)
        self.cfg = cfg
        self.split = split
        self.seed = cfg.seed if seed is None else seed
        self._length = cfg.train_samples if split == "train" else cfg.val_samples

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._length:
            raise IndexError(f"synthetic {self.split} index {index} out of range [0, {self._length})")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        sample = render_scene(_draw_scene(self.cfg, rng), self.cfg.height, self.cfg.width, self.cfg.occluded_valid)
        sample.update(dataset=DATASET_NAMES[self.split], index=int(index), path=f"synthetic://{self.split}/{index}")
        return sample


def _fit_plane(
    rng: np.random.Generator,
    d_centre: float,
    xc: float,
    yc: float,
    cfg: SyntheticConfig,
    x_extent: tuple[float, float],
    y_extent: tuple[float, float],
) -> np.ndarray:
    """A plane through ``d_centre`` at (xc, yc) with random slant, flattened until it stays inside the disparity range
    over the given extent (a plane's extremes are at the corners)."""
    d_min, d_max = cfg.disparity_range
    b, c = rng.uniform(-cfg.max_slant, cfg.max_slant, size=2)
    corners = [(b * (x - xc) + c * (y - yc)) for x in x_extent for y in y_extent]
    above, below = max(corners), min(corners)
    factor = 1.0
    if above > 0:
        factor = min(factor, (d_max - d_centre) / above)
    if below < 0:
        factor = min(factor, (d_centre - d_min) / -below)
    b, c = b * factor, c * factor
    return np.array([d_centre - b * xc - c * yc, b, c])


def _draw_scene(cfg: SyntheticConfig, rng: np.random.Generator) -> _Scene:
    height, width = cfg.height, cfg.width
    d_min, d_max = cfg.disparity_range
    # Every point either view can show lies at x in [0, width - 1 + d_max] of the left-image frame.
    x_extent = (-_DOMAIN_MARGIN, width - 1 + d_max + _DOMAIN_MARGIN)
    y_extent = (-_DOMAIN_MARGIN, height - 1 + _DOMAIN_MARGIN)
    num_layers = 1 + int(rng.integers(cfg.num_layers[0], cfg.num_layers[1] + 1))

    planes = np.empty((num_layers, 3))
    outlines = np.empty((num_layers, 6))
    # Background: the far end of the range, centred on the image, covers everything (infinite radii).
    background = rng.uniform(d_min, d_min + cfg.background_share * (d_max - d_min))
    planes[0] = _fit_plane(rng, background, width / 2, height / 2, cfg, x_extent, y_extent)
    outlines[0] = (0.0, 0.0, np.inf, np.inf, 0.0, 2.0)
    for layer in range(1, num_layers):
        xc, yc = rng.uniform(0, width), rng.uniform(0, height)
        background_here = min(max(planes[0] @ (1.0, xc, yc), d_min), d_max)
        planes[layer] = _fit_plane(rng, rng.uniform(background_here, d_max), xc, yc, cfg, x_extent, y_extent)
        radius = rng.uniform(*cfg.layer_size) * width
        aspect = np.sqrt(rng.uniform(*cfg.layer_aspect))
        exponent = SHAPE_EXPONENTS[int(rng.integers(len(SHAPE_EXPONENTS)))]
        outlines[layer] = (xc, yc, radius * aspect, radius / aspect, rng.uniform(0, np.pi), exponent)

    colours = rng.uniform(*cfg.colour_range, size=(6, num_layers)).astype(np.float32)
    # Octave amplitudes p^0, p^1, ... scaled so that their sum is noise_amplitude.
    weights = cfg.noise_persistence ** np.arange(len(cfg.noise_spacings))
    weights = cfg.noise_amplitude * weights / weights.sum()
    octaves, grid_shapes = [], []
    for spacing, weight in zip(cfg.noise_spacings, weights, strict=True):
        gh, gw = _grid_shape(spacing, x_extent, y_extent)
        nodes = rng.random(size=(3, num_layers * gh * gw), dtype=np.float32)  # float32 draws: half the cost
        octaves.append(nodes * np.float32(2 * weight) - np.float32(weight))
        grid_shapes.append((gh, gw))
    gh, gw = _grid_shape(cfg.patch_spacing, x_extent, y_extent)
    patch_nodes = rng.random(size=num_layers * gh * gw, dtype=np.float32) * 2 - 1
    grid_shapes.append((gh, gw))
    photos = [_draw_photo(cfg, rng, width, height) for _ in range(num_layers)] if cfg.photo_share > 0 else []
    return _Scene(
        planes=planes,
        outlines=outlines,
        colours=colours,
        octaves=octaves,
        patch_nodes=patch_nodes,
        # node values are uniform in [-1, 1]: P(node > t) = patch_share for t = 1 - 2 share
        patch_threshold=1.0 - 2.0 * cfg.patch_share,
        x0=x_extent[0],
        spacings=[*cfg.noise_spacings, cfg.patch_spacing],
        grid_shapes=grid_shapes,
        photos=photos,
    )


def _draw_photo(cfg: SyntheticConfig, rng: np.random.Generator, width: int, height: int) -> _Photo | None:
    """A photo texture with chance ``cfg.photo_share``: a random photo, zoom, rotation and tint; the image centre
    shows a random point of the photo."""
    if rng.random() >= cfg.photo_share:
        return None
    name = cfg.photos[int(rng.integers(len(cfg.photos)))]
    _, photo_height, photo_width = load_photo(name).shape
    zoom = np.exp(rng.uniform(np.log(cfg.photo_zoom[0]), np.log(cfg.photo_zoom[1])))  # scene px per photo px
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / zoom
    anchor = rng.uniform((0, 0), (photo_width - 1, photo_height - 1))
    offset = anchor - rotation @ (width / 2, height / 2)
    tint = rng.uniform(1 - cfg.photo_tint, 1 + cfg.photo_tint, size=(3, 1)).astype(np.float32)
    return _Photo(name=name, affine=np.column_stack([rotation, offset]), tint=tint)


def _grid_shape(spacing: float, x_extent: tuple[float, float], y_extent: tuple[float, float]) -> tuple[int, int]:
    return (
        int(np.ceil((y_extent[1] - y_extent[0]) / spacing)) + 2,
        int(np.ceil((x_extent[1] - x_extent[0]) / spacing)) + 2,
    )


def _covers(outline: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether the superellipse ``outline`` covers the points (x, y) (left-image px)."""
    xc, yc, rx, ry, angle, exponent = outline
    if np.isinf(rx):
        return np.ones(np.shape(x), dtype=bool)
    cos, sin = np.cos(angle), np.sin(angle)
    u = np.abs(((x - xc) * cos + (y - yc) * sin) / rx)
    v = np.abs(((y - yc) * cos - (x - xc) * sin) / ry)
    if exponent == 1.0:
        return u + v <= 1.0
    u, v = u * u, v * v
    if exponent == 4.0:
        u, v = u * u, v * v
    return u + v <= 1.0


def _zbuffer(scene: _Scene, x: np.ndarray, y: np.ndarray, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Visible layer and its disparity at the points (x, y) of the ``view`` ("left" or "right").

    Returns (layer index int64, disparity float64), both shaped like ``x``. Left points are surface points
    themselves; a right point x_r sees the surface point x_l = (x_r + a + c y) / (1 - b) of each plane.
    """
    best_disparity = np.full(np.shape(x), -np.inf)
    best_layer = np.zeros(np.shape(x), dtype=np.int64)
    for layer, ((a, b, c), outline) in enumerate(zip(scene.planes, scene.outlines, strict=True)):
        if view == "left":
            x_surface = x
            disparity = a + b * x + c * y
        else:
            x_surface = (x + a + c * y) / (1.0 - b)
            disparity = x_surface - x
        nearer = (disparity > best_disparity) & _covers(outline, x_surface, y)
        best_disparity = np.where(nearer, disparity, best_disparity)
        best_layer[nearer] = layer
    return best_layer, best_disparity


def _value_noise(
    nodes: np.ndarray, shape: tuple[int, int], layer: np.ndarray, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Smooth value noise of ``layer``'s node grid at grid coordinates (u, v) (float32, N): (F, N) or (N,).

    Node values are blended with smoothstep weights (continuous slopes, no visible grid lines). Nodes are stored
    channels-first and blended in place: numpy is slow on a short last axis, and this function is most of the
    generator's time.
    """
    gh, gw = shape
    u = np.clip(u, 0.0, gw - 1.001)
    v = np.clip(v, 0.0, gh - 1.001)
    iu, iv = u.astype(np.intp), v.astype(np.intp)
    fu, fv = u - iu.astype(np.float32), v - iv.astype(np.float32)
    fu *= fu * (3 - 2 * fu)
    fv *= fv * (3 - 2 * fv)
    base = (layer * gh + iv) * gw + iu
    axis = nodes.ndim - 1
    top, top_right = np.take(nodes, base, axis=axis), np.take(nodes, base + 1, axis=axis)
    bottom, bottom_right = np.take(nodes, base + gw, axis=axis), np.take(nodes, base + gw + 1, axis=axis)
    top_right -= top
    top_right *= fu
    top += top_right  # top row blended along u
    bottom_right -= bottom
    bottom_right *= fu
    bottom += bottom_right  # bottom row blended along u
    bottom -= top
    bottom *= fv
    top += bottom
    return top


def _mirror(u: np.ndarray, last: int) -> np.ndarray:
    """Coordinates reflected into [0, last] (a photo tiled with mirrored copies: no seams)."""
    period = 2 * last
    u = np.mod(u, period)
    return np.where(u > last, period - u, u)


def _photo_texture(photo: _Photo, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples (3, N) float32 in [0, 1] of ``photo`` at the left-image points (x, y)."""
    image = load_photo(photo.name)
    _, height, width = image.shape
    u = _mirror(photo.affine[0, 0] * x + photo.affine[0, 1] * y + photo.affine[0, 2], width - 1)
    v = _mirror(photo.affine[1, 0] * x + photo.affine[1, 1] * y + photo.affine[1, 2], height - 1)
    iu = np.minimum(u.astype(np.intp), width - 2)
    iv = np.minimum(v.astype(np.intp), height - 2)
    fu, fv = (u - iu).astype(np.float32), (v - iv).astype(np.float32)
    flat = image.reshape(3, -1)
    base = iv * width + iu
    top = flat[:, base] * (1 - fu) + flat[:, base + 1] * fu
    bottom = flat[:, base + width] * (1 - fu) + flat[:, base + width + 1] * fu
    return np.clip((top * (1 - fv) + bottom * fv) * photo.tint, 0.0, 1.0)


def _texture(scene: _Scene, layer: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Colour (3, N) float32 in [0, 1] of the surface points (x, y) of ``layer`` (left-image coordinates)."""
    if not any(scene.photos):
        return _procedural_texture(scene, layer, x, y)
    colour = np.empty((3, layer.size), dtype=np.float32)
    procedural = np.array([photo is None for photo in scene.photos])[layer]
    points = np.nonzero(procedural)[0]
    if points.size:
        colour[:, points] = _procedural_texture(scene, layer[points], x[points], y[points])
    for index, photo in enumerate(scene.photos):
        points = np.nonzero(layer == index)[0] if photo is not None else ()
        if len(points):
            colour[:, points] = _photo_texture(photo, x[points], y[points])
    return colour


def _procedural_texture(scene: _Scene, layer: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-colour patches plus colour value noise, (3, N) float32 in [0, 1], at the points (x, y) of ``layer``."""
    xs = (x - scene.x0).astype(np.float32)
    ys = (y + _DOMAIN_MARGIN).astype(np.float32)
    spacing = scene.spacings[-1]
    patch = _value_noise(scene.patch_nodes, scene.grid_shapes[-1], layer, xs / spacing, ys / spacing)
    # colours are (2 * 3, L): row k * 3 + channel holds colour k of every layer
    colour = np.take(scene.colours[:3], layer, axis=1)
    second = np.take(scene.colours[3:], layer, axis=1)
    np.copyto(colour, second, where=patch > scene.patch_threshold)
    for nodes, shape, spacing in zip(scene.octaves, scene.grid_shapes[:-1], scene.spacings[:-1], strict=True):
        colour += _value_noise(nodes, shape, layer, xs / spacing, ys / spacing)
    return np.clip(colour, 0.0, 1.0, out=colour)


def _to_uint8(colour: np.ndarray, height: int, width: int) -> np.ndarray:
    """(3, N) colours in [0, 1] -> (H, W, 3) uint8 image."""
    return np.ascontiguousarray((colour * 255.0 + 0.5).astype(np.uint8).reshape(3, height, width).transpose(1, 2, 0))


def render_scene(scene: _Scene, height: int, width: int, occluded_valid: bool) -> dict[str, Any]:
    """Render both views of ``scene``: the image, disparity and valid arrays of a raw sample."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = x.ravel(), y.ravel()
    layer_left, disparity_left = _zbuffer(scene, x, y, "left")
    layer_right, disparity_right = _zbuffer(scene, x, y, "right")
    left = _texture(scene, layer_left, x, y)
    right = _texture(scene, layer_right, x + disparity_right, y)
    if occluded_valid:
        # Two arrays, not one array under two keys: raw-sample arrays may be modified in place (catalog contract).
        valid_left, valid_right = np.ones((height, width), dtype=bool), np.ones((height, width), dtype=bool)
    else:
        # A left point is seen by the right view iff the right view's nearest surface at x - d is the same layer
        # (and it lands inside the right frame); symmetrically for right points.
        x_match = x - disparity_left
        seen = _zbuffer(scene, x_match, y, "right")[0] == layer_left
        valid_left = (seen & (x_match >= -0.5)).reshape(height, width)
        x_match = x + disparity_right
        seen = _zbuffer(scene, x_match, y, "left")[0] == layer_right
        valid_right = (seen & (x_match < width - 0.5)).reshape(height, width)
    return {
        "left": _to_uint8(left, height, width),
        "right": _to_uint8(right, height, width),
        "disparity": disparity_left.reshape(height, width).astype(np.float32),
        "valid": valid_left,
        "disparity_right": disparity_right.reshape(height, width).astype(np.float32),
        "valid_right": valid_right,
    }
