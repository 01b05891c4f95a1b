"""Training batches of a mix and evaluation datasets, read from tiny on-disk replicas and the procedural set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stereo_exp.data import build_eval_dataset, build_train_loader
from stereo_exp.data.catalog import DatasetRootError
from stereo_exp.data.config import AugmentationConfig, MixConfig
from stereo_exp.data.loader import Shard
from stereo_exp.data.options import DatasetOptions
from stereo_exp.data.synthetic import SyntheticConfig
from stereo_exp.schemas import LoaderConfig
from stereo_exp.testing.dataset_replicas import write_crestereo, write_eth3d
from tests.conftest import subprocess_env

CROP = [24, 32]
AUGMENT = AugmentationConfig(crop_size=CROP, scale_range=[0.8, 1.2], occlusion_prob=0.5, occlusion_size=[4, 8])
OPTIONS = DatasetOptions(synthetic=SyntheticConfig(height=40, width=56, train_samples=16, val_samples=4))
# Three native sizes: CREStereo replica 36x48, ETH3D replica 30x44 (grey PNGs), procedural 40x56.
MIX = MixConfig(datasets=["crestereo", "eth3d-train", "synthetic"], dataset_steps=[6, 2, 2])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_crestereo(root, size=(36, 48))
    write_eth3d(root, size=(30, 44))
    return root


def batches(
    data_root: Path,
    *,
    workers: int = 0,
    start: int = 0,
    stop: int = 10,
    batch_size: int = 4,
    rank: int = 0,
    world_size: int = 1,
) -> list[dict]:
    loader = build_train_loader(
        MIX,
        AUGMENT,
        LoaderConfig(num_workers=workers, persistent_workers=True, prefetch_factor=2),
        data_root=data_root,
        dataset_options=OPTIONS,
        batch_size=batch_size,
        seed=5,
        shard=Shard(rank=rank, world_size=world_size, start_step=start, stop_step=stop),
    )
    return list(loader)


def assert_same(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        for key in ("left", "right", "disparity", "valid", "dataset"):
            assert torch.equal(a[key], b[key]), key


def test_batches_mix_datasets_of_different_native_sizes_at_the_crop_size(data_root):
    result = batches(data_root)
    assert len(result) == 10  # steps 0..9 of the 10-step mix
    for batch in result:
        assert batch["left"].shape == batch["right"].shape == (4, 3, 24, 32)
        assert batch["left"].dtype == torch.float32 and batch["left"].min() >= -1 and batch["left"].max() <= 1
        assert batch["disparity"].shape == (4, 1, 24, 32) and batch["valid"].shape == (4, 1, 24, 32)
        assert batch["valid"].dtype == torch.bool and (batch["disparity"][~batch["valid"]] == 0).all()
        assert batch["dataset"].dtype == torch.int64
    datasets = torch.cat([b["dataset"] for b in result])
    # dataset_steps 6 / 2 / 2 with 4 samples per step: exactly 24 / 8 / 8 draws
    assert torch.bincount(datasets).tolist() == [24, 8, 8]


def test_the_same_seed_gives_the_same_batches_with_0_or_2_workers(data_root):
    assert_same(batches(data_root, workers=0, stop=4), batches(data_root, workers=2, stop=4))


def test_resuming_mid_mix_yields_the_same_next_batches_also_with_workers(data_root):
    uninterrupted = batches(data_root, workers=0, stop=7)
    resumed = batches(data_root, workers=2, start=4, stop=7)
    assert_same(uninterrupted[4:], resumed)


def test_two_ranks_together_see_the_batch_of_one_process_with_the_same_global_batch(data_root):
    single = batches(data_root, batch_size=4, stop=3)
    rank0 = batches(data_root, batch_size=2, rank=0, world_size=2, stop=3)
    rank1 = batches(data_root, batch_size=2, rank=1, world_size=2, stop=3)
    for whole, first, second in zip(single, rank0, rank1, strict=True):
        for key in ("left", "disparity", "valid", "dataset"):
            assert torch.equal(whole[key], torch.cat([first[key], second[key]]))


def test_a_missing_dataset_root_fails_before_any_sample_is_read(tmp_path):
    mix = MixConfig(datasets=["synthetic", "eth3d-train"], dataset_steps=[5, 5])
    with pytest.raises(DatasetRootError, match="eth3d-train"):
        build_train_loader(
            mix,
            AUGMENT,
            LoaderConfig(num_workers=0),
            data_root=tmp_path,
            dataset_options=OPTIONS,
            batch_size=2,
            seed=0,
        )


def test_a_run_longer_than_its_mix_is_refused(data_root):
    with pytest.raises(ValueError, match="dataset_steps"):
        batches(data_root, stop=11)


def test_eval_datasets_resize_and_normalise_without_augmentation():
    first = build_eval_dataset("synthetic-val", data_root="unused", dataset_options=OPTIONS, size=(32, 48))
    second = build_eval_dataset("synthetic-val", data_root="unused", dataset_options=OPTIONS, size=(32, 48))
    assert len(first) == 4
    sample = first[1]
    assert sample["left"].shape == (3, 32, 48) and sample["disparity"].shape == (1, 32, 48)
    assert sample["dataset"] == 0 and sample["valid"].all()  # dense ground truth, no max-disparity cap
    for key in ("left", "right", "disparity", "valid"):
        assert torch.equal(sample[key], second[1][key])


# A worker serving a tensor's file descriptor (as torch's workers hand batches over) to a main process that stops
# midway: it connects, leaves the worker's handshake message unread, and is gone. $1: "worker" runs the training
# loader's worker_init_fn first (the evaluation loader's does the same).
_RECEIVER_GONE_MIDWAY = """
import os, socket, sys, time
from multiprocessing import resource_sharer
from stereo_exp.data.loader import seed_worker
if sys.argv[1] == "worker":
    seed_worker(0, seed=0, rank=0)
read_end, _ = os.pipe()
address, _key = resource_sharer.DupFd(read_end)._id
receiver = socket.socket(socket.AF_UNIX)
receiver.connect(address)
time.sleep(0.3)
receiver.close()
time.sleep(0.3)
sys.excepthook(ValueError, ValueError("any other error is still reported"), None)
"""


def test_a_worker_whose_receiver_stops_midway_prints_no_traceback_but_reports_other_errors():
    # Ctrl-C of `python -m stereo_exp.eda` now and then (2 of 24 tries) ended with a worker's ConnectionResetError
    # traceback printed after "EDA interrupted (Ctrl-C).": the stop had come while a batch was handed over.
    def stderr(role: str) -> str:
        command = [sys.executable, "-c", _RECEIVER_GONE_MIDWAY, role]
        return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=60).stderr

    assert "ConnectionResetError: [Errno 104]" in stderr("plain process")  # what a worker printed
    assert stderr("worker").strip() == "ValueError: any other error is still reported"
