"""The training engine end to end on the tiny CREStereo: runs, clipping, precision, NaN guard, DDP, resume."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from stereo_exp import evaluation
from stereo_exp.data.loader import Shard, build_train_loader
from stereo_exp.distributed import DistEnv
from stereo_exp.engine import checkpoint as ckpt
from stereo_exp.engine import trainer
from stereo_exp.engine.resume import RunDirectoryError
from stereo_exp.engine.schedule import build_scheduler
from stereo_exp.engine.state import AveragedWeights
from stereo_exp.engine.trainer import NonFiniteLossError, StepOptions, train, train_step
from stereo_exp.evaluation.model_source import load_checkpoint_model
from stereo_exp.models import build_model, register_model
from stereo_exp.models.weights import checkpoint_weights
from tests.conftest import (
    REPO_ROOT,
    TINY_RUN,
    assert_same_weights,
    compose_train_config,
    file_checksums,
    start_in_own_group,
    subprocess_env,
)


def first_batch(cfg: DictConfig) -> dict[str, torch.Tensor]:
    config = OmegaConf.to_object(cfg)
    loader = build_train_loader(
        config.mix,
        config.augmentation,
        config.loader,
        data_root=config.paths.data,
        dataset_options=config.datasets,
        batch_size=config.train.batch_size,
        seed=config.seed,
        shard=Shard(stop_step=1),
    )
    return next(iter(loader))


def step_options(cfg: DictConfig) -> StepOptions:
    """What the trainer hands ``train_step`` for ``cfg``, on the CPU."""
    return StepOptions.from_config(OmegaConf.to_object(cfg), torch.device("cpu"))


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


def test_averaged_weights_are_the_exponential_moving_average_of_the_steps():
    network = torch.nn.BatchNorm1d(2)  # a float parameter, float buffers and an integer buffer
    start = network.weight.detach().clone()
    averaged = AveragedWeights(network, decay=0.9)
    with torch.no_grad():
        for value in (1.0, 3.0):  # two optimizer steps that set the weight
            network.weight.fill_(value)
            network.num_batches_tracked += 5
            averaged.update()
    # By hand: 0.9 * (0.9 * start + 0.1 * 1) + 0.1 * 3
    expected = 0.81 * start + 0.09 * 1.0 + 0.1 * 3.0
    assert torch.allclose(averaged.network.weight, expected, atol=1e-6)
    assert averaged.network.num_batches_tracked == 0  # integer buffers are not averaged
    assert network.weight.eq(3.0).all()  # the trained network is left as it is


def test_a_run_with_averaged_weights_validates_and_evaluates_those_weights(tmp_path):
    result = train(compose_train_config(tmp_path / "avg", "schedule.average_decay=0.5"))
    state = ckpt.load_checkpoint(result.checkpoint)
    trained, averaged = state["model"], state["model_averaged"]
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)
    # evaluate / predict / init_from read the averaged weights of the checkpoint
    loaded = load_checkpoint_model(result.checkpoint)
    assert_same_weights(loaded.model.state_dict(), averaged)
    assert "averaged weights" in loaded.source
    # and they reproduce the run's last validation
    config = OmegaConf.to_object(compose_train_config(tmp_path / "avg", "schedule.average_decay=0.5"))
    again = evaluation.run_validation(
        loaded.model,
        config.eval,
        data_root=config.paths.data,
        dataset_options=config.datasets,
        num_iters=config.model.eval_iters,
        dist=DistEnv(),
        device=torch.device("cpu"),
        amp_dtype=None,
    )
    assert again.metrics["val/synthetic-val/mae"] == result.metrics["val/synthetic-val/mae"]
    # without averaging, a checkpoint holds the trained weights only
    plain = train(compose_train_config(tmp_path / "plain", "schedule.average_decay=null"))
    assert "model_averaged" not in ckpt.load_checkpoint(plain.checkpoint)


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
    stats = train_step(model, first_batch(cfg), optimizer, scheduler, scaler, step_options(cfg))
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
    assert step_options(cfg).amp_dtype == dtype  # train.precision sets the autocast dtype
    while (stats := train_step(model, batch, optimizer, scheduler, scaler, step_options(cfg))).skipped:
        skipped += 1
        assert skipped < cfg.train.max_nonfinite_steps
    assert math.isfinite(stats.loss)
    assert (skipped > 0) is scaled  # only the fp16 path overflows, and recovers
    assert not torch.equal(before, model.state_dict()["update_block.flow_head.conv2.weight"])


@register_model()
def nan_after_first_step_crestereo(config):
    """The configured CREStereo whose predictions turn to NaN from its second training forward on (NaN guard)."""
    model = config.build_network()
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
        ("seed=4294967296", "seed must lie in"),  # random_streams.py: the streams would overlap
        ("schedule.average_decay=1.0", "schedule.average_decay"),
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


def test_another_config_in_a_run_directory_is_refused_changing_nothing_and_the_advice_is_safe_to_follow(tmp_path):
    run = tmp_path / "run"
    train(compose_train_config(run, "mix.dataset_steps=[4]"))
    before = file_checksums(run)

    with pytest.raises(RunDirectoryError) as changed:
        train(compose_train_config(run, "mix.dataset_steps=[4]", "schedule.lr=1e-3"))
    with pytest.raises(RunDirectoryError, match=r"resume=null\): it already holds a run") as fresh:
        train(compose_train_config(run, "mix.dataset_steps=[4]", "schedule.lr=1e-3", "resume=null"))
    assert file_checksums(run) == before  # nothing written, nothing pruned
    message = str(changed.value)
    assert "schedule.lr: 0.0004 (that run) -> 0.001 (this command)" in message
    assert "continue that run: repeat the command with schedule.lr=0.0004" in message
    assert "resume=null" not in message  # the advice that used to overwrite the run
    assert "use its values: schedule.lr=0.0004" in str(fresh.value)

    # Every suggested command, followed verbatim, leaves the first run as it was.
    new_dir = re.search(r"new run directory: paths\.output=(\S+)", message).group(1)
    init_from = re.search(r"init_from=(\S+)", message).group(1)
    assert not Path(new_dir).exists()
    train(compose_train_config(Path(new_dir), "mix.dataset_steps=[4]", "schedule.lr=1e-3", f"init_from={init_from}"))
    train(compose_train_config(run, "mix.dataset_steps=[4]", "schedule.lr=0.0004"))  # continues it: nothing to do
    assert file_checksums(run) == before


def test_a_changed_thread_count_is_refused_unless_allowed_and_the_mlflow_run_is_then_tagged(tmp_path, in_tmp_dir):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ("mix.dataset_steps=[4]", "tracking=mlflow", f"tracking.uri={uri}")
    train(compose_train_config(tmp_path / "run", *args, "train.max_steps=2"))
    with pytest.raises(RunDirectoryError, match=r"train\.num_threads: 1 -> 2.*\n.*train\.num_threads=1"):
        train(compose_train_config(tmp_path / "run", *args, "train.num_threads=2"))
    allowed = ("train.num_threads=2", "train.allow_inexact_resume=true")
    result = train(compose_train_config(tmp_path / "run", *args, *allowed))
    tags = MlflowClient(uri).get_run(result.run_id).data.tags
    assert tags["stereo_exp.inexact_resume.step_2"] == "train.num_threads: 1 -> 2"


def test_resume_refuses_a_checkpoint_written_by_another_number_of_processes(tmp_path):
    first = train(compose_train_config(tmp_path, "mix.dataset_steps=[4]", "checkpoint.every=2")).checkpoint
    state = ckpt.load_checkpoint(first)
    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 2), {**state, "step": 2, "world_size": 2})
    first.unlink()  # the step-2 checkpoint of a "2-process run" is now the latest
    with pytest.raises(RunDirectoryError, match=r"processes: 2 -> 1 .*\n  - resume as the run was computed: start 2"):
        train(compose_train_config(tmp_path, "mix.dataset_steps=[4]", "checkpoint.every=2"))


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_and_the_run_ends_as_an_uninterrupted_one(
    tmp_path, caplog
):
    straight = train(compose_train_config(tmp_path / "straight")).checkpoint
    run = tmp_path / "damaged"
    train(compose_train_config(run, "train.max_steps=4"))  # checkpoints at steps 2 and 4
    newest = ckpt.checkpoint_path(run, 4)
    newest.write_bytes(newest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        result = train(compose_train_config(run))
    assert "Skipping damaged checkpoint" in caplog.text and "step_0000004.pth" in caplog.text
    assert "Resuming from" in caplog.text and "step_0000002.pth" in caplog.text
    assert_same_weights(weights_of(straight), weights_of(result.checkpoint))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("mix=cre_eth_mbl", "mix.dataset_steps=[2,2,2]", "paths.data=NOWHERE"), "mix.datasets: 3 of 3 datasets"),
        (("mix.datasets=[synthetc]",), "mix.datasets: Unknown dataset 'synthetc'"),
        (("augmentation.crop_size=[40,64]",), r"crop_size=\[40, 64\]: .* multiples of 16 .*crop_size=\[32,64\]"),
        (("schedule.warmup_steps=6",), r"schedule\.warmup_steps=6 is not shorter than the run \(6 steps"),
        (("schedule.lr=0", "schedule.min_lr=0"), r"schedule\.lr must be > 0"),
        (("schedule.lr=-1e-4",), r"schedule\.lr must be > 0"),
        (("init_from=NOWHERE/stage1.pth",), r"init_from=.*stage1\.pth: no such file"),
        (("model.weights=NOT_PUBLISHED",), r"model\.weights=NOT_PUBLISHED: No published weights"),
        (("eval.datasets=[middlebury2014-train]", "paths.data=NOWHERE"), "eval.datasets: Dataset 'middlebury2014"),
        (("eval.datasets=[kitti2015-test]",), "eval.datasets: Dataset 'kitti2015-test' has no ground-truth"),
    ],
)
def test_bad_input_is_refused_naming_the_key_before_any_run_file_or_mlflow_record(tmp_path, overrides, message):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [o.replace("NOWHERE", str(tmp_path / "nowhere")) for o in overrides]
    cfg = compose_train_config(tmp_path / "run", "tracking=mlflow", f"tracking.uri={uri}", *overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()  # no config.yaml, no checkpoint, no spool
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run: not even the store


def test_steps_between_log_validation_and_checkpoint_steps_read_nothing_from_the_device(tmp_path, monkeypatch):
    """On a GPU, reading a tensor on the host waits for every queued kernel. The engine reads values at event
    steps only (here every 4th step); fused optimizers skip non-finite steps on the device."""
    engine_dir = str(Path(ckpt.__file__).parent)
    steps_done, reads = [0], []

    def counting(original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(engine_dir):
                reads.append((steps_done[0], caller.co_name))
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    original_step = trainer.train_step

    def counted_step(*args, **kwargs):
        stats = original_step(*args, **kwargs)
        steps_done[0] += 1
        return stats

    monkeypatch.setattr(trainer, "train_step", counted_step)
    cfg = compose_train_config(
        tmp_path,
        "mix.dataset_steps=[8]",
        "optim=sgd",
        "optim.implementation=fused",
        "train.log_every=4",
        "train.val_every=4",
        "checkpoint.every=4",
    )
    train(cfg)
    assert steps_done[0] == 8
    assert {step for step, _ in reads} <= {0, 4, 8}, sorted(set(reads))
    assert any(step == 4 for step, _ in reads)  # the log step did read (the counter works)


def test_fused_and_plain_optimizers_skip_a_non_finite_step_alike(tmp_path):
    cfg = compose_train_config(tmp_path, "optim=sgd")
    batch = first_batch(cfg)
    poisoned = {**batch, "left": batch["left"] * float("nan")}  # NaN predictions, loss and gradients
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused or None)
        scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=6)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        train_step(model, batch, optimizer, scheduler, scaler, step_options(cfg))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        stats = train_step(model, poisoned, optimizer, scheduler, scaler, step_options(cfg))
        assert bool(stats.skipped)
        assert_same_weights(before, model.state_dict())  # the skipped step changed nothing
        train_step(model, batch, optimizer, scheduler, scaler, step_options(cfg))
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key])  # fused and plain SGD agree to rounding


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
    return start_in_own_group(command, cwd)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"run ended before {path.name} appeared:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


def test_a_run_killed_before_recording_its_mlflow_run_continues_that_run_by_its_key(tmp_path, in_tmp_dir):
    """The state a kill leaves between creating the MLflow run and recording its id in run.json: the restart finds
    the run by the key it was tagged with, and there is still one run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ("mix.dataset_steps=[4]", "tracking=mlflow", f"tracking.uri={uri}", "train.log_every=1")
    first = train(compose_train_config(tmp_path / "run", *args, "train.max_steps=2"))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({**record, "mlflow_run_id": None}))
    for path in ckpt.list_checkpoints(tmp_path / "run"):
        path.unlink()  # killed before its first checkpoint: a restart from step 0
    client = MlflowClient(uri)
    client.update_run(first.run_id, status="RUNNING")

    again = train(compose_train_config(tmp_path / "run", *args))
    assert again.run_id == first.run_id
    (run,) = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]


# ---- runs in their own processes: torchrun DDP, a full disk (kills: tests/test_kill_resume.py) ------------------


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def only_run(uri: str) -> Run:
    """The one MLflow run of experiment stereo_exp in the store at ``uri``."""
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    return run


def mlflow_history(uri: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(only_run(uri).info.run_id, key))


@pytest.mark.slow
def test_two_process_ddp_stopped_by_sigterm_resumes_to_the_weights_and_history_of_an_uninterrupted_run(tmp_path):
    run = (
        "train.batch_size=1",
        "mix.dataset_steps=[12]",
        "checkpoint.every=3",
        "checkpoint.keep_last=10",
        "train.log_every=4",
        "train.val_every=6",
        "tracking=mlflow",
    )
    worker = str(REPO_ROOT / "tests" / "ddp_worker.py")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = subprocess.run(
        torchrun(worker, str(straight), *run, f"tracking.uri=sqlite:///{tmp_path}/straight.db"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(straight / f"rank{r}_weights.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(rank0, rank1)
    # rank 0 wrote the checkpoint; result.model is what validation measured (the averaged weights)
    assert_same_weights(rank0, checkpoint_weights(ckpt.load_checkpoint(straight / "checkpoints" / "step_0000012.pth")))

    # SIGTERM to every process (torchrun and both ranks, as SLURM signals a job) between two log steps: each rank's
    # share of the log window travels in the checkpoint, so the resumed run logs the uninterrupted run's values.
    stop_command = torchrun(worker, str(stopped), *run, f"tracking.uri=sqlite:///{tmp_path}/stopped.db")
    process = start_in_own_group(stop_command, tmp_path)
    wait_for(stopped / "checkpoints" / "step_0000006.pth", process)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert "checkpoint written at step" in output, output[-3000:]
    assert 6 <= ckpt.load_checkpoint(ckpt.latest_checkpoint(stopped))["step"] < 12
    interrupted = only_run(f"sqlite:///{tmp_path}/stopped.db")
    assert interrupted.info.status == "KILLED"  # nothing requeues it (it was left RUNNING, as if still training)
    resumed = subprocess.run(
        stop_command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finished = only_run(f"sqlite:///{tmp_path}/stopped.db")
    assert (finished.info.run_id, finished.info.status) == (interrupted.info.run_id, "FINISHED")
    straight_final, stopped_final = (
        ckpt.load_checkpoint(run / "checkpoints" / "step_0000012.pth") for run in (straight, stopped)
    )
    assert_same_weights(straight_final["model"], stopped_final["model"])
    assert_same_weights(straight_final["model_averaged"], stopped_final["model_averaged"])  # the average resumes too
    for key in ("train/loss", "train/grad_norm", "val/synthetic-val/mae"):
        assert mlflow_history(f"sqlite:///{tmp_path}/stopped.db", key) == mlflow_history(
            f"sqlite:///{tmp_path}/straight.db", key
        ), key


@pytest.mark.slow
def test_under_torchrun_a_refused_resume_is_the_last_thing_printed_and_changes_nothing(tmp_path):
    first = run_cli(tmp_path, tmp_path / "run", "train.batch_size=1")
    assert first.returncode == 0, first.stderr
    before = file_checksums(tmp_path / "run")
    command = torchrun("-m", "stereo_exp", *TINY_RUN, "train.batch_size=1", f"hydra.run.dir={tmp_path / 'run'}")
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last_lines = "\n".join(done.stderr.strip().splitlines()[-8:])
    assert "Cannot resume" in last_lines and "processes: 1 -> 2" in last_lines, done.stderr[-3000:]
    assert file_checksums(tmp_path / "run") == before


@pytest.mark.slow
def test_a_full_disk_fails_naming_the_checkpoint_and_the_space_keeps_the_previous_one_and_logs_the_traceback(
    tmp_path, small_filesystem
):
    disk = small_filesystem("15m")  # a real tmpfs: the first 10 MB checkpoint fits, the second does not
    done = run_cli(tmp_path, disk / "run", "loader.num_workers=2", "checkpoint.keep_last=2")  # default workers
    assert done.returncode == 1, done.stderr[-3000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert re.search(
        r"Could not write checkpoint \S+step_0000004\.pth \(No space left on device: [\d,]+ bytes "
        r"needed, [\d,]+ free",
        last_line,
    ), done.stderr[-3000:]
    assert "The newest checkpoint is still" in last_line and "step_0000002.pth" in last_line
    assert [p.name for p in (disk / "run" / "checkpoints").iterdir()] == ["step_0000002.pth"]  # no .tmp left
    assert ckpt.load_checkpoint(disk / "run" / "checkpoints" / "step_0000002.pth")["step"] == 2
    log_file = (disk / "run" / "__main__.log").read_text()
    assert "Traceback" in log_file and "CheckpointWriteError" in log_file


@pytest.mark.parametrize("has_instructions", [True, False], ids=["bf16-cpu", "cpu-without-bf16"])
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_as_emulated(tmp_path, caplog, monkeypatch, has_instructions):
    # Autocast emulates bf16 on such a CPU: a crestereo_tiny step ran 6x slower than in fp32 on an AVX2 EPYC.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: has_instructions)
    with caplog.at_level(logging.WARNING, logger="stereo_exp"):
        train(compose_train_config(tmp_path / "run", "train.precision=bf16", "train.max_steps=1"))
    warned = [r.getMessage() for r in caplog.records if "no bf16 instructions" in r.getMessage()]
    if has_instructions:
        assert warned == []
    else:
        (message,) = warned
        assert message.startswith("train.precision=bf16: this CPU (torch capability ")
        assert message.endswith("several times slower than train.precision=fp32.")
