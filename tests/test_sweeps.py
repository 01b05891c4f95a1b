"""Sweeps: what a multirun sweeps and how its runs are named, processes that start together on a new SQLite store,
a local sweep with the default tracking in which one job diverges, `-m` without a launcher (the sequential one), Ctrl-C
in a local and in a sequential sweep and their resumption.

Sweeps on the SLURM test cluster are in tests/test_slurm_sweeps.py; the README's own 2x2 SLURM sweep, its MLflow
records and the UI in tests/test_readme.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from stereo_exp.compare import main as compare_main
from stereo_exp.tracking import MlflowTracker, TrackingConfig
from stereo_exp.tracking.sweep import (
    SweepInfo,
    SweepPlan,
    plain_override,
    read_record,
    record_files,
    sweep_id_of,
)
from tests.conftest import (
    CONF_DIR,
    TINY_RUN,
    hang_up_when,
    run_command,
    start_in_own_group,
    subprocess_env,
    wait_for_checkpoints,
)


def multirun_config(task: list[str], sweeper_params: dict[str, str] | None = None):
    """The part of a multirun config that SweepPlan reads (what Hydra writes to <sweep dir>/multirun.yaml)."""
    return OmegaConf.create({"hydra": {"sweeper": {"params": sweeper_params or {}}, "overrides": {"task": task}}})


def test_the_plan_of_a_sweep_is_its_keys_of_several_values_from_the_command_line_and_the_sweeper_params():
    plan = SweepPlan.from_config(
        multirun_config(
            [
                "schedule.decay_after_steps=0,30000",
                "optim.clip_grad_norm=null,1.0",
                "seed=range(0,3)",
                "paths.data=/d",
                "tracking.uri=http\\://127.0.0.1:5000",
            ],
            {"optim.clip_grad_norm": "null,1.0,2.0", "schedule.lr": "1e-4,4e-4"},
        )
    )
    # The command line replaces a swept key of the sweeper's params (clip: 2 values, not 3), as Hydra's sweeper does;
    # values are spelled as Hydra passes them to the jobs (1e-4 -> 0.0001).
    assert plan.values == {
        "optim.clip_grad_norm": ["null", "1.0"],
        "schedule.lr": ["0.0001", "0.0004"],
        "schedule.decay_after_steps": ["0", "30000"],
        "seed": ["0", "1", "2"],
    }
    assert plan.num_jobs == 2 * 2 * 2 * 3
    assert plan.short_keys() == {
        "optim.clip_grad_norm": "clip_grad_norm",
        "schedule.lr": "lr",
        "schedule.decay_after_steps": "decay_after_steps",
        "seed": "seed",
    }
    # A glob over config groups cannot be counted without Hydra's config loader: a sweep of unknown size.
    assert SweepPlan.from_config(multirun_config(["experiment=glob(*)"])) == SweepPlan({"experiment": ["glob(*)"]})
    assert SweepPlan.from_config(multirun_config(["seed=1"])) == SweepPlan({}, num_jobs=1)


def test_a_job_is_named_by_its_swept_values_and_keeps_its_overrides_unescaped():
    plan = SweepPlan(
        {
            "schedule.decay_after_steps": ["0", "30000"],
            "model": ["crestereo_tiny", "raft_stereo_tiny"],
            "data.scale": ["1", "2"],
            "augmentation.scale": ["1", "2"],
        },
        num_jobs=16,
    )
    overrides = [
        "tracking.uri=http\\://127.0.0.1\\:5000",
        "schedule.decay_after_steps=30000",
        "model=raft_stereo_tiny",
        "augmentation.scale=2",
        "+data.scale=1",
    ]
    job = SweepInfo("id", "/sweep", 3, "7_3", tuple(plain_override(o) for o in overrides), plan)
    assert job.overrides[0] == "tracking.uri=http://127.0.0.1:5000"
    # In the plan's order; a last part shared by two keys keeps the whole key.
    assert job.run_name() == "decay_after_steps=30000 model=raft_stereo_tiny data.scale=1 augmentation.scale=2"
    assert job.has_parent
    assert not SweepInfo("id", "/sweep", 0, "", ("seed=1",), SweepPlan({}, num_jobs=1)).has_parent


# One job's tracker in its own process: it waits until all four processes are ready, then starts its run at once.
JOB = """
import sys, time
from pathlib import Path
from stereo_exp.tracking import MlflowTracker, TrackingConfig
from stereo_exp.tracking.sweep import SweepInfo, SweepPlan, sweep_id_of
uri, sweep_dir, num = sys.argv[1], sys.argv[2], int(sys.argv[3])
sweep = SweepInfo(sweep_id_of(sweep_dir), sweep_dir, num, f"9_{num}", (f"seed={num}",),
                  SweepPlan({"seed": ["0", "1", "2", "3"]}, num_jobs=4))
tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="race"), spool_dir=Path(sweep_dir) / str(num))
ready = Path(sweep_dir).parent / f"ready-{num}"
ready.write_text("")
while len(list(ready.parent.glob("ready-*"))) < 4:
    time.sleep(0.01)
run_id = tracker.start(params={"seed": num, "eval": {"datasets": ["synthetic-val"]}}, sweep=sweep)
tracker.log_metrics({"val/synthetic-val/mae": float(num)}, step=1)
tracker.end()
print(run_id)
"""


def test_jobs_that_start_together_on_a_new_sqlite_store_make_one_store_one_parent_and_all_their_runs(tmp_path):
    # Without the store being set up once, four processes opening a new SQLite file at the same moment break it
    # ("table _alembic_tmp_metrics already exists"; alembic "expected to match one row") and their runs are lost.
    uri, sweep_dir = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "multirun"
    logs = [open(tmp_path / f"job{num}.log", "w+") for num in range(4)]  # noqa: SIM115 (closed below)
    command = [sys.executable, "-c", JOB, uri, str(sweep_dir)]
    jobs = [
        subprocess.Popen([*command, str(num)], env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        for num, log in enumerate(logs)
    ]
    for job in jobs:
        job.wait(timeout=300)
    outputs = [(log.seek(0), log.read(), log.close())[1] for log in logs]
    assert [job.returncode for job in jobs] == [0, 0, 0, 0], [output[-2000:] for output in outputs]
    run_ids = [output.split()[-1] for output in outputs]

    assert not any(run_id.startswith("offline-") for run_id in run_ids)  # none had to wait in a spool
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("stereo_exp.role") == "sweep"]
    jobs = sorted((run for run in runs if run is not parent), key=lambda run: run.info.run_name)
    assert [run.info.run_name for run in jobs] == ["seed=0", "seed=1", "seed=2", "seed=3"]
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    assert all(run.info.status == "FINISHED" for run in jobs)
    (record,) = [read_record(path) for path in record_files(sweep_dir)]
    assert (record.parent_run_id, record.tracking_uri, record.experiment) == (parent.info.run_id, uri, "race")


def test_a_one_job_multirun_has_no_parent_run_and_compare_finds_its_run_from_the_sweep_folder(tmp_path, capsys):
    uri, sweep_dir = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "multirun"
    sweep = SweepInfo(sweep_id_of(sweep_dir), str(sweep_dir), 0, "", ("seed=1",), SweepPlan({}, num_jobs=1))
    tracker = MlflowTracker(TrackingConfig(uri=uri), spool_dir=tmp_path / "run")
    run_id = tracker.start(params={"seed": 1}, sweep=sweep)
    tracker.log_metrics({"val/motorcycle/mae": 2.5}, step=3)
    tracker.end()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])  # no parent run
    assert "mlflow.parentRunId" not in run.data.tags
    # The user's way back to the run: compare finds the store, the experiment and the sweep from the folder alone.
    output = tmp_path / "compare"
    assert compare_main(["--sweep", str(sweep_dir), "--metric", "val/motorcycle/mae", "-o", str(output)]) == 0
    assert f"val/motorcycle/mae of 1 runs ({uri}, experiment stereo_exp, sweep " in capsys.readouterr().out
    (row,) = (output / "val_motorcycle_mae.csv").read_text().splitlines()[1:]
    assert run_id in row and ",2.5," in row


def test_a_sweep_s_parent_run_reads_running_until_its_last_running_job_ends_then_how_its_jobs_ended(tmp_path):
    # The jobs keep the parent's status themselves: a SLURM submitter left with Ctrl-C does not set it at the end.
    # Before, the first job to end marked the parent FINISHED, with the others still running or failed.
    uri, sweep_dir = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "multirun"
    plan = SweepPlan({"seed": ["0", "1", "2"]}, num_jobs=3)
    run_ids: dict[int, str] = {}

    def job(num: int) -> MlflowTracker:
        """Job ``num`` starts (or resumes) its run."""
        sweep = SweepInfo(sweep_id_of(sweep_dir), str(sweep_dir), num, f"9_{num}", (f"seed={num}",), plan)
        tracker = MlflowTracker(TrackingConfig(uri=uri), spool_dir=sweep_dir / str(num))
        run_ids[num] = tracker.start(params={"seed": num}, sweep=sweep, run_id=run_ids.get(num))
        return tracker

    client = MlflowClient(uri)

    def parent() -> str:
        (run,) = client.search_runs(
            [client.get_experiment_by_name("stereo_exp").experiment_id], "tags.`stereo_exp.role` = 'sweep'"
        )
        return run.info.status

    first, second = job(0), job(1)
    first.end("FINISHED")
    assert parent() == "RUNNING"  # job 1 still runs
    second.end("KILLED")  # stopped with a checkpoint (job 2 has not started: it has no run yet)
    assert parent() == "KILLED"
    third = job(2)
    assert parent() == "RUNNING"
    third.end("FAILED")
    assert parent() == "FAILED"  # a failure outweighs a stop
    job(2).end("FINISHED")  # the sweep resumed: the failed job passes, then the stopped one ends
    assert parent() == "KILLED"
    resumed = job(1)
    assert parent() == "RUNNING"
    resumed.end("FINISHED")
    assert parent() == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])) == 4


def sweep_command(*overrides: str) -> list[str]:
    """``python -m stereo_exp -m`` on TINY_RUN with the default tracking (./mlflow.db), then ``overrides``."""
    tiny = [override for override in TINY_RUN if not override.startswith("tracking=")]
    return [sys.executable, "-m", "stereo_exp", "-m", *tiny, *overrides]


def ctrl_c_once_checkpointed(command: list[str], cwd: Path, jobs: list[int]) -> str:
    """Run ``command`` as from a terminal, Ctrl-C once each of ``jobs`` wrote a checkpoint; its output, after checking
    that it ended with 130 and no traceback."""
    process = start_in_own_group(command, cwd)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not all(list(cwd.glob(f"multirun/*/*/{j}/checkpoints/*.pth")) for j in jobs):
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 130 and "Traceback" not in output, output[-3000:]
    return output


def checkpoint_step(line: str, sweep: Path, num: int, stopped_by: str = r"Interrupted \(Ctrl-C\)") -> int:
    """The step of an interrupted job's summary line (how it was stopped: the regex ``stopped_by``), after checking
    that its checkpoint is there."""
    step = int(re.match(rf"      {stopped_by}: checkpoint written at step (\d+)[.;]", line).group(1))
    assert (sweep / str(num) / "checkpoints" / f"step_{step:07d}.pth").is_file()  # written before the job ended
    return step


def resume_as_advised(command: list[str], cwd: Path, output: str, sweep: Path) -> subprocess.CompletedProcess:
    """The summary's resume command (the same command with ``hydra.sweep.dir=`` the sweep's folder), run verbatim."""
    advice = re.search(r"^Run the same command with (hydra\.sweep\.dir=\S+) to resume the sweep", output, re.M)
    assert advice and advice.group(1) == f"hydra.sweep.dir={sweep.relative_to(cwd)}", output[-3000:]
    done = subprocess.run(
        [*command, advice.group(1)], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(cwd.glob("multirun/*/*")) == [sweep]  # the same sweep went on
    return done


def assert_each_job_one_finished_run_with_every_step_once(cwd: Path, names: list[str], steps: int) -> None:
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    jobs = {run.info.run_name: run for run in runs if not run.info.run_name.startswith("sweep ")}
    assert sorted(jobs) == names  # one MLflow run per job: an interrupted one went on
    assert {run.info.status for run in runs} == {"FINISHED"}  # the parent too
    for name, run in jobs.items():
        logged = [metric.step for metric in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(logged) == list(range(1, steps + 1)), name


@pytest.mark.slow
def test_a_local_sweep_of_four_jobs_with_the_default_store_records_every_run_and_fails_with_the_job_that_diverged(
    tmp_path,
):
    # Four jobs at once (hydra/launcher=local: four processes), the default tracking (./mlflow.db), and one learning
    # rate that makes the weights infinite after one step: that job fails, the others finish. A loader worker per
    # job: a failed job whose workers were still alive never ended.
    command = sweep_command(
        "hydra/launcher=local",
        "loader.num_workers=1",
        "schedule.warmup_steps=0",
        "train.max_nonfinite_steps=1",
        "schedule.lr=1e-4,2e-4,4e-4,1e30",
    )
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    statuses = {name: run.info.status for name, run in by_name.items() if not name.startswith("sweep ")}
    assert statuses == {"lr=0.0001": "FINISHED", "lr=0.0002": "FINISHED", "lr=0.0004": "FINISHED", "lr=1e+30": "FAILED"}
    (parent,) = [run for name, run in by_name.items() if name.startswith("sweep ")]
    assert parent.info.status == "FAILED"  # the parent says a job failed

    summary = summary_lines(done.stdout)
    assert summary[0].endswith("3 of 4 jobs completed, 1 failed")
    assert re.match(r"  #3 +\d+ +FAILED +FAILED +(\d+\.\d{4}|-) +lr=1e\+30$", summary[5])
    assert summary[6].startswith("      NonFiniteLossError: 1 consecutive steps")
    assert summary[6].endswith("/3/__main__.log)")
    assert summary[-1].startswith("Next: python -m stereo_exp.compare --sweep multirun/")


@pytest.mark.slow
def test_ctrl_c_in_a_local_sweep_checkpoints_every_job_and_the_command_it_prints_resumes_the_sweep(tmp_path):
    # A terminal's Ctrl-C reaches the submitter, submitit's controller of each job and the jobs. The controller used
    # to kill its job 1 s later, before the checkpoint; the submitter ended in a traceback; the jobs' advice, "run the
    # same command again", would have started a new sweep in a new time-named folder.
    command = sweep_command(
        "hydra/launcher=local", "mix.dataset_steps=[40]", "train.val_every=40", "schedule.lr=1e-4,2e-4"
    )
    output = ctrl_c_once_checkpointed(command, tmp_path, jobs=[0, 1])
    (sweep,) = tmp_path.glob("multirun/*/*")
    summary = summary_lines(output)
    assert summary[0].endswith("0 of 2 jobs completed, 2 interrupted"), output[-3000:]
    assert re.match(r"  #0 +\d+ +INTERRUPTED +KILLED +\S+ +lr=0\.0001$", summary[2]), summary
    assert re.match(r"  #1 +\d+ +INTERRUPTED +KILLED +\S+ +lr=0\.0002$", summary[4]), summary
    steps = [checkpoint_step(summary[3], sweep, 0), checkpoint_step(summary[5], sweep, 1)]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    assert len(runs) == 3 and {run.info.status for run in runs} == {"KILLED"}  # both jobs and the sweep's parent

    resumed = resume_as_advised(command, tmp_path, output, sweep)
    assert summary_lines(resumed.stdout)[0].endswith("2 of 2 jobs completed")
    for num, step in enumerate(steps):
        assert f"Resumed from step {step}\n" in (sweep / str(num) / "__main__.log").read_text()
    assert_each_job_one_finished_run_with_every_step_once(tmp_path, ["lr=0.0001", "lr=0.0002"], steps=40)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "hang-up"])
def test_a_local_sweep_whose_submitter_gets_a_stop_signal_stops_its_jobs_after_a_checkpoint_and_lists_them(
    tmp_path, signum
):
    # SIGTERM: `timeout 8h python -m stereo_exp -m hydra/launcher=local ...` signals the submitter alone (a Ctrl-C
    # reaches every process of the terminal): the submitter died at once and its jobs went on by themselves. SIGHUP:
    # a dropped SSH connection hangs up the terminal of them all: the jobs checkpointed, but the submitter died
    # without a summary, and the sweep's parent run read FINISHED.
    command = sweep_command("hydra/launcher=local", "mix.dataset_steps=[2000]", "seed=0,1")
    checkpointed = [f"multirun/*/*/{num}/checkpoints/*.pth" for num in (0, 1)]  # each job's (keep_last=2)
    if signum == signal.SIGTERM:
        process = start_in_own_group(command, tmp_path)
        for pattern in checkpointed:
            wait_for_checkpoints(tmp_path, pattern, timeout=180)
        process.send_signal(signal.SIGTERM)  # the submitter alone
        output = process.communicate(timeout=180)[0]
        exit_code, group = process.returncode, process.pid
    else:
        ready = lambda: all(list(tmp_path.glob(pattern)) for pattern in checkpointed)  # noqa: E731
        exit_code, output = hang_up_when(command, tmp_path, ready), ""
        group = None
    (sweep,) = tmp_path.glob("multirun/*/*")
    kept = (sweep / "summary.txt").read_text()  # where the summary is read after a hang-up
    assert exit_code == 128 + signum, (output or kept)[-3000:]
    if group is not None:
        assert subprocess.run(["pgrep", "-g", str(group)]).returncode == 1  # no job, controller or worker left
    summary = summary_lines(kept)
    if output:  # SIGTERM: the terminal got the summary it kept (after a hang-up there was none to get it)
        assert summary == summary_lines(output)
    assert summary[0].endswith("0 of 2 jobs completed, 2 interrupted"), summary
    stopped_by = "Received SIG(?:TERM|HUP)"  # a hang-up is passed on to the jobs as SIGTERM
    for num, (row, reason) in enumerate([summary[2:4], summary[4:6]]):
        assert re.match(rf"  #{num} +\d+ +INTERRUPTED +KILLED +\S+ +seed={num}$", row), summary
        checkpoint_step(reason, sweep, num, stopped_by=stopped_by)
    assert summary[6].startswith(f"Run the same command with hydra.sweep.dir={sweep.relative_to(tmp_path)} to resume")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    assert len(runs) == 3 and {run.info.status for run in runs} == {"KILLED"}  # both jobs and the sweep's parent


@pytest.mark.slow
def test_a_local_job_of_two_tasks_trains_one_ddp_run(tmp_path):
    # conf/hydra/launcher/local.yaml: "tasks_per_node: set to gpus_per_node for DDP inside each job". Its tasks used
    # to train alone, each its own run, in one folder (two checkpoint sequences, two MLflow runs racing).
    command = sweep_command("hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "seed=0,1")
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for job in tmp_path.glob("multirun/*/*/[01]"):
        joined = re.findall(
            r"DDP: rank (\d) of 2 .* \(127\.0\.0\.1; from submitit-local\)", (job / "__main__.log").read_text()
        )
        assert sorted(joined) == ["0", "1"], job
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    jobs = sorted(run.info.run_name for run in runs if not run.info.run_name.startswith("sweep "))
    assert jobs == ["seed=0", "seed=1"] and {run.info.status for run in runs} == {"FINISHED"}


@pytest.mark.parametrize(
    ("launcher", "wrong", "refusal"),
    [
        (
            "hydra/launcher=local",
            ["mix=cre_eth_mbl", "mix.dataset_steps=[2,2,2]", "paths.data=/nonexistent", "seed=0,1"],
            "error: job #0 (seed=0): mix.datasets: 3 of 3 datasets cannot be used (paths.data='/nonexistent' is not",
        ),
        (
            "hydra/launcher=sequential",
            ["schedule.warmup_steps=1,100"],
            "error: job #1 (schedule.warmup_steps=100): schedule.warmup_steps=100 is not shorter than the run (6 steps",
        ),
    ],
    ids=["local-missing-data", "sequential-warm-up-past-the-end"],
)
def test_a_sweep_whose_job_a_single_run_would_refuse_is_refused_before_any_job_and_leaves_nothing(
    tmp_path, launcher, wrong, refusal
):
    # Only the schemas were checked before the jobs started: a missing dataset folder (SLURM: every job queued, then
    # failed) or a warm-up longer than the run (after the jobs before it trained) failed in the job, leaving a
    # sweep folder, an MLflow store and a parent run; a single run refuses both before writing anything.
    done = run_command([*sweep_command(launcher), *wrong], tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.startswith(refusal), done.stderr[:2000]
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no MLflow store


@pytest.mark.slow
def test_a_sweep_without_a_launcher_runs_its_jobs_in_turn_past_a_failed_one_and_lists_them(tmp_path):
    # `-m` alone (Hydra's habit): the sequential launcher. Hydra's basic launcher ended in a traceback after the
    # sweep, with no summary, and checked no job's config before the first one started.
    command = sweep_command("train.max_nonfinite_steps=1")
    refused = subprocess.run(
        [*command, "schedule.min_lr=0,1"], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True
    )
    assert refused.returncode == 1, refused.stderr
    # Named by its swept value alone, not by every override of the command.
    assert refused.stderr.startswith("error: job #1 (schedule.min_lr=1): schedule.min_lr (1.0) must lie in")
    assert list(tmp_path.iterdir()) == []  # before any job: no sweep folder, no MLflow store

    done = subprocess.run(
        [*command, "schedule.warmup_steps=0", "schedule.lr=1e30,1e-4"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = summary_lines(done.stdout)
    assert summary[0].endswith("1 of 2 jobs completed, 1 failed"), summary
    assert re.match(r"  #0 +- +FAILED +FAILED +\S+ +lr=1e\+30$", summary[2]), summary
    assert summary[3].startswith("      NonFiniteLossError: 1 consecutive steps")
    assert re.match(r"  #1 +- +COMPLETED +FINISHED +\d+\.\d{4} +lr=0\.0001$", summary[4]), summary
    # The failed job's traceback goes to its log; the terminal gets its cause in one line (and the summary).
    (job_log,) = tmp_path.glob("multirun/*/*/0/__main__.log")
    assert "Traceback" not in done.stdout + done.stderr
    assert f"Job #0 failed (traceback in {job_log}): NonFiniteLossError: 1 consecutive" in done.stdout + done.stderr
    assert "Traceback (most recent call last)" in job_log.read_text()


def test_a_sweep_without_mlflow_lists_each_job_s_final_mae_and_no_compare_command(tmp_path):
    done = run_command([*sweep_command("tracking=none", "train.max_steps=2"), "seed=0,1"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_lines(done.stdout)
    assert summary[1].split() == ["job", "id", "state", "mlflow", "val", "mae", "run"]
    assert re.match(r"  #0 +- +COMPLETED +- +\d+\.\d{4} +seed=0$", summary[2]), summary  # was "-"
    assert "compare" not in summary[-1], summary  # compare reads MLflow: nothing to compare


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_without_a_launcher_stops_it_after_a_checkpoint_and_the_printed_command_resumes_it(
    tmp_path,
):
    command = sweep_command("mix.dataset_steps=[40]", "train.val_every=40", "schedule.lr=1e-4,2e-4")
    output = ctrl_c_once_checkpointed(command, tmp_path, jobs=[0])
    (sweep,) = tmp_path.glob("multirun/*/*")
    summary = summary_lines(output)
    assert summary[0].endswith("0 of 2 jobs completed, 1 interrupted, 1 not started"), summary
    assert re.match(r"  #0 +- +INTERRUPTED +KILLED +\S+ +lr=0\.0001$", summary[2]), summary
    step = checkpoint_step(summary[3], sweep, 0)
    assert re.match(r"  #1 +- +NOT STARTED +- +- +lr=0\.0002$", summary[4]), summary

    resumed = resume_as_advised(command, tmp_path, output, sweep)
    assert summary_lines(resumed.stdout)[0].endswith("2 of 2 jobs completed")
    assert f"Resumed from step {step}\n" in (sweep / "0" / "__main__.log").read_text()
    assert_each_job_one_finished_run_with_every_step_once(tmp_path, ["lr=0.0001", "lr=0.0002"], steps=40)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "hang-up"])
def test_a_stop_signal_as_the_next_job_of_a_sweep_without_a_launcher_starts_ends_it_with_its_summary_and_it_resumes(
    tmp_path, signum
):
    # The sequential launcher runs the jobs in its own process. A SIGTERM (`kill`, `timeout`) or a hang-up that came
    # while no training ran (a job's set-up: config, data, model, MLflow run) took the default action: the sweep
    # ended there without a summary, the next jobs never started, and its parent run read RUNNING for good.
    command = sweep_command("seed=0,1,2")
    next_job_started = lambda: any(tmp_path.glob("multirun/*/*/1"))  # noqa: E731 (Hydra made its folder)
    if signum == signal.SIGTERM:
        process = start_in_own_group(command, tmp_path)
        deadline = time.monotonic() + 180
        while not next_job_started() and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=180)[0]
        exit_code = process.returncode
    else:
        exit_code, output = hang_up_when(command, tmp_path, next_job_started), ""
    (sweep,) = tmp_path.glob("multirun/*/*")
    kept = (sweep / "summary.txt").read_text()
    assert exit_code == 128 + signum, (output or kept)[-3000:]
    summary = summary_lines(kept)
    if output:  # SIGTERM: the terminal got the summary it kept (after a hang-up there was none to get it)
        assert summary == summary_lines(output)
    assert summary[0].endswith("1 of 3 jobs completed, 1 interrupted, 1 not started"), summary
    assert re.match(r"  #0 +- +COMPLETED +FINISHED +\d+\.\d{4} +seed=0$", summary[2]), summary
    assert re.match(r"  #1 +- +INTERRUPTED +KILLED +\S+ +seed=1$", summary[3]), summary
    step = checkpoint_step(summary[4], sweep, 1, stopped_by=f"Received {signal.Signals(signum).name}")
    assert re.match(r"  #2 +- +NOT STARTED +- +- +seed=2$", summary[5]), summary
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("stereo_exp").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED", "KILLED"]  # job 0, job 1, the parent

    resumed = resume_as_advised(command, tmp_path, kept, sweep)
    assert summary_lines(resumed.stdout)[0].endswith("3 of 3 jobs completed")
    assert f"Resumed from step {step}\n" in (sweep / "1" / "__main__.log").read_text()


def tiny_app(folder: Path, task: str, *launcher: str) -> list[str]:
    """A Hydra app of one key, ``a``, on the repository's launcher configs, whose task function runs ``task`` (lines of
    Python that may read ``cfg``); returns the command that sweeps ``a=1,2`` with the ``launcher`` overrides."""
    (folder / "app.yaml").write_text(f"a: 0\nhydra:\n  searchpath:\n    - file://{CONF_DIR}\n")
    body = textwrap.indent(textwrap.dedent(task).strip(), " " * 4)
    (folder / "app.py").write_text(
        "import hydra\n\n\n"
        '@hydra.main(version_base="1.3", config_path=".", config_name="app")\n'
        f"def main(cfg):\n{body}\n\n\n"
        'if __name__ == "__main__":\n    main()\n'
    )
    return [sys.executable, str(folder / "app.py"), "-m", *launcher, "a=1,2"]


def test_the_jobs_of_a_local_sweep_let_their_openmp_threads_sleep_while_waiting(tmp_path):
    # They share this machine's cores; spinning threads made two 2-thread trainings on 2 cores 10x slower.
    task = """
        import os
        from pathlib import Path
        Path(f"{os.environ['ROOT']}/policy_{cfg.a}.txt").write_text(os.environ.get("OMP_WAIT_POLICY", "unset"))
    """
    command = tiny_app(tmp_path, task, "hydra/launcher=local")
    env = {key: value for key, value in subprocess_env().items() if key != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        command, cwd=tmp_path, env={**env, "ROOT": str(tmp_path)}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(tmp_path / f"policy_{a}.txt").read_text() for a in (1, 2)] == ["PASSIVE", "PASSIVE"]


def summary_lines(stdout: str) -> list[str]:
    """The submitter's summary: from its "Sweep ..." line to the end."""
    lines = stdout.splitlines()
    return lines[max(i for i, line in enumerate(lines) if line.startswith("Sweep ")) :]
