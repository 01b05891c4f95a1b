"""Checkpoint files: atomic writes, weights_only loading, pruning, RNG round trip."""

import random

import numpy as np
import pytest
import torch

from stereo_exp.engine import checkpoint as ckpt


def test_checkpoint_round_trips_with_weights_only_and_restores_every_generator(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "step": 7, "rng": ckpt.rng_state(), "config": {"seed": 0}}
    expected = (torch.rand(2), np.random.rand(2), random.random())
    path = ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 7), state)

    loaded = ckpt.load_checkpoint(path)  # weights_only=True inside
    ckpt.set_rng_state(loaded["rng"])
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


def test_a_truncated_checkpoint_is_reported_by_name(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "step_0000001.pth", {"model": {"w": torch.zeros(1000)}, "step": 1})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=r"step_0000001\.pth"):
        ckpt.load_checkpoint(path)


def test_a_checkpoint_holding_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "step": 0, "payload": object()}, path)  # unpickling would need a global
    with pytest.raises(RuntimeError, match="plain Python types"):
        ckpt.load_checkpoint(path)


def test_pruning_keeps_the_newest_checkpoints(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, step), {"model": {}, "step": step})
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000030.pth", "step_0000040.pth"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000040.pth"
