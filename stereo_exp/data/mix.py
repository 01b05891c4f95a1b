"""Mixture sampler: which sample of which dataset each rank trains on at each step.

Semantics (docs/ARCHITECTURE.md): a mix of datasets with ``dataset_steps`` s_1..s_n trains for
T = sum(s) steps on a global batch of B = batch_size x world_size samples; dataset i provides exactly
n_i = s_i x B of the N = T x B samples (share s_i / T); each dataset is reshuffled on each pass through it; the
order is a pure function of (seed, step) for a given global batch, identical on every rank; rank r takes its own
contiguous shard of each global batch.

How the n_i draws are interleaved: dataset i's k-th draw is placed at time t = (k N + o_i) / n_i on a timeline
[0, N) that holds one sample per unit, where o_i in [0, N) is a seeded phase; the global order sorts all draws by
time (ties: lower dataset index first). Every stretch of the run thus holds each dataset in its share up to
one sample (a 88/6/6 mix gives every step of 16 samples ~14 / ~1 / ~1, never a run of one dataset), and the
position of any step is computed directly: the number of draws of dataset i before time tau is
ceil((tau n_i - o_i) / N), clipped to [0, n_i]. Resuming at step 290,000 of 300,000 costs the same as step 0.
Each global batch is then shuffled (seeded by step), so which rank gets which dataset varies.

Dataset i's k-th draw is sample ``perm_{i,e}[k mod len_i]`` of pass e = k // len_i, a permutation seeded by
(seed, i, e).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stereo_exp.random_streams import Stream, numpy_generator, seed_sequence


@dataclass(frozen=True)
class Draw:
    """One sample of the mix: ``dataset`` (index in the mix), ``index`` (in that dataset), ``number`` (global)."""

    dataset: int
    index: int
    number: int  # global sample number: step x global batch + position; seeds the sample's augmentation


class MixSampler:
    """The order of a mix (see the module docstring); stateless: any step is computed from scratch.

    Args:
        dataset_lengths: samples in each dataset (>= 1 where its steps are > 0).
        dataset_steps: steps of each dataset (>= 0, positive sum).
        global_batch_size: batch_size x world_size.
        seed: the run seed.
    """

    def __init__(
        self, dataset_lengths: Sequence[int], dataset_steps: Sequence[int], *, global_batch_size: int, seed: int
    ) -> None:
        if len(dataset_lengths) != len(dataset_steps):
            raise ValueError(f"{len(dataset_lengths)} dataset lengths but {len(dataset_steps)} dataset steps")
        if global_batch_size < 1:
            raise ValueError(f"global batch size must be >= 1, got {global_batch_size}")
        if any(s < 0 for s in dataset_steps) or sum(dataset_steps) <= 0:
            raise ValueError(f"dataset_steps must be >= 0 with a positive sum, got {list(dataset_steps)}")
        for i, (length, steps) in enumerate(zip(dataset_lengths, dataset_steps, strict=True)):
            if steps > 0 and length < 1:
                raise ValueError(f"dataset {i} of the mix has {length} samples but {steps} dataset steps")
        self.lengths = [int(n) for n in dataset_lengths]
        self.steps = [int(s) for s in dataset_steps]
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.total_steps = sum(self.steps)
        self.total_samples = self.total_steps * self.global_batch_size  # N
        self.draws = [s * self.global_batch_size for s in self.steps]  # n_i
        phases = seed_sequence(self.seed, Stream.MIX_PHASE).generate_state(len(self.steps), dtype=np.uint64)
        self.phases = [int(p) % self.total_samples for p in phases]  # o_i
        # Exact integer sort keys: time x lcm(n) = (k N + o_i) x (lcm / n_i).
        active = [n for n in self.draws if n > 0]
        lcm = math.lcm(*active)
        self._key_factor = [lcm // n if n > 0 else 0 for n in self.draws]
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def draws_before(self, time: int) -> list[int]:
        """Draws of each dataset placed before ``time`` (0 <= time <= N) on the timeline."""
        counts = []
        for n, phase in zip(self.draws, self.phases, strict=True):
            a = time * n - phase
            counts.append(0 if a <= 0 or n == 0 else min(-(-a // self.total_samples), n))
        return counts

    def _ordered(self, start: int, count: int) -> list[tuple[int, int]]:
        """(dataset, k) of global positions start .. start + count - 1 of the time-sorted order."""
        if start < 0 or start + count > self.total_samples:
            raise IndexError(f"positions {start}..{start + count - 1} outside the mix's {self.total_samples} samples")
        # Before time start - n_datasets fewer than `start` draws lie (each dataset is ahead of its share by < 1).
        time = max(0, start - len(self.draws))
        first = self.draws_before(time)
        needed = start + count - sum(first)
        candidates = []
        for i, (k0, n) in enumerate(zip(first, self.draws, strict=True)):
            for k in range(k0, min(k0 + needed, n)):
                key = (k * self.total_samples + self.phases[i]) * self._key_factor[i]
                candidates.append((key, i, k))
        candidates.sort()
        skip = start - sum(first)
        return [(i, k) for _, i, k in candidates[skip : skip + count]]

    def dataset_index(self, dataset: int, k: int) -> int:
        """Sample index of dataset ``dataset``'s ``k``-th draw: its pass k // len is a seeded permutation."""
        length = self.lengths[dataset]
        epoch, position = divmod(k, length)
        key = (dataset, epoch)
        permutation = self._permutations.get(key)
        if permutation is None:
            # Keep the two most recent passes per dataset: a batch may straddle a pass boundary.
            for old in [old for old in self._permutations if old[0] == dataset and old[1] < epoch - 1]:
                del self._permutations[old]
            permutation = numpy_generator(self.seed, Stream.MIX_ORDER, dataset, epoch).permutation(length)
            self._permutations[key] = permutation
        return int(permutation[position])

    def global_batch(self, step: int) -> list[Draw]:
        """The ``global_batch_size`` draws of ``step`` (0 <= step < total_steps), shuffled, identical on every rank."""
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} outside the mix's steps 0..{self.total_steps - 1}")
        size = self.global_batch_size
        ordered = self._ordered(step * size, size)
        order = numpy_generator(self.seed, Stream.MIX_SHUFFLE, step).permutation(size)
        return [
            Draw(dataset=i, index=self.dataset_index(i, k), number=step * size + position)
            for position, (i, k) in enumerate(ordered[j] for j in order)
        ]

    def shard(self, step: int, rank: int, world_size: int) -> list[Draw]:
        """Rank ``rank``'s part of the global batch of ``step``: positions rank x b .. (rank + 1) x b - 1."""
        if world_size < 1 or self.global_batch_size % world_size != 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank {rank} / world size {world_size} cannot shard a global batch of {self.global_batch_size}"
            )
        per_rank = self.global_batch_size // world_size
        return self.global_batch(step)[rank * per_rank : (rank + 1) * per_rank]
