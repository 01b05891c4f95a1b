"""Mixing by dataset steps: shares, passes, shards, and an order that is a pure function of (seed, step)."""

from __future__ import annotations

import time
from collections import Counter
from fractions import Fraction

import pytest

from stereo_exp.data.config import MixConfig
from stereo_exp.data.mix import MixSampler

PUBLISHED_STEPS = [264000, 18000, 18000]  # crestereo, eth3d-train, middlebury2014-other
PUBLISHED_LENGTHS = [200000, 27, 93]  # samples in CREStereo, ETH3D train, Middlebury 2014 additional


def draws(sampler: MixSampler, steps: range) -> list:
    return [draw for step in steps for draw in sampler.global_batch(step)]


def test_the_published_88_6_6_mix_holds_its_shares_within_one_percent_over_10k_draws():
    sampler = MixSampler(PUBLISHED_LENGTHS, PUBLISHED_STEPS, global_batch_size=16, seed=0)
    for first_step in (0, 150_000, 299_375):  # 625 steps x 16 = 10,000 draws at the start, middle and end
        counts = Counter(d.dataset for d in draws(sampler, range(first_step, first_step + 625)))
        shares = [counts[i] / 10_000 for i in range(3)]
        assert shares == pytest.approx([0.88, 0.06, 0.06], abs=0.01)


def test_every_dataset_gets_exactly_its_steps_times_the_global_batch_over_the_whole_mix():
    sampler = MixSampler([5, 3, 7], [7, 2, 3], global_batch_size=4, seed=1)
    counts = Counter(d.dataset for d in draws(sampler, range(sampler.total_steps)))
    assert counts == {0: 28, 1: 8, 2: 12}  # dataset_steps x 4
    assert sorted(d.number for d in draws(sampler, range(sampler.total_steps))) == list(range(48))


def test_the_order_is_the_time_sort_of_every_draw():
    # Dataset i's k-th draw sits at time (k N + o_i) / n_i (module docstring); a brute-force sort of all N draws
    # must give the order that the sampler computes step by step.
    sampler = MixSampler([5, 3, 7], [7, 2, 3], global_batch_size=4, seed=3)
    n_total = sampler.total_samples
    timeline = sorted(
        (Fraction(k * n_total + sampler.phases[i], n), i, k) for i, n in enumerate(sampler.draws) for k in range(n)
    )
    expected = [i for _, i, _ in timeline]
    ordered = [i for step in range(sampler.total_steps) for i, _ in sampler._ordered(step * 4, 4)]
    assert ordered == expected


def test_each_pass_through_a_dataset_is_a_fresh_permutation():
    sampler = MixSampler([7, 50], [10, 10], global_batch_size=4, seed=0)
    small = [d.index for d in draws(sampler, range(sampler.total_steps)) if d.dataset == 0]
    # 40 draws of a 7-sample dataset, in draw order (the within-step shuffle only permutes positions)
    by_draw = [sampler.dataset_index(0, k) for k in range(40)]
    assert sorted(small) == sorted(by_draw)
    passes = [by_draw[i : i + 7] for i in range(0, 35, 7)]
    assert all(sorted(p) == list(range(7)) for p in passes)  # every pass sees every sample once
    assert len({tuple(p) for p in passes}) == 5  # and in its own order


def test_rank_shards_are_disjoint_and_together_the_global_batch():
    sampler = MixSampler(PUBLISHED_LENGTHS, PUBLISHED_STEPS, global_batch_size=16, seed=0)
    for step in (0, 1, 12345):
        shards = [sampler.shard(step, rank, 8) for rank in range(8)]
        assert all(len(s) == 2 for s in shards)
        numbers = [d.number for s in shards for d in s]
        assert len(set(numbers)) == 16
        assert [d for s in shards for d in s] == sampler.global_batch(step)


def test_the_order_is_a_pure_function_of_seed_and_step():
    walked = MixSampler(PUBLISHED_LENGTHS, PUBLISHED_STEPS, global_batch_size=16, seed=0)
    for step in range(3):
        walked.global_batch(step)
    fresh = MixSampler(PUBLISHED_LENGTHS, PUBLISHED_STEPS, global_batch_size=16, seed=0)
    assert walked.global_batch(3) == fresh.global_batch(3)
    other_seed = MixSampler(PUBLISHED_LENGTHS, PUBLISHED_STEPS, global_batch_size=16, seed=1)
    assert other_seed.global_batch(3) != fresh.global_batch(3)


def test_resuming_at_step_290000_of_300000_takes_well_under_a_second():
    start = time.perf_counter()
    sampler = MixSampler(PUBLISHED_LENGTHS, PUBLISHED_STEPS, global_batch_size=16, seed=0)
    batch = sampler.global_batch(290_000)
    elapsed = time.perf_counter() - start
    assert len(batch) == 16 and batch[0].number >= 290_000 * 16
    # Constant work per step (a 200k permutation is most of it, ~10 ms); generous for a loaded CI machine.
    assert elapsed < 1.0


def test_a_dataset_with_zero_steps_is_never_drawn():
    sampler = MixSampler([4, 0, 6], [3, 0, 5], global_batch_size=2, seed=0)
    assert {d.dataset for d in draws(sampler, range(sampler.total_steps))} == {0, 2}


def test_steps_outside_the_mix_are_refused():
    sampler = MixSampler([4], [3], global_batch_size=2, seed=0)
    with pytest.raises(IndexError, match="step 3"):
        sampler.global_batch(3)
    with pytest.raises(ValueError, match="world size 3"):
        sampler.shard(0, 0, 3)


def test_mix_config_with_different_lengths_names_both_keys():
    with pytest.raises(ValueError, match=r"mix\.datasets .* mix\.dataset_steps"):
        MixConfig(datasets=["crestereo", "eth3d-train"], dataset_steps=[10])
    with pytest.raises(ValueError, match=r"mix\.dataset_steps"):
        MixConfig(datasets=["crestereo"], dataset_steps=[-1])
