"""The training engine end to end on the tiny CREStereo: runs, clipping, precision, NaN guard, DDP, resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from omegaconf.errors import ConfigAttributeError, ValidationError

from stereo_exp import data
from stereo_exp.engine import checkpoint as ckpt
from stereo_exp.engine.schedule import build_scheduler
from stereo_exp.engine.trainer import NonFiniteLossError, train, train_step
from stereo_exp.models import build_model, get_model_builder, register_model
from tests.conftest import REPO_ROOT, TINY_RUN, assert_same_weights, compose_train_config, subprocess_env


def first_batch(cfg):
    loader = data.build_train_loader(
        cfg.mix,
        cfg.augmentation,
        cfg.loader,
        data_root=cfg.paths.data,
        dataset_options=cfg.datasets,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        start_step=0,
        total_steps=1,
    )
    return next(iter(loader))


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(path)["model"]


def test_a_short_run_validates_checkpoints_and_returns_metrics(tmp_path):
    result = train(compose_train_config(tmp_path))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000004.pth", "step_0000006.pth"]  # keep_last 2
    assert result.checkpoint == tmp_path / "checkpoints" / "step_0000006.pth"
    state = ckpt.load_checkpoint(result.checkpoint)
    assert state["step"] == 6
    assert state["validation"]["first"]["step"] == 0 and state["validation"]["last"]["step"] == 6
    assert state["config"]["model"]["name"] == "crestereo_tiny"  # the resolved config travels with the weights
    assert set(result.metrics) >= {"val/synthetic-val/mae", "val/synthetic-val/fl-all"}
    assert (tmp_path / "config.yaml").is_file()


def test_same_config_and_seed_give_identical_weights_and_a_new_seed_does_not(tmp_path):
    a = train(compose_train_config(tmp_path / "a")).checkpoint
    b = train(compose_train_config(tmp_path / "b")).checkpoint
    c = train(compose_train_config(tmp_path / "c", "seed=1")).checkpoint
    assert_same_weights(weights_of(a), weights_of(b))
    assert any(not torch.equal(weights_of(a)[k], weights_of(c)[k]) for k in weights_of(a))


def test_gradient_clipping_bounds_the_global_norm_of_the_update(tmp_path):
    # SGD without momentum or decay at lr 1 moves the weights by exactly the clipped gradient.
    cfg = compose_train_config(
        tmp_path,
        "optim=sgd",
        "optim.momentum=0",
        "optim.clip_grad_norm=0.5",
        "schedule.lr=1.0",
        "schedule.min_lr=1.0",
        "schedule.warmup_steps=0",
    )
    model = build_model(cfg.model)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=6)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_step(model, first_batch(cfg), optimizer, scheduler, scaler, cfg, torch.device("cpu"), None)
    update = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert stats.grad_norm > 0.5  # the raw gradient was larger than the clip ...
    assert update.item() == pytest.approx(0.5, rel=1e-4)  # ... and the step is exactly the clip norm


@pytest.mark.parametrize(
    ("precision", "dtype", "scaled"), [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)]
)
def test_mixed_precision_steps_train_and_only_fp16_uses_a_grad_scaler(tmp_path, precision, dtype, scaled):
    cfg = compose_train_config(tmp_path, f"train.precision={precision}")
    model = build_model(cfg.model)
    before = model.state_dict()["update_block.flow_head.conv2.weight"].clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=6)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    batch = first_batch(cfg)
    skipped = 0  # fp16: the GradScaler halves its initial 2**16 scale until the gradients fit (~5 steps here)
    while (stats := train_step(model, batch, optimizer, scheduler, scaler, cfg, torch.device("cpu"), dtype)).skipped:
        skipped += 1
        assert skipped < cfg.train.max_nonfinite_steps
    assert math.isfinite(stats.loss)
    assert (skipped > 0) is scaled  # only the fp16 path overflows, and recovers
    assert not torch.equal(before, model.state_dict()["update_block.flow_head.conv2.weight"])


@register_model()
def nan_after_first_step_crestereo(**architecture):
    """crestereo_tiny whose predictions turn to NaN from its second training forward on (for the NaN guard)."""
    model = get_model_builder("crestereo_tiny")(**architecture)
    forward, calls = model.forward, [0]

    def poisoned(left, right, flow_init=None, num_iters=4):
        calls[0] += model.training
        predictions = forward(left, right, flow_init=flow_init, num_iters=num_iters)
        return [p * float("nan") for p in predictions] if model.training and calls[0] > 1 else predictions

    model.forward = poisoned
    return model


def test_non_finite_steps_are_skipped_then_stop_the_run_with_a_clear_message(tmp_path):
    cfg = compose_train_config(
        tmp_path, "model.name=nan_after_first_step_crestereo", "train.max_nonfinite_steps=3", "mix.dataset_steps=[10]"
    )
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps \(last: step 3\).*train.max_nonfinite_steps"):
        train(cfg)
    # step 1 trained normally; steps 2-4 were skipped: the checkpoint at step 2 holds step 1's weights.
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_0000002.pth")
    assert state["nonfinite_streak"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batchsize=2", "batchsize"),  # misspelt key
        ("train.precision=fp64", "fp64"),  # not one of fp32 | bf16 | fp16
        ("schedule.lr=fast", "fast"),  # wrong type
        ("model=crestereo_huge", "crestereo_huge"),  # no such option
    ],
)
def test_bad_config_values_stop_at_composition_naming_the_key(tmp_path, override, message):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigAttributeError)) as error:
        compose_train_config(tmp_path, override)
    assert message in str(error.value) + str(error.value.__cause__)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.clip_grad_norm=-1", "optim.clip_grad_norm"),
        ("schedule.min_lr=1.0", "schedule.min_lr"),
        ("mix.dataset_steps=[1,2]", "mix.dataset_steps"),
        ("train.batch_size=0", "train.batch_size"),
    ],
)
def test_inconsistent_values_stop_the_run_before_training_naming_the_key(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        train(compose_train_config(tmp_path, override))
    assert not (tmp_path / "checkpoints").exists()


def test_init_from_loads_weights_but_starts_a_fresh_run(tmp_path):
    first = train(compose_train_config(tmp_path / "stage1")).checkpoint
    cfg = compose_train_config(tmp_path / "stage2", f"init_from={first}", "mix.dataset_steps=[2]", "train.val_every=2")
    second = train(cfg)
    state = ckpt.load_checkpoint(second.checkpoint)
    assert state["step"] == 2  # counted from zero: a new run, fresh optimizer and schedule
    assert state["validation"]["first"]["val/synthetic-val/mae"] == pytest.approx(
        ckpt.load_checkpoint(first)["validation"]["last"]["val/synthetic-val/mae"]
    )  # step-0 validation of stage 2 = final validation of stage 1: the weights were loaded


def test_resume_refuses_a_checkpoint_of_a_different_config(tmp_path):
    train(compose_train_config(tmp_path, "mix.dataset_steps=[4]"))
    with pytest.raises(ValueError, match=r"config differs in .*schedule\.lr"):
        train(compose_train_config(tmp_path, "mix.dataset_steps=[4]", "schedule.lr=1e-3"))


def test_resume_refuses_a_checkpoint_written_by_another_number_of_processes(tmp_path):
    first = train(compose_train_config(tmp_path, "mix.dataset_steps=[4]", "checkpoint.every=2")).checkpoint
    state = ckpt.load_checkpoint(first)
    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 2), {**state, "step": 2, "world_size": 2})
    first.unlink()  # the step-2 checkpoint of a "2-process run" is now the latest
    with pytest.raises(ValueError, match="2 processes and this one has 1"):
        train(compose_train_config(tmp_path, "mix.dataset_steps=[4]", "checkpoint.every=2"))


def test_mlflow_records_params_metric_history_and_artifacts(tmp_path, in_tmp_dir):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_train_config(
        tmp_path / "run",
        "tracking=mlflow",
        f"tracking.uri={uri}",
        "tracking.experiment=test",
        "eval.save_images=1",
        "train.log_every=2",
    )
    result = train(cfg)

    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "crestereo_tiny"
    assert run.data.params["schedule.lr"] == str(cfg.schedule.lr)
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(result.run_id, "val/synthetic-val/mae")] == [0, 3, 6]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "checkpoints", "validation"} <= artifacts
    assert [a.path for a in client.list_artifacts(result.run_id, "checkpoints")] == ["checkpoints/step_0000006.pth"]
    pictures = client.list_artifacts(result.run_id, "validation/step_0000006/synthetic-val")
    assert pictures and pictures[0].path.endswith(".png")


# ---- runs in their own processes: torchrun DDP, hard kill and SIGTERM ------------------------------------------------


def run_cli(
    cwd: Path, run_dir: Path, *overrides: str, wait: bool = True
) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, f"hydra.run.dir={run_dir}", *overrides]
    if wait:
        return subprocess.run(command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a signal can reach it and its DataLoader workers
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"run ended before {path.name} appeared:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


RESUME_RUN = (
    "mix.dataset_steps=[30]",
    "checkpoint.every=5",
    "checkpoint.keep_last=10",
    "train.val_every=15",
    "train.log_every=1",
    "tracking=mlflow",
)


def loss_history(uri: str) -> list[tuple[int, float]]:
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))


@pytest.mark.slow
def test_a_run_killed_hard_and_resumed_equals_the_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
    done = run_cli(straight, straight / "run", *RESUME_RUN, f"tracking.uri=sqlite:///{straight}/mlflow.db")
    assert done.returncode == 0, done.stderr

    process = run_cli(killed, killed / "run", *RESUME_RUN, f"tracking.uri=sqlite:///{killed}/mlflow.db", wait=False)
    wait_for(killed / "run" / "checkpoints" / "step_0000010.pth", process)
    process.kill()  # SIGKILL: no handler, no final checkpoint
    process.wait()
    assert not (killed / "run" / "checkpoints" / "step_0000030.pth").exists(), "the run finished before the kill"

    resumed = run_cli(killed, killed / "run", *RESUME_RUN, f"tracking.uri=sqlite:///{killed}/mlflow.db")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stderr + resumed.stdout

    final = "checkpoints/step_0000030.pth"
    assert_same_weights(weights_of(straight / "run" / final), weights_of(killed / "run" / final))
    # One MLflow run, every step once, with the uninterrupted run's values.
    assert loss_history(f"sqlite:///{killed}/mlflow.db") == loss_history(f"sqlite:///{straight}/mlflow.db")
    assert [step for step, _ in loss_history(f"sqlite:///{killed}/mlflow.db")] == list(range(1, 31))


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_checkpoints_and_the_resumed_run_finishes_identically(tmp_path):
    # As SLURM signals a job (preemption, scancel, time limit): every process, DataLoader workers included.
    workers = ("loader.num_workers=1", "loader.persistent_workers=true")
    straight = run_cli(tmp_path, tmp_path / "straight", *RESUME_RUN, *workers, "tracking=none")
    assert straight.returncode == 0, straight.stderr

    process = run_cli(tmp_path, tmp_path / "stopped", *RESUME_RUN, *workers, "tracking=none", wait=False)
    wait_for(tmp_path / "stopped" / "checkpoints" / "step_0000005.pth", process)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Received SIGTERM" in output
    last = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "stopped"))["step"]
    assert 5 <= last < 30  # written where the signal was handled, before the end

    resumed = run_cli(tmp_path, tmp_path / "stopped", *RESUME_RUN, *workers, "tracking=none")
    assert resumed.returncode == 0, resumed.stderr
    final = "checkpoints/step_0000030.pth"
    assert_same_weights(weights_of(tmp_path / "straight" / final), weights_of(tmp_path / "stopped" / final))


@pytest.mark.slow
def test_two_process_ddp_ranks_hold_identical_weights_after_training(tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO_ROOT / "tests" / "ddp_worker.py"),
        str(tmp_path),
        "train.batch_size=1",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}_weights.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(rank0, rank1)
    assert_same_weights(rank0, weights_of(tmp_path / "checkpoints" / "step_0000006.pth"))  # rank 0 wrote it
    assert not torch.equal(
        rank0["update_block.flow_head.conv2.weight"],
        build_model(compose_train_config(tmp_path).model).state_dict()["update_block.flow_head.conv2.weight"],
    )
