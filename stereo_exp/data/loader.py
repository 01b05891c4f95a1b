"""Training batches of a mix and evaluation datasets: catalog datasets + transforms + the mix sampler.

``build_train_loader`` returns a ``DataLoader`` whose batch sampler walks the mix from ``shard.start_step`` to
``shard.stop_step - 1`` and yields this rank's share of each step. A sample's augmentation draws from a generator seeded
by (seed, global sample number), and the catalog's own random choices (Middlebury ambient views) from a numpy
generator seeded the same way, so batches depend neither on ``num_workers`` nor on where a run was resumed.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stereo_exp.data.catalog import build_dataset
from stereo_exp.data.config import AugmentationConfig, MixConfig
from stereo_exp.data.mix import Draw, MixSampler
from stereo_exp.data.options import DatasetOptions
from stereo_exp.data.transforms import EvalTransform, GtResize, TrainTransform, sample_generator
from stereo_exp.random_streams import Stream, numpy_generator, seed_words
from stereo_exp.schemas import LoaderConfig

log = logging.getLogger(__name__)


def load_raw(dataset: Dataset, index: int, seed: int, sample_number: int) -> dict[str, Any]:
    """Raw sample ``index``; catalog datasets draw their random choices from (seed, sample number)."""
    load = getattr(dataset, "load", None)
    if load is None:
        return dataset[index]
    return load(index, rng=numpy_generator(seed, Stream.CATALOG, sample_number))


class MixDataset(Dataset):
    """Map-style dataset over ``Draw`` keys: raw sample of the draw's dataset -> training transform."""

    def __init__(self, datasets: list[Dataset], transform: TrainTransform, seed: int) -> None:
        self.datasets = datasets
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, draw: Draw) -> dict[str, Any]:
        raw = load_raw(self.datasets[draw.dataset], draw.index, self.seed, draw.number)
        if raw.get("disparity") is None:
            raise ValueError(f"{raw.get('path', draw)}: a training sample needs a ground-truth disparity")
        return self.transform(raw, sample_generator(self.seed, draw.number), dataset=draw.dataset)


class StepBatches(Sampler[list[Draw]]):
    """Batch sampler: this rank's draws of steps start_step .. stop_step - 1, one list per step."""

    def __init__(self, mix: MixSampler, *, rank: int, world_size: int, start_step: int, stop_step: int) -> None:
        self.mix = mix
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.stop_step = stop_step

    def __iter__(self) -> Iterator[list[Draw]]:
        for step in range(self.start_step, self.stop_step):
            yield self.mix.shard(step, self.rank, self.world_size)

    def __len__(self) -> int:
        return self.stop_step - self.start_step


def seed_worker(worker_id: int, *, seed: int, rank: int) -> None:
    """Seed a worker's global generators (samples never use them; anything incidental stays reproducible) and
    leave SIGTERM and SIGINT to the training process."""
    # SLURM (preemption, scancel, the end of a time limit), `kill -TERM -PGID` and Ctrl-C signal every process of
    # the job or terminal, workers included. torch's worker handler would end the worker, and the training process
    # would fail on its next batch before writing the checkpoint it owes (engine/trainer.py). The training process
    # alone acts on the signal and shuts its workers down itself; an orphaned worker still exits when its parent
    # is gone.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_abandoned_transfers()
    first, second = seed_words(seed, Stream.LOADER_WORKER, rank, worker_id)
    random.seed(first)
    np.random.seed(second)
    torch.manual_seed(first << 32 | second)
    # One intra-op thread per worker: the workers already run in parallel, more threads would oversubscribe the CPU.
    torch.set_num_threads(1)


def quiet_abandoned_transfers(_worker_id: int = 0) -> None:
    """In a DataLoader worker (also its ``worker_init_fn``): no traceback when the main process stops receiving a
    batch midway. A worker hands a batch's tensors over by serving their file descriptors on a connection the main
    process opens; a stop that ends the main process during that hand-over broke it, and multiprocessing's serving
    thread printed a ConnectionResetError traceback to the terminal after the stop's one line. The main process is
    the only peer: it reports its own stop (or its own error)."""
    sys.excepthook = partial(_unless_the_receiver_left, sys.excepthook)


def _unless_the_receiver_left(hook: Any, kind: type[BaseException], value: BaseException, traceback: Any) -> None:
    if not issubclass(kind, (ConnectionError, EOFError)):
        hook(kind, value, traceback)


def build_mix_datasets(mix: MixConfig, *, data_root: str | Path, dataset_options: DatasetOptions) -> list[Dataset]:
    """Every dataset of the mix, in mix order (a stand-in for one with 0 steps). ``build_dataset`` checks each root
    as it opens it and no sample is read here, so a missing root fails before any sample is read."""
    datasets = []
    for name, steps in zip(mix.datasets, mix.dataset_steps, strict=True):
        if steps == 0:
            log.info("mix: %s has dataset_steps 0; it is not read.", name)
            datasets.append(_Empty())
            continue
        dataset = build_dataset(name, data_root=data_root, options=dataset_options)
        if len(dataset) == 0:
            raise ValueError(f"mix dataset {name!r} under paths.data={str(data_root)!r} has no samples")
        datasets.append(dataset)
    return datasets


class _Empty(Dataset):
    """Stand-in for a mix dataset with 0 steps (never sampled)."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise IndexError("a dataset with 0 dataset steps is never sampled")


@dataclass(frozen=True)
class Shard:
    """The part of a run's batches one process reads: its rank among ``world_size`` and a range of steps."""

    rank: int = 0  # this process among the world_size processes of the run
    world_size: int = 1  # processes that share each step's global batch
    start_step: int = 0  # the first step to read (a resumed run starts at its checkpoint's step)
    stop_step: int | None = None  # one past the last step; None: the whole mix (the sum of its dataset_steps)


def build_train_loader(
    mix: MixConfig,
    augmentation: AugmentationConfig,
    loader: LoaderConfig,
    *,
    data_root: str | Path,
    dataset_options: DatasetOptions,
    batch_size: int,
    seed: int,
    shard: Shard = Shard(),
) -> Iterable[dict[str, Any]]:
    """This rank's training batches for steps ``shard.start_step`` .. ``shard.stop_step - 1``.

    Each batch is the default collation of ``batch_size`` contract samples (docs/ARCHITECTURE.md): ``left``,
    ``right`` (B, 3, H, W) float32 in [-1, 1], ``disparity`` (B, 1, H, W) float32, ``valid`` (B, 1, H, W) bool,
    ``dataset`` (B,) int64 index into ``mix.datasets``; H, W = ``augmentation.crop_size``. The order is a pure
    function of (seed, step, batch_size x world_size): resuming at step k only needs k. Every dataset root is
    checked before anything is read.
    """
    mix_steps = sum(mix.dataset_steps)
    start_step, stop_step = shard.start_step, mix_steps if shard.stop_step is None else shard.stop_step
    if not 0 <= start_step <= stop_step <= mix_steps:
        raise ValueError(
            f"steps {start_step}..{stop_step} must satisfy 0 <= start_step <= total_steps <= {mix_steps}, the sum "
            "of mix.dataset_steps (train.max_steps may shorten a run, not lengthen it)"
        )
    if batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {batch_size}")
    datasets = build_mix_datasets(mix, data_root=data_root, dataset_options=dataset_options)
    global_batch_size = batch_size * shard.world_size
    sampler = MixSampler([len(d) for d in datasets], mix.dataset_steps, global_batch_size=global_batch_size, seed=seed)
    workers = loader.num_workers
    batches = StepBatches(
        sampler, rank=shard.rank, world_size=shard.world_size, start_step=start_step, stop_step=stop_step
    )
    return DataLoader(
        MixDataset(datasets, TrainTransform(augmentation), seed),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=loader.pin_memory and torch.cuda.is_available(),
        persistent_workers=loader.persistent_workers and workers > 0,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
        worker_init_fn=partial(seed_worker, seed=seed, rank=shard.rank),
        # Seeds DataLoader's own base seed, so even torch's per-worker seeds are reproducible.
        generator=torch.Generator().manual_seed(seed),
    )


class EvalDataset(Dataset):
    """A catalog dataset seen through ``EvalTransform`` (contract samples, ``dataset`` = 0)."""

    def __init__(self, dataset: Dataset, transform: EvalTransform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # A fixed generator per index: Middlebury's ambient-view choice is the same in every evaluation.
        raw = load_raw(self.dataset, index, seed=0, sample_number=index)
        return self.transform(raw)


def build_eval_dataset(
    name: str,
    *,
    data_root: str | Path,
    dataset_options: DatasetOptions | None = None,
    size: tuple[int, int] | None = None,
    gt_resize: GtResize | str = GtResize.valid,
) -> Dataset:
    """Validation / evaluation samples of catalog ``name``: no augmentation; ``size`` (H, W) resizes, the ground
    truth as ``gt_resize`` says (see ``EvalTransform``). The root is checked first (by ``build_dataset``)."""
    dataset = build_dataset(name, data_root=data_root, options=dataset_options)
    return EvalDataset(dataset, EvalTransform(size, gt_resize))
