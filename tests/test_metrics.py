"""Disparity metrics on hand-computed cases (evaluation/metrics.py).

The values are chosen to be exact in binary floating point, so thresholds (< 3, < 0.05) are tested at their edges.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
from typing import Any

import pytest
import torch

from stereo_exp.distributed import DistEnv
from stereo_exp.evaluation.metrics import CORE_METRICS, MetricSums, per_image_metrics, reduce_metrics


def _image(values: list[float]) -> torch.Tensor:
    """A (1, 1, 1, N) disparity row."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def _metrics(pred: list[float], gt: list[float], extras: tuple[str, ...] = ()) -> dict[str, float]:
    p, g = _image(pred), _image(gt)
    values, _ = per_image_metrics(p, g, g > 0, extras=extras)
    return {name: float(v[0]) for name, v in values.items()}


def test_every_metric_matches_its_definition_on_a_hand_computed_image():
    # gt 8, 16, 32, 64 and one pixel without ground truth (gt 0, prediction 99: ignored)
    # errors d = 0.5, 3, 2, 1; relative errors d/gt = 0.0625, 0.1875, 0.0625, 0.015625
    m = _metrics(pred=[8.5, 19.0, 30.0, 65.0, 99.0], gt=[8.0, 16.0, 32.0, 64.0, 0.0], extras=("bad-2.0", "d1"))
    assert m["mae"] == pytest.approx(1.625)  # (0.5 + 3 + 2 + 1) / 4
    assert m["rmse"] == pytest.approx(math.sqrt(3.5625))  # sqrt((0.25 + 9 + 4 + 1) / 4)
    assert m["1px"] == pytest.approx(0.25)  # only 0.5 < 1
    assert m["3px"] == pytest.approx(0.75)  # 0.5, 2, 1 < 3; d = 3 is not
    assert m["5px"] == pytest.approx(1.0)
    assert m["relepe"] == pytest.approx(0.08203125)  # (0.0625 + 0.1875 + 0.0625 + 0.015625) / 4
    assert m["fl-all"] == pytest.approx(25.0)  # only d = 1 has both d < 3 and d/gt < 0.05; in percent
    assert m["bad-2.0"] == pytest.approx(25.0)  # only d = 3 is > 2 (d = 2 is not); in percent
    assert m["d1"] == pytest.approx(0.0)  # d = 3 is not > 3
    assert list(m) == [*CORE_METRICS, "bad-2.0", "d1"]


def test_d1_needs_both_the_absolute_and_the_relative_bound():
    # d = 4, 4; d/gt = 0.4 (outlier) and 0.04 (within 5 %: not an outlier)
    m = _metrics(pred=[14.0, 104.0], gt=[10.0, 100.0], extras=("d1", "bad-2.0"))
    assert m["d1"] == pytest.approx(50.0)
    assert m["bad-2.0"] == pytest.approx(100.0)
    assert m["fl-all"] == pytest.approx(0.0)  # neither has d < 3


def test_metrics_are_averaged_per_image_not_per_pixel():
    # image 0: one valid pixel with d = 4; image 1: three valid pixels with d = 0
    gt = torch.tensor([[[[10.0, 0.0, 0.0]]], [[[10.0, 20.0, 30.0]]]])
    pred = torch.tensor([[[[14.0, 5.0, 5.0]]], [[[10.0, 20.0, 30.0]]]])
    sums = MetricSums.empty()
    sums.add(pred, gt, gt > 0)
    means = sums.means()
    assert means["mae"] == pytest.approx(2.0)  # (4 + 0) / 2 images; pooling pixels would give 1.0
    assert means["3px"] == pytest.approx(0.5)  # (0 + 1) / 2
    assert sums.images == 2 and sums.skipped == 0


def test_an_image_without_valid_pixels_is_counted_and_left_out_of_the_average():
    gt = torch.tensor([[[[10.0, 20.0]]], [[[0.0, 0.0]]]])  # image 1 has no ground truth at all
    pred = torch.tensor([[[[11.0, 20.0]]], [[[50.0, 50.0]]]])
    sums = MetricSums.empty()
    used = sums.add(pred, gt, gt > 0)
    assert used.tolist() == [True, False]
    assert sums.images == 1 and sums.skipped == 1
    assert sums.means()["mae"] == pytest.approx(0.5)  # image 0 alone: (1 + 0) / 2


def test_no_valid_image_at_all_gives_nan_not_zero():
    sums = MetricSums.empty()
    sums.add(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    assert sums.skipped == 1 and sums.images == 0
    assert all(math.isnan(v) for v in sums.means().values())


def test_a_nan_prediction_makes_the_metrics_nan_and_is_counted():
    gt = torch.tensor([[[[10.0, 10.0, 0.0]]], [[[10.0, 10.0, 0.0]]]])
    pred = torch.tensor([[[[float("nan"), 10.0, 10.0]]], [[[10.0, 10.0, float("nan")]]]])  # 2nd: NaN where invalid
    sums = MetricSums.empty()
    sums.add(pred, gt, gt > 0)
    assert sums.nonfinite == 1  # the NaN in image 1 sits on a pixel without ground truth
    assert math.isnan(sums.means()["3px"])  # a share metric too, not a silently lower share


def test_batch_size_does_not_change_the_sums():
    torch.manual_seed(0)
    gt = torch.rand(4, 1, 5, 7) * 20.0 + 1.0
    valid = torch.rand(4, 1, 5, 7) > 0.3
    pred = gt + torch.randn(4, 1, 5, 7) * 2.0
    together, one_by_one = MetricSums.empty(("d1",)), MetricSums.empty(("d1",))
    together.add(pred, gt, valid)
    for b in range(4):
        one_by_one.add(pred[b : b + 1], gt[b : b + 1], valid[b : b + 1])
    assert torch.equal(together.totals, one_by_one.totals)  # bit for bit
    assert together.images == one_by_one.images == 4


def _reduce_on_rank(rank: int, port: int, results: Any) -> None:
    """One of two gloo processes: add this rank's images, reduce, report what every rank then holds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = DistEnv(rank=rank, world_size=2, backend="gloo", source="test")
    dist.init_process_group()
    sums = MetricSums.empty()
    if rank == 0:  # one image: d = 1
        sums.add(_image([11.0]), _image([10.0]), _image([10.0]) > 0)
    else:  # an image without ground truth, and one with d = 3 and 0 (its mae: 1.5)
        gt = torch.tensor([[[[0.0, 0.0]]], [[[10.0, 20.0]]]])
        sums.add(torch.tensor([[[[5.0, 5.0]]], [[[13.0, 20.0]]]]), gt, gt > 0)
    reduced = reduce_metrics(sums, dist)
    results.put((rank, reduced.images, reduced.skipped, reduced.means()["mae"]))
    dist.destroy()


def test_two_ranks_reduce_to_the_average_over_every_image_of_both():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("fork")  # the ranks inherit the imports: no second start-up
    results = context.Queue()
    ranks = [context.Process(target=_reduce_on_rank, args=(rank, port, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    reported = sorted(results.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=30)
    # Per image over both ranks: (1 + 1.5) / 2; pooling the pixels would give (1 + 3 + 0) / 3.
    assert reported == [(0, 2, 1, 1.25), (1, 2, 1, 1.25)]


def test_mismatched_shapes_are_an_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(1, 1, 2, 2\), gt \(1, 1, 2, 3\)"):
        per_image_metrics(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 3), torch.ones(1, 1, 2, 3, dtype=torch.bool))


def test_valid_pixels_with_nonpositive_ground_truth_are_an_error():
    gt = _image([10.0, 0.0])
    with pytest.raises(ValueError, match="> 0 at every valid pixel"):
        per_image_metrics(gt, gt, torch.ones_like(gt, dtype=torch.bool))


def test_an_unknown_extra_metric_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'bad-3'.*bad-2.0"):
        MetricSums.empty(("bad-3",))
