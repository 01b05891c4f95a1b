"""Checkpoint files: atomic writes, weights_only loading, pruning, RNG round trip."""

import random
import re

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


def test_the_checkpointer_writes_a_step_once_and_keeps_the_newest(tmp_path):
    saver = ckpt.Checkpointer(tmp_path, keep_last=2)
    for step in (2, 4, 4, 6):  # step 4 twice: a periodic checkpoint, then a stop signal at the same step
        saver.save({"model": {"w": torch.full((2,), float(step))}, "step": step}, step)
    assert [p.name for p in saver.list()] == ["step_0000004.pth", "step_0000006.pth"]
    assert saver.newest_intact()[1]["step"] == 6


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    saver = ckpt.Checkpointer(tmp_path, keep_last=3)
    for step in (2, 4, 6):
        saver.save({"model": {"w": torch.zeros(1000)}, "step": step}, step)
    newest = saver.path(6)
    newest.write_bytes(newest.read_bytes()[:500])  # truncated, as by a disk that filled up outside our writer
    path, state = saver.newest_intact()
    assert (path.name, state["step"]) == ("step_0000004.pth", 4)
    assert "Skipping damaged checkpoint" in caplog.text and "step_0000006.pth" in caplog.text
    assert newest.exists()  # left in place: a save of step 6 replaces it


def test_a_directory_of_damaged_checkpoints_is_refused_naming_each(tmp_path):
    saver = ckpt.Checkpointer(tmp_path, keep_last=3)
    saver.save({"model": {}, "step": 2}, 2)
    saver.path(2).write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.DamagedCheckpointsError, match=r"(?s)step_0000002\.pth: .*\nNothing was changed"):
        saver.newest_intact()


def test_a_full_disk_names_the_file_and_the_bytes_needed_removes_the_partial_write_and_keeps_the_previous_one(
    small_filesystem,
):
    disk = small_filesystem("1m")  # a real tmpfs: the second 600 kB checkpoint does not fit beside the first
    saver = ckpt.Checkpointer(disk, keep_last=2)
    first = saver.save({"model": {"w": torch.ones(150_000)}, "step": 1}, 1)
    with pytest.raises(ckpt.CheckpointWriteError) as failed:
        saver.save({"model": {"w": torch.ones(150_000)}, "step": 2}, 2)
    message = str(failed.value)
    assert "Could not write checkpoint" in message and "step_0000002.pth" in message
    assert re.search(r"No space left on device: [\d,]+ bytes needed, [\d,]+ free", message), message
    assert f"The newest checkpoint is still {first}" in message
    assert not list(disk.rglob("*.tmp"))  # the partial write is gone
    assert torch.equal(ckpt.load_checkpoint(first)["model"]["w"], torch.ones(150_000))  # and the previous is intact
