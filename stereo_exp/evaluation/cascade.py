"""Cascade evaluation over a grid of (cascade count, recurrent iterations), shared by ``evaluate`` and training.

``evaluate_grid`` runs one dataset: every process takes a disjoint shard of the samples (``rank::world_size``, no
padding duplicates), runs each grid cell on each batch, and adds per-image metric sums that are then summed across
processes. Batches are the outer loop and grid cells the inner one, so each sample is read and decoded once for the
whole grid. ``run_validation`` evaluates the datasets of an ``eval`` config and flattens the results for MLflow.

Every rank must call these functions (they end in collectives); rank 0 alone shows a progress bar and gets pictures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from tqdm import tqdm

from stereo_exp.data.loader import quiet_abandoned_transfers
from stereo_exp.distributed import DistEnv
from stereo_exp.evaluation.metrics import MetricSums, reduce_metrics
from stereo_exp.evaluation.visualize import figure_to_png, picture_grid_figure
from stereo_exp.models.registry import unwrap_ddp

if TYPE_CHECKING:  # drawn by evaluation.visualize, which imports matplotlib when it draws
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# image_callback(index, n_cascades, n_iterations, sample, prediction): called on the rank that owns dataset sample
# ``index`` for every grid cell; ``sample`` holds that image's left/right (3, H, W), disparity/valid (1, H, W) on
# the CPU, ``prediction`` its (1, H, W) disparity in px.
ImageCallback = Callable[[int, int, int, dict[str, Tensor], Tensor], None]


class GridResult(dict):
    """``{n_cascades: {n_iterations: {metric: value}}}`` of one dataset, with the image counts behind it.

    ``num_images``: images averaged (with at least one valid pixel), ``num_skipped``: images without a valid pixel
    (left out of every average), ``nonfinite``: ``{(n_cascades, n_iterations): images with non-finite metrics}``
    for the cells where that happened.
    """

    def __init__(
        self,
        cells: dict[int, dict[int, dict[str, float]]],
        *,
        num_images: int,
        num_skipped: int,
        nonfinite: dict[tuple[int, int], int] | None = None,
    ) -> None:
        super().__init__(cells)
        self.num_images = num_images
        self.num_skipped = num_skipped
        self.nonfinite = dict(nonfinite or {})


def shard_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """Samples of ``rank``: ``rank, rank + world_size, ...``. Shards are disjoint and cover every sample once,
    unlike ``DistributedSampler``, which pads with duplicates that would be counted twice."""
    return list(range(rank, num_samples, world_size))


class _Indexed(Dataset):
    """The samples of ``indices``, each returned with its index in the full dataset."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any]]:
        return self.indices[i], self.dataset[self.indices[i]]


def _collate(items: list[tuple[int, dict[str, Any]]]) -> tuple[list[int], dict[str, Any]]:
    indices = [index for index, _ in items]
    sizes = {tuple(sample["left"].shape[-2:]) for _, sample in items}
    if len(sizes) > 1:
        raise ValueError(
            f"Samples {indices} have different sizes {sorted(sizes)} and cannot share a batch: set eval.batch_size=1 "
            "or resize with eval.size=[H,W]."
        )
    return indices, default_collate([sample for _, sample in items])


def evaluate_grid(
    model: nn.Module,
    dataset: Dataset,
    *,
    n_cascades: Sequence[int],
    n_iterations: Sequence[int],
    batch_size: int,
    dist: DistEnv,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    image_callback: ImageCallback | None = None,
    extras: Sequence[str] = (),
    num_workers: int = 0,
    desc: str = "eval",
) -> GridResult:
    """Metrics of ``model`` on ``dataset`` for every (cascade count, iterations) cell.

    Args:
        model: a stereo network (a DDP wrapper is unwrapped: evaluation runs no collective per batch, so ranks
            with fewer samples never wait for the others). Put in eval mode for the call, restored afterwards.
        dataset: contract samples (``left``/``right`` (3, H, W) in [-1, 1], ``disparity``/``valid`` (1, H, W)).
        n_cascades, n_iterations: the grid; values keep their order in the result.
        batch_size: images per forward pass on each process (per-image averages: the result does not depend on it).
        dist: the process group; ``device``: where the model runs.
        amp_dtype: autocast dtype (bfloat16/float16) or None for float32.
        progress: show a progress bar on rank 0 (images x cells).
        image_callback: see ``ImageCallback``.
        extras: optional metrics (``evaluation.metrics.EXTRA_METRICS``).
        num_workers: DataLoader worker processes.
        desc: progress-bar label.

    Returns:
        ``GridResult``, identical on every rank.
    """
    from stereo_exp.models.inference import predict_disparity

    net = unwrap_ddp(model)
    cells = [(c, i) for c in n_cascades for i in n_iterations]
    sums = {cell: MetricSums.empty(extras) for cell in cells}
    shard = shard_indices(len(dataset), dist.rank, dist.world_size)
    loader = DataLoader(
        _Indexed(dataset, shard),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=quiet_abandoned_transfers,
    )
    bar = tqdm(  # one forward pass per image and grid cell
        total=len(shard) * len(cells),
        desc=f"{desc} ({len(cells)} grid cells per image)" if len(cells) > 1 else desc,
        unit="pass",
        disable=not (progress and dist.is_main),
        leave=False,
    )
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for indices, batch in loader:
                left = batch["left"].to(device, non_blocking=True)  # (B, 3, H, W) in [-1, 1]
                right = batch["right"].to(device, non_blocking=True)
                gt = batch["disparity"].to(device, non_blocking=True)  # (B, 1, H, W) px
                valid = batch["valid"].to(device, non_blocking=True)  # (B, 1, H, W) bool
                for n_casc, n_iters in cells:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        pred = predict_disparity(net, left, right, num_iters=n_iters, n_cascades=n_casc)
                    pred = pred.float()  # (B, 1, H, W) px; metrics in float32/64 whatever the autocast dtype
                    sums[(n_casc, n_iters)].add(pred, gt, valid)
                    if image_callback is not None:
                        for b, index in enumerate(indices):
                            sample = {key: batch[key][b] for key in ("left", "right", "disparity", "valid")}
                            image_callback(index, n_casc, n_iters, sample, pred[b].cpu())
                    bar.update(len(indices))
    finally:
        net.train(was_training)
        bar.close()

    reduced = {cell: reduce_metrics(s, dist) for cell, s in sums.items()}
    first = reduced[cells[0]]
    grid: dict[int, dict[int, dict[str, float]]] = {}
    for (n_casc, n_iters), s in reduced.items():
        grid.setdefault(n_casc, {})[n_iters] = s.means()
    result = GridResult(
        grid,
        num_images=first.images,
        num_skipped=first.skipped,
        nonfinite={cell: s.nonfinite for cell, s in reduced.items() if s.nonfinite},
    )
    if dist.is_main:
        if result.num_skipped:
            log.warning(
                "%s: %d of %d images have no valid ground-truth pixel and are left out of the averages.",
                desc,
                result.num_skipped,
                result.num_skipped + result.num_images,
            )
        for (n_casc, n_iters), count in result.nonfinite.items():
            log.warning(
                "%s: %d images have non-finite predictions at n_cascades=%d, n_iterations=%d (metrics are NaN).",
                desc,
                count,
                n_casc,
                n_iters,
            )
    return result


class PictureCollector:
    """An ``ImageCallback`` that draws picture grids of the samples with index < ``count`` of one dataset.

    ``cells``: the grid cells to draw (None = all). ``gather(dist)`` collects every rank's pictures on rank 0.
    Names are ``<dataset>/<index:04d>_c<n_cascades>_i<n_iterations>``.
    """

    def __init__(
        self,
        dataset_name: str,
        count: int,
        *,
        cells: Sequence[tuple[int, int]] | None = None,
        max_error: float = 3.0,
        colormap: str = "turbo",
    ) -> None:
        self.dataset_name, self.count = dataset_name, count
        self.cells = None if cells is None else set(cells)
        self.max_error, self.colormap = max_error, colormap
        self.figures: dict[str, Figure] = {}

    def __call__(self, index: int, n_cascades: int, n_iterations: int, sample: dict[str, Tensor], pred: Tensor) -> None:
        if index >= self.count or (self.cells is not None and (n_cascades, n_iterations) not in self.cells):
            return
        name = f"{self.dataset_name}/{index:04d}_c{n_cascades}_i{n_iterations}"
        self.figures[name] = picture_grid_figure(
            sample["left"],
            sample["right"],
            sample["disparity"],
            pred,
            sample["valid"],
            max_error=self.max_error,
            colormap=self.colormap,
            title=f"{self.dataset_name} #{index}: {n_cascades} cascade(s), {n_iterations} iterations",
        )

    def gather(self, dist: DistEnv) -> dict[str, Figure]:
        """Every rank's figures, sorted by name, on rank 0 (empty elsewhere). A collective when distributed."""
        figures = dict(self.figures)
        if dist.is_distributed and torch.distributed.is_initialized():
            everything: list[dict[str, Figure] | None] = [None] * dist.world_size
            torch.distributed.all_gather_object(everything, figures)  # a few figures (PNG-sized), pickled
            figures = {k: v for part in everything if part for k, v in part.items()}
        return dict(sorted(figures.items())) if dist.is_main else {}


@dataclass
class ValidationResult:
    """What one validation pass gives the trainer (identical ``metrics`` on every rank).

    metrics: ``{"val/<dataset>/<metric>": value}`` for the first grid cell; further cells (when ``eval.n_cascades``
        or ``eval.n_iterations`` list several) as ``val/<dataset>/c<cascades>_i<iterations>/<metric>``.
    counts: ``{"val/<dataset>/images": averaged images, "val/<dataset>/skipped_images": images without a valid
        pixel}``.
    grids: the full ``GridResult`` per dataset.
    figures: picture grids of the first ``eval.save_images`` samples per dataset, for the first grid cell, named
        ``<dataset>/<index:04d>_c<c>_i<i>`` (rank 0 only; empty elsewhere).
    """

    metrics: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    grids: dict[str, GridResult] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)


def save_figures(figures: dict[str, Figure], folder: str | Path) -> list[Path]:
    """Write each figure as ``<folder>/<name>.png`` (names may contain ``/``); returns the paths written."""
    paths = []
    for name, figure in figures.items():
        path = Path(folder) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(figure_to_png(figure))
        paths.append(path)
    return paths


def _grid_iterations(eval_cfg: Any, num_iters: int) -> list[int]:
    """The grid's iteration counts: ``eval_cfg.n_iterations``, or ``[num_iters]`` when that is null."""
    return list(eval_cfg.n_iterations) if eval_cfg.n_iterations is not None else [num_iters]


def evaluate_datasets(
    model: nn.Module,
    eval_cfg: Any,
    *,
    data_root: str,
    dataset_options: Any,
    num_iters: int,
    dist: DistEnv,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    progress: bool,
    picture_cells: Sequence[tuple[int, int]] | None = None,
) -> tuple[dict[str, GridResult], dict[str, Figure]]:
    """Evaluate every dataset of ``eval_cfg`` (an ``EvalConfig``) on its grid; the code path of evaluate and training.

    ``num_iters`` fills ``eval_cfg.n_iterations`` when that is null. Pictures of the first ``eval_cfg.save_images``
    samples are drawn for ``picture_cells`` (None = every cell). Returns the per-dataset grids (every rank) and the
    figures (rank 0).
    """
    from stereo_exp.data import build_eval_dataset

    iterations = _grid_iterations(eval_cfg, num_iters)
    size = tuple(eval_cfg.size) if eval_cfg.size is not None else None
    grids: dict[str, GridResult] = {}
    figures: dict[str, Figure] = {}
    for name in eval_cfg.datasets:
        dataset = build_eval_dataset(
            name, data_root=data_root, dataset_options=dataset_options, size=size, gt_resize=eval_cfg.gt_resize
        )
        if eval_cfg.max_samples is not None and eval_cfg.max_samples < len(dataset):
            dataset = Subset(dataset, range(eval_cfg.max_samples))  # the first N: the same ones on every run
        collector = None
        if eval_cfg.save_images > 0:
            collector = PictureCollector(
                name,
                eval_cfg.save_images,
                cells=picture_cells,
                max_error=eval_cfg.max_error_px,
                colormap=eval_cfg.colormap,
            )
        grids[name] = evaluate_grid(
            model,
            dataset,
            n_cascades=list(eval_cfg.n_cascades),
            n_iterations=iterations,
            batch_size=eval_cfg.batch_size,
            dist=dist,
            device=device,
            amp_dtype=amp_dtype,
            progress=progress,
            image_callback=collector,
            extras=list(eval_cfg.extras),
            num_workers=eval_cfg.num_workers,
            desc=name,
        )
        if collector is not None:
            figures.update(collector.gather(dist))
    return grids, figures


def run_validation(
    model: nn.Module,
    eval_cfg: Any,
    *,
    data_root: str,
    dataset_options: Any,
    num_iters: int,
    dist: DistEnv,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    progress: bool = False,
) -> ValidationResult:
    """Validation during training: ``evaluate_datasets`` flattened for MLflow (see ``ValidationResult``)."""
    first_cell = (int(eval_cfg.n_cascades[0]), int(_grid_iterations(eval_cfg, num_iters)[0]))
    grids, figures = evaluate_datasets(
        model,
        eval_cfg,
        data_root=data_root,
        dataset_options=dataset_options,
        num_iters=num_iters,
        dist=dist,
        device=device,
        amp_dtype=amp_dtype,
        progress=progress,
        picture_cells=[first_cell],
    )
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, grid in grids.items():
        for n_casc, by_iters in grid.items():
            for n_iters, values in by_iters.items():
                prefix = f"val/{name}" if (n_casc, n_iters) == first_cell else f"val/{name}/c{n_casc}_i{n_iters}"
                metrics.update({f"{prefix}/{metric}": value for metric, value in values.items()})
        counts[f"val/{name}/images"] = grid.num_images
        counts[f"val/{name}/skipped_images"] = grid.num_skipped
    return ValidationResult(metrics=metrics, counts=counts, grids=grids, figures=figures)
