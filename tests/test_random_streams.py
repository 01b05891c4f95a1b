"""The registry of random-number streams (stereo_exp/random_streams.py): no two streams share numbers, and the
streams that shape batches keep the values older runs were trained with."""

from __future__ import annotations

import itertools
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from stereo_exp.data.loader import seed_worker
from stereo_exp.data.transforms import sample_generator
from stereo_exp.random_streams import Stream, seed_words

# How many keys each stream takes (the registry's comments), to draw every stream the way its users do.
KEY_COUNTS = {
    Stream.AUGMENTATION: 1,
    Stream.MIX_ORDER: 2,
    Stream.MIX_SHUFFLE: 1,
    Stream.MIX_PHASE: 0,
    Stream.CATALOG: 1,
    Stream.LOADER_WORKER: 2,
}


class _WorkerSeed(Dataset):
    """Every item is the torch seed of the worker process that loads it."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return torch.initial_seed()


def test_a_loader_worker_never_draws_the_augmentation_numbers_of_a_sample():
    # Worker seeds were the sequence [seed, rank, worker]: rank 1 worker 0 was the augmentation of sample 0
    # ([seed, 1, 0]) and rank 2 worker w the order of dataset w's first pass ([seed, 2, w], trailing zero dropped).
    seed = 0
    loader = DataLoader(_WorkerSeed(), num_workers=1, worker_init_fn=partial(seed_worker, seed=seed, rank=1))
    worker_seed = int(next(iter(loader)))
    augmentation_seed = sample_generator(seed, 0).initial_seed()
    assert worker_seed != augmentation_seed


def test_no_two_streams_share_a_seed_sequence_for_any_keys_or_seed():
    drawn: dict[tuple[int, ...], tuple] = {}
    for stream, seed in itertools.product(Stream, (0, 1, 2)):
        assert stream in KEY_COUNTS, f"{stream!r}: a new stream needs its key count here"
        for keys in itertools.product(range(3), repeat=KEY_COUNTS[stream]):
            words = seed_words(seed, stream, *keys)
            assert words not in drawn, f"{(stream.name, seed, keys)} draws the numbers of {drawn[words]}"
            drawn[words] = (stream.name, seed, keys)
    assert len(drawn) == 3 * sum(3**count for count in KEY_COUNTS.values())


def test_the_streams_of_batches_keep_the_numbers_older_runs_drew():
    # Words of the sequences [7, id, *keys] as numpy 2.x gives them (recorded before the streams moved to the
    # registry): a different value means every batch of a seed changes, and older checkpoints resume elsewhere.
    assert seed_words(7, Stream.AUGMENTATION, 3) == (1916955614, 3708975997)
    assert seed_words(7, Stream.MIX_ORDER, 1, 0) == (1060258595, 3000229557)
    assert seed_words(7, Stream.MIX_SHUFFLE, 5) == (2226340077, 4020422256)
    assert seed_words(7, Stream.MIX_PHASE) == (3335713882, 2959363686)
    assert seed_words(7, Stream.CATALOG, 3) == (1558689951, 2157516705)
