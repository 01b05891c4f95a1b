"""The entry points' start and endings: ``--help`` and ``--cfg job`` answer without the heavy libraries, a failed
run ends (its loader workers let go), a user mistake ends in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from stereo_exp.cli import Interrupted, stop_signals_interrupt, uninterrupted
from tests.conftest import (
    TINY_RUN,
    file_checksums,
    hang_up_when,
    run_command,
    start_in_own_group,
    subprocess_env,
    wait_for_checkpoints,
)
from tests.test_evaluate import SYNTHETIC, write_checkpoint

# Libraries that take seconds to import (torchvision ~1.5 s on top of torch ~1.4 s, MLflow ~1 s on a loaded 2-core
# machine): --help and --cfg job need none of them (issue 15 asked for an answer within 2 s).
HEAVY_LIBRARIES = ("torch", "torchvision", "mlflow", "PIL", "skimage", "matplotlib")

# Runs one entry point as `python -m MODULE ARGS` does, and at exit lists the heavy libraries it imported.
_RUN_AND_LIST_IMPORTS = """
import atexit, runpy, sys
atexit.register(lambda: print("imported:", *[name for name in {heavy!r} if name in sys.modules], file=sys.stderr))
sys.argv = [{module!r}, *{args!r}]
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""


# (entry point, arguments, a line its answer holds)
START_UP_COMMANDS = [
    ("stereo_exp", ["--help"], "== Configuration groups =="),
    ("stereo_exp", ["--cfg", "job"], "name: crestereo_tiny"),  # the embedded default's model
    ("stereo_exp.evaluate", ["--help"], "stereo_exp.evaluate: the cascade-evaluation grid"),
    ("stereo_exp.evaluate", ["--cfg", "job"], "name: crestereo_tiny"),
    ("stereo_exp.eda", ["--help"], "stereo_exp.eda: the disparity distribution of training crops"),
    ("stereo_exp.eda", ["--cfg", "job"], "- synthetic"),  # the embedded mix
    ("stereo_exp.predict", ["--help"], "usage: python -m stereo_exp.predict"),
    ("stereo_exp.compare", ["--help"], "usage: python -m stereo_exp.compare"),
]


@pytest.mark.parametrize(
    ("module", "args", "expected"), START_UP_COMMANDS, ids=[f"{m} {' '.join(a)}" for m, a, _ in START_UP_COMMANDS]
)
def test_help_and_cfg_job_answer_without_importing_torch_or_mlflow(module, args, expected, tmp_path):
    # The config schemas live in torch-free modules and the packages load their heavy parts on first use
    # (stereo_exp.lazy_exports); one top-level `import torch` in a schema module or a package __init__ fails this.
    code = _RUN_AND_LIST_IMPORTS.format(heavy=HEAVY_LIBRARIES, module=module, args=args)
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    assert done.stderr.splitlines()[-1] == "imported:"


def test_a_run_that_fails_with_loader_workers_running_ends_with_its_error(tmp_path):
    # The traceback's frames held the run's DataLoader, whose worker processes ignore SIGTERM (they leave it to the
    # training process): Python waited for them at exit, and the failed run never ended.
    command = [
        sys.executable,
        "-m",
        "stereo_exp",
        *TINY_RUN,
        f"hydra.run.dir={tmp_path}/run",
        "loader.num_workers=2",
        "schedule.warmup_steps=0",
        "schedule.lr=1e30",
        "train.max_nonfinite_steps=1",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "NonFiniteLossError: 1 consecutive steps" in done.stderr


WRONG_INPUTS = [
    # (entry point, arguments, the one line that ends it): a schema's check, a preflight check, a missing dataset
    ("stereo_exp", [*TINY_RUN, "schedule.min_lr=1"], "error: schedule.min_lr (1.0) must lie in [0, schedule.lr "),
    ("stereo_exp", [*TINY_RUN, "mix.datasets=[synthetc]"], "error: mix.datasets: Unknown dataset 'synthetc'; "),
    ("stereo_exp", [*TINY_RUN, "eval.datasets=[eth3d-train]"], "error: eval.datasets: Dataset 'eth3d-train' is "),
    ("stereo_exp.eda", ["mix.datasets=[synthetc]"], "error: mix.datasets: Unknown dataset 'synthetc'; "),
    ("stereo_exp.evaluate", ["dataset=synthetc"], "error: Unknown dataset 'synthetc'; the catalog has: "),
    ("stereo_exp", [*TINY_RUN, "loader.num_workers=-2"], "error: loader.num_workers must be >= 0 "),
    # Hydra's own error for `train.max_step=100` says "To append to your config use +train.max_step=100"; the key so
    # added used to be ignored (the run trained its full length). Now neither form gets that far.
    ("stereo_exp", [*TINY_RUN, "+train.max_step=100"], "error: unknown key train.max_step (did you mean train.max_st"),
    ("stereo_exp", [*TINY_RUN, "train.checkpoint_every=5"], "error: unknown key train.checkpoint_every (did you mean "),
    ("stereo_exp.eda", ["+augmentation.crop=[8,8]"], "error: unknown key augmentation.crop (did you mean augmentat"),
    ("stereo_exp.evaluate", ["eval.batchsize=2"], "error: unknown key eval.batchsize (did you mean eval.batch_size?"),
    # Weights of another model, a checkpoint file as the folder to search: these ended in "Evaluation failed
    # (traceback in ...)", leaving the run folder.
    ("stereo_exp.evaluate", ["weights=MEGVII_V1"], "error: weights=MEGVII_V1 are published for crestereo_base, but"),
    ("stereo_exp.evaluate", [f"checkpoints={__file__}"], f"error: checkpoints={__file__} is a file; checkpoints "),
]


@pytest.mark.parametrize(
    ("module", "args", "message"), WRONG_INPUTS, ids=[f"{m} {a[-1].split('=')[0]}" for m, a, _ in WRONG_INPUTS]
)
def test_a_wrong_value_ends_a_single_run_in_one_line_and_leaves_no_folder(tmp_path, module, args, message):
    # With the default hydra.run.dir: Hydra makes outputs/.../<date>/<time>/ and its job log before the config can be
    # checked; a refused command removes it again, and its parents up to the working directory when they are empty.
    # No MLflow store either (mlflow.db of the default tracking.uri).
    command = [sys.executable, "-m", module, *args, f"paths.data={tmp_path / 'data'}"]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(message), done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_a_wrong_value_under_torchrun_is_the_root_cause_in_torchrun_s_failure_summary(tmp_path):
    # torchrun's summary, the terminal's last lines, said "To enable traceback see: https://pytorch.org/...".
    command = [*TORCHRUN_2, "-m", "stereo_exp", *TINY_RUN, "schedule.min_lr=1"]
    done = run_command(command, tmp_path, timeout=120)
    assert done.returncode == 1
    root_cause = done.stderr[done.stderr.index("Root Cause") :]
    assert "traceback : error: schedule.min_lr (1.0) must lie in [0, schedule.lr" in root_cause, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_refused_command_keeps_the_folder_of_the_run_it_names_and_other_runs_of_the_day(tmp_path):
    earlier_run = tmp_path / "outputs" / "2026-01-01" / "00-00-00" / "checkpoints" / "step_0000002.pth"
    earlier_run.parent.mkdir(parents=True)
    earlier_run.write_bytes(b"a checkpoint")
    named = tmp_path / "named"
    (named / "checkpoints").mkdir(parents=True)
    (named / "checkpoints" / "step_0000004.pth").write_bytes(b"another")
    for run_dir in ([], [f"hydra.run.dir={named}"]):
        command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, *run_dir, "schedule.min_lr=1"]
        done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stderr.startswith("error: schedule.min_lr"), done.stderr
    assert earlier_run.read_bytes() == b"a checkpoint"
    assert (named / "checkpoints" / "step_0000004.pth").read_bytes() == b"another"
    assert sorted(path.name for path in (tmp_path / "outputs").iterdir()) == ["2026-01-01"]


def test_a_refused_command_in_a_run_folder_changes_no_byte_of_it_and_a_resume_keeps_its_hydra_records(tmp_path):
    # Hydra writes .hydra/ before the config can be checked: a refused command in a run's folder used to replace that
    # run's records with its own (README: "a command with another config there is refused, changing nothing").
    run = tmp_path / "run"
    command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, f"hydra.run.dir={run}"]

    def launch(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *overrides], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=180
        )

    assert launch().returncode == 0
    started_by = (run / ".hydra" / "overrides.yaml").read_text()
    assert "- train.log_every=1\n" in started_by  # TINY_RUN's overrides, as Hydra writes them
    assert "seed: 0" in (run / ".hydra" / "config.yaml").read_text()
    before = file_checksums(run, with_logs=True)

    refused = launch("seed=7")
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: Cannot resume {run}"), refused.stderr
    assert file_checksums(run, with_logs=True) == before  # not a byte changed, the job log included

    resumed = launch("train.log_every=3")  # how the run is observed: accepted (the run is complete: nothing to do)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / ".hydra" / "overrides.yaml").read_text() == started_by  # the records of the command that started it

    # Another command in the run's folder: evaluate and eda replaced its .hydra/ records with their own, and a
    # training in an evaluation's folder kept the evaluation's as its own. Refused, changing no byte; the advice works.
    before = file_checksums(run, with_logs=True)
    grid = ["eval.size=[32,48]", "eval.n_cascades=[1]", "eval.n_iterations=[1]", "dataset=synthetic-val", *SYNTHETIC]
    evaluate = [sys.executable, "-m", "stereo_exp.evaluate", "model=raft_stereo_tiny", *grid, "tracking=none"]
    eda = [sys.executable, "-m", "stereo_exp.eda", "eda.num_crops=1", "loader.num_workers=0", "tracking=none"]
    for other, name in ((evaluate, "evaluate"), (eda, "eda")):
        refused = launch_in(tmp_path, [*other, f"hydra.run.dir={run}"])
        message = "error: hydra.run.dir=run holds a run of python -m stereo_exp (run/.hydra/hydra.yaml); "  # cwd's
        assert refused.returncode == 1 and refused.stderr.startswith(message), refused.stderr
        assert refused.stderr.rstrip().endswith(f"e.g. hydra.run.dir=run/{name}."), refused.stderr
    assert file_checksums(run, with_logs=True) == before
    evaluated = launch_in(tmp_path, [*evaluate, f"hydra.run.dir={run / 'evaluate'}"])  # the advice
    assert evaluated.returncode == 0 and (run / "evaluate" / "eval.json").is_file(), evaluated.stderr[-2000:]
    before = file_checksums(run, with_logs=True)
    refused = launch_in(tmp_path, [*command[:-1], f"hydra.run.dir={run / 'evaluate'}"])
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: hydra.run.dir=run/evaluate holds a run of python -m stereo_exp.evaluate")
    assert file_checksums(run, with_logs=True) == before


def launch_in(folder: Path, command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra/launcher=local", "schedule.min_lr=1,0"], "job #0 (schedule.min_lr=1): schedule.min_lr (1.0) must lie"),
        # A misspelt swept key (Hydra's own error left the sweep folder), a key added to the top level (each job
        # failed on it: the check composed the jobs' configs without the root's schema).
        (["train.max_stepz=1,2"], "unknown key train.max_stepz (did you mean train.max_steps?)"),
        (["seed=1,2", "+foo=1"], "job #0 (seed=1): unknown key foo. "),
    ],
    ids=["value", "swept key", "added key"],
)
def test_a_sweep_with_a_wrong_value_ends_in_one_line_before_any_job_and_leaves_no_folder(tmp_path, overrides, message):
    # Hydra's sweeper writes multirun/<date>/<time>/multirun.yaml before the launcher checks every job's config.
    done = run_command([sys.executable, "-m", "stereo_exp", "-m", *overrides], tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {message}"), done.stderr
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no MLflow store


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "exit_code"),
    [([sys.executable], 130), (TORCHRUN_2, 1)],  # torchrun leaves with its own SignalException on Ctrl-C
    ids=["python", "torchrun"],
)
def test_ctrl_c_in_a_run_of_the_default_time_named_folder_says_how_to_resume_it_and_the_advice_resumes_it(
    tmp_path, launcher, exit_code
):
    # With the default hydra.run.dir (outputs/<date>/<time>), "run the same command again" would start a new run in a
    # new folder: the message names the interrupted run's folder, and following it verbatim continues that run.
    # Under torchrun every rank checkpoints and stops; the advice is given once, not once per rank.
    command = [*launcher, "-m", "stereo_exp", *TINY_RUN, "mix.dataset_steps=[40]", "train.val_every=40"]
    process = start_in_own_group(command, tmp_path)
    wait_for_checkpoints(tmp_path, "outputs/*/*/checkpoints/*.pth")
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    output = process.communicate(timeout=120)[0]
    assert process.returncode == exit_code, output[-2000:]
    (folder,) = tmp_path.glob("outputs/*/*")
    advice = re.findall(
        r"checkpoint written at step \d+\. Run the same command with (hydra\.run\.dir=\S+) to resume", output
    )
    assert advice == [f"hydra.run.dir={folder.relative_to(tmp_path)}"], output[-2000:]

    resumed = run_command([*command, *advice], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list(tmp_path.glob("outputs/*/*")) == [folder]  # no new run folder: the same run went on
    assert (folder / "checkpoints" / "step_0000040.pth").is_file()


def _torchrun_worker(torchrun_pid: int, local_rank: int) -> int:
    """The pid of the worker of local rank ``local_rank`` that torchrun (``torchrun_pid``) started (from /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        if parent == torchrun_pid and f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"torchrun (pid {torchrun_pid}) has no worker of local rank {local_rank}")


@pytest.mark.slow
def test_torchrun_ranks_started_seconds_apart_share_one_default_folder_and_its_restart_resumes_there(tmp_path):
    # Each rank read the time for outputs/<date>/<time> itself: a rank started in the next second left a folder of
    # its own (now and then under load), and the ranks torchrun restarts after a failure (--max-restarts) named a
    # new one, where they would start over; first, though, half the restarts failed: their process group read the
    # addresses of the ranks they replaced ("Gloo connectFullMesh failed"). Rank 1 starts 1.5 s late here, and is
    # killed after the first checkpoint.
    delay_rank_1 = 'if [ "$LOCAL_RANK$TORCHELASTIC_RESTART_COUNT" = 10 ]; then sleep 1.5; fi; exec "$0" "$@"'
    torchrun = [*TORCHRUN_2, "--max-restarts", "1", "--no-python", "sh", "-c", delay_rank_1, sys.executable, "-m"]
    process = start_in_own_group(
        [*torchrun, "stereo_exp", *TINY_RUN, "mix.dataset_steps=[40]", "train.val_every=40"], tmp_path
    )
    wait_for_checkpoints(tmp_path, "outputs/*/*/checkpoints/*.pth")
    os.kill(_torchrun_worker(process.pid, local_rank=1), signal.SIGKILL)  # a crashed rank: torchrun restarts both
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 0, output[-3000:]
    (folder,) = tmp_path.glob("outputs/*/*")
    log = (folder / "__main__.log").read_text()
    assert "Resuming from" in log, log[-3000:]
    assert (folder / "checkpoints" / "step_0000040.pth").is_file()


def test_a_second_command_in_the_folder_of_a_running_run_is_refused_naming_its_pid_and_the_run_goes_on(tmp_path):
    # The same command typed in two terminals (or a sweep resumed while its jobs still run) used to train twice in one
    # folder: "Restarting the run ... from step 0", both writing checkpoints and logging into one MLflow run.
    run = tmp_path / "run"
    command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, "mix.dataset_steps=[20]", f"hydra.run.dir={run}"]
    first = start_in_own_group(command, tmp_path)
    wait_for_checkpoints(run)
    os.kill(first.pid, signal.SIGSTOP)  # holds its lock, writes nothing while the second command runs
    try:
        log_before = (run / "__main__.log").read_bytes()
        second = run_command(command, tmp_path)
        assert second.returncode == 1
        assert second.stderr.startswith(f"error: Cannot use {run}: another process (pid {first.pid}) is running in it")
        assert f"kill -INT {first.pid}" in second.stderr
        assert (run / "__main__.log").read_bytes() == log_before  # not a line from the refused command
    finally:
        os.kill(first.pid, signal.SIGCONT)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output[-2000:]
    assert (run / "checkpoints" / "step_0000020.pth").is_file()


def test_a_run_killed_alone_is_resumed_at_once_while_its_loader_workers_are_still_alive(tmp_path):
    # SIGKILL (the OOM killer) ends the training process alone; its DataLoader workers notice within ~5 s. They were
    # forked holding the run folder's lock: they must not keep the resume out.
    run = tmp_path / "run"
    command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, "loader.num_workers=2", f"hydra.run.dir={run}"]
    first = start_in_own_group([*command, "mix.dataset_steps=[400]"], tmp_path)
    wait_for_checkpoints(run)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    workers = subprocess.run(["pgrep", "-g", str(first.pid)], capture_output=True, text=True).stdout.split()
    resumed = run_command([*command, "mix.dataset_steps=[400]", "train.max_steps=4"], tmp_path)
    assert workers, "the workers ended before the resume started: the test proves nothing"
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout


def test_a_run_whose_terminal_hangs_up_writes_a_checkpoint_and_the_same_command_resumes_it(tmp_path):
    # An SSH connection that drops hangs up the terminal: SIGHUP used to end the run at once (no checkpoint since the
    # last periodic one, the MLflow run left RUNNING), and writing to the gone terminal would fail (EIO) anyway.
    run = tmp_path / "run"
    command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, "mix.dataset_steps=[400]", f"hydra.run.dir={run}"]
    exit_code = hang_up_when(command, tmp_path, ready=lambda: bool(list(run.glob("checkpoints/*.pth"))))
    log = (run / "__main__.log").read_text()
    assert exit_code == 128 + signal.SIGHUP, log[-2000:]
    stop = re.search(r"Received SIGHUP: checkpoint written at step (\d+); exiting", log)
    assert stop and (run / "checkpoints" / f"step_{int(stop.group(1)):07d}.pth").is_file(), log[-2000:]

    resumed = run_command([*command, f"train.max_steps={int(stop.group(1)) + 2}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed from step {stop.group(1)}" in resumed.stdout


# Runs `python -m stereo_exp ARGS` with the signals numbered in $STOPS sent to itself after the last step, while the
# run ends, $WHERE: "upload", in MLflow's copy of the final checkpoint (minutes with a large model and a remote
# server); "summary", in the summary's read of the run's link from the store. Sent in a layer that wraps any
# Exception, as MLflow's store and artifact clients do. Deterministic stand-ins for a `kill`, an scancel or Ctrl-C.
_STOPPED_WHILE_THE_RUN_ENDS = """
import os, runpy, shutil, sys
from stereo_exp.tracking.mlflow_tracker import MlflowTracker

def stopped_inside(call, now):
    def wrapper(*args, **kwargs):
        try:
            if now(*args):
                for signum in os.environ["STOPS"].split(","):
                    os.kill(os.getpid(), int(signum))
            return call(*args, **kwargs)
        except Exception as error:
            raise RuntimeError(f"MLflow call failed: {error}") from error
    return wrapper

if os.environ["WHERE"] == "upload":
    is_checkpoint = lambda source, *_: getattr(source, "name", "").endswith(".pth")
    shutil.copyfileobj = stopped_inside(shutil.copyfileobj, is_checkpoint)
else:
    MlflowTracker.run_url = stopped_inside(MlflowTracker.run_url, lambda *_: True)
sys.argv = ["stereo_exp", *sys.argv[1:]]
runpy.run_module("stereo_exp", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    ("stops", "where"),
    [([signal.SIGTERM], "upload"), ([signal.SIGINT, signal.SIGINT], "upload"), ([signal.SIGINT] * 2, "summary")],
    ids=["sigterm-in-the-upload", "ctrl-c-twice-in-the-upload", "ctrl-c-twice-in-the-summary"],
)
def test_a_stop_after_the_last_step_waits_for_the_run_s_end_and_a_second_ctrl_c_leaves_the_upload_to_the_advice(
    tmp_path, stops, where
):
    # The stop handlers were restored after the last step: SIGTERM while the run ended killed the process, its MLflow
    # run RUNNING for good; Ctrl-C there said "Interrupted without writing a checkpoint" (the final one was written).
    # A second Ctrl-C stops only the upload: cut elsewhere, an MLflow read left the SQLite store locked, and the end
    # of the run failed 20 s later (the run RUNNING).
    args = [arg for arg in TINY_RUN if arg != "tracking=none"]  # the default store, ./mlflow.db
    env = {**subprocess_env(), "STOPS": ",".join(str(int(signum)) for signum in stops), "WHERE": where}
    stopped = subprocess.run(
        [sys.executable, "-c", _STOPPED_WHILE_THE_RUN_ENDS, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = stopped.stdout + stopped.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    assert "Traceback" not in output, output[-3000:]
    if len(stops) == 1 or where == "summary":
        assert stopped.returncode == 0, output[-3000:]
        name = signal.Signals(stops[0]).name
        assert f"Received {name} after the last step: the run ends first" in output, output[-3000:]
        assert "Validation summary" in stopped.stdout and run.info.status == "FINISHED"
        return

    assert stopped.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "the run ends first (Ctrl-C again to stop the checkpoint's upload)." in output, output[-3000:]
    advice = re.findall(
        r"checkpoint written at step 6\. Run the same command with (hydra\.run\.dir=\S+) to resume", output
    )
    assert advice and "Validation summary" not in stopped.stdout, output[-3000:]
    assert run.info.status == "KILLED"
    resumed = run_command([sys.executable, "-m", "stereo_exp", *args, *advice], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Nothing to do: the checkpoint is at step 6 of 6." in resumed.stdout + resumed.stderr
    assert "Validation summary" in resumed.stdout
    assert client.get_run(run.info.run_id).info.status == "FINISHED"  # the same MLflow run, ended by the resume


# Runs `python -m MODULE ARGS` with a Ctrl-C to itself from an exit handler: one that arrives once the work is done and
# recorded, while the interpreter exits (deterministic stand-in for the second or so of the libraries' exit handlers).
_CTRL_C_WHILE_EXITING = """
import atexit, os, runpy, signal, sys, time
atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT) or time.sleep(0.1))  # the last exit handler to run
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["stereo_exp", "stereo_exp.evaluate", "stereo_exp.eda", "stereo_exp.predict"])
def test_a_ctrl_c_once_the_work_is_done_and_recorded_leaves_no_traceback(tmp_path, module):
    # One Ctrl-C of thirty at the end of `python -m stereo_exp.eda` printed "Exception ignored in atexit callback"
    # and a KeyboardInterrupt traceback from torch's exit handler, after the finished run's last line.
    if module == "stereo_exp":
        args = [arg for arg in TINY_RUN if arg != "tracking=none"]
    elif module == "stereo_exp.evaluate":
        weights = write_checkpoint(tmp_path / "m.pth")
        grid = ["eval.size=[32,48]", "eval.n_cascades=[1]", "eval.n_iterations=[2]"]
        args = ["model=raft_stereo_tiny", f"weights={weights}", "dataset=synthetic-val", *SYNTHETIC, *grid]
    elif module == "stereo_exp.eda":
        args = ["eda.num_crops=3", "loader.num_workers=0"]
    else:
        weights = write_checkpoint(tmp_path / "m.pth")
        image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
        for name in ("left.png", "right.png"):
            Image.fromarray(image).save(tmp_path / name)
        args = ["left.png", "right.png", "-o", "d.pfm", "--weights", str(weights), "--iters", "1"]
    command = [sys.executable, "-c", _CTRL_C_WHILE_EXITING, module, *args]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    if module == "stereo_exp.predict":  # no MLflow run
        assert (tmp_path / "d.pfm").is_file()
        return
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert run.info.status == "FINISHED"


# A stop signal that arrives while tqdm builds a progress bar, after it set `disable` and before `pos`: the half-built
# bar's finalizer then fails. `postfix` is read in that window, so reading it stands in for the signal's arrival.
_STOPPED_WHILE_A_BAR_IS_BUILT = """
import signal
from tqdm import tqdm
from stereo_exp.cli import Interrupted, exit_interrupted

class SignalWhenRead:
    def __bool__(self):
        raise Interrupted(signal.SIGTERM)

def evaluate():
    for _ in tqdm(range(3), postfix=SignalWhenRead()):
        pass

try:
    evaluate()
except KeyboardInterrupt as stop:
    exit_interrupted(stop, "Evaluation")
"""


def test_a_stop_while_a_progress_bar_is_being_built_still_ends_in_one_line():
    # CI saw an evaluation stopped by SIGTERM end with tqdm's "Exception ignored in ... no attribute 'pos'" traceback
    # after its one line: the signal had come inside tqdm's constructor.
    ended = subprocess.run(
        [sys.executable, "-c", _STOPPED_WHILE_A_BAR_IS_BUILT], env=subprocess_env(), capture_output=True, text=True
    )
    assert ended.returncode == 128 + signal.SIGTERM, ended.stderr
    assert ended.stderr.strip() == "Evaluation interrupted (SIGTERM).", ended.stderr


def test_a_stop_inside_an_uninterrupted_region_ends_the_command_when_the_region_ends():
    # CI saw an evaluation's MLflow run left RUNNING: SIGTERM had come between the run's creation and the tracker
    # learning its id, so nothing could end it KILLED; another stop cut a SQLite commit in two (a traceback).
    reached = []
    with pytest.raises(Interrupted) as stopped, stop_signals_interrupt():
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, at the first bytecode after the signal
            reached.append("the region's end")
        reached.append("after the region")
    assert reached == ["the region's end"] and stopped.value.signum == signal.SIGTERM
    # A second stop waits too: raised at once, it cut the creation of the SQLite store (left without its tables) or
    # of the MLflow run, and a Ctrl-C that came in a garbage-collection callback printed "Exception ignored in ...".
    with pytest.raises(Interrupted) as stopped, stop_signals_interrupt(), uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        reached.append("after the second stop")
    assert reached == ["the region's end", "after the second stop"] and stopped.value.signum == signal.SIGINT
