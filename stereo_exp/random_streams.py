"""Every random-number stream of a run, in one registry.

A stream is the ``numpy.random.SeedSequence`` of ``[seed, stream id, *keys]``: its numbers depend on those integers
only (not on the process, the loader worker, or the step a run resumed at). Two streams never share numbers
because their ids differ at the same position of the sequence. The id is the only safe separator: a SeedSequence
drops trailing zero keys (``[s, 2, 1]`` and ``[s, 2, 1, 0]`` are one sequence) and spreads an integer of 2**32 or
more over several words (``[2**32 + 1, 1]`` is ``[1, 1, 1]``). So a new stream takes a new id here, never a
position among another stream's keys, and the separation holds for seeds below 2**32.

Ids 1-5 are the values these streams had before they were gathered here: changing one changes every batch a seed
produces, and a resumed checkpoint of an older run would continue with other batches.

The synthetic data set (data/synthetic.py) is not drawn from the run seed but from its own scene seed
(``datasets.synthetic.seed``), with the split ids 0 (train) and 1 (val); when both seeds are equal, a validation
scene and the augmentation of the training sample with the same number start from the same words. Separating them
would change the synthetic data set itself, and with it every published figure of the default run.
"""

from __future__ import annotations

from enum import IntEnum, unique

import numpy as np


@unique
class Stream(IntEnum):
    """Stream ids of the run seed, each with the keys its users pass (in this order)."""

    AUGMENTATION = 1  # (global sample number): a training sample's crop, scale, flip, colour, occlusion (transforms)
    MIX_ORDER = 2  # (dataset, pass): the permutation of a dataset's samples in one pass over it (data/mix.py)
    MIX_SHUFFLE = 3  # (step): the order of a global batch, i.e. which rank gets which draw (data/mix.py)
    MIX_PHASE = 4  # (): the phase of each dataset's draws in the mixed order (data/mix.py)
    CATALOG = 5  # (global sample number): a dataset's own random choices, e.g. Middlebury's ambient views (loader)
    LOADER_WORKER = 6  # (rank, worker id): a loader worker's global random, numpy and torch generators (loader)


def seed_sequence(seed: int, stream: Stream, *keys: int) -> np.random.SeedSequence:
    """The seed sequence of ``stream`` for the run ``seed`` and the stream's ``keys``."""
    return np.random.SeedSequence([int(seed), int(stream), *(int(key) for key in keys)])


def numpy_generator(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """A numpy generator of ``stream`` (PCG64 seeded by ``seed_sequence``)."""
    return np.random.default_rng(seed_sequence(seed, stream, *keys))


def seed_words(seed: int, stream: Stream, *keys: int) -> tuple[int, int]:
    """Two 32-bit words of ``stream``: seeds for generators that take integers (torch, ``random``, numpy's global)."""
    first, second = seed_sequence(seed, stream, *keys).generate_state(2, dtype=np.uint32)
    return int(first), int(second)


def torch_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 64-bit seed of ``stream`` for ``torch.Generator.manual_seed``: the two ``seed_words`` side by side."""
    first, second = seed_words(seed, stream, *keys)
    return first << 32 | second
