"""What stereo_exp's sweep launchers (``hydra/launcher=sequential``, the default of ``-m``; ``local``; ``slurm``) do
besides running the jobs, so that no sweep is lost silently.

Hydra instantiates launchers only from its plugin namespace: the launcher classes are Hydra's basic launcher and
hydra-submitit-launcher's with these mixins, a few lines in ``hydra_plugins/stereo_exp_launcher/launchers.py``. Hydra
imports that module whenever it starts, so this one imports MLflow and the rest of stereo_exp only when a sweep is
launched.

In the submitting process, before any job starts:

* Every job's config is checked (each schema's own checks): a wrong value stops the sweep with one line naming the
  job and the key, before anything is submitted.
* SLURM resources that fit the partition: ``gpus_per_node: auto`` takes the GPUs of its nodes (none on a CPU-only
  partition), ``cpus_per_task: auto`` what one rank uses (``loader.num_workers`` + 1, at most its share of a
  node), ``tasks_per_node`` one rank per GPU. A request the partition cannot hold stops here, with one line that
  names the key to change, instead of sbatch's traceback.
* The MLflow store, the experiment, the sweep's parent run and its UI view are made once
  (``tracking.sweep.register_sweep``), so that jobs starting together never race to create them (a new SQLite file
  broke that way: "table _alembic_tmp_metrics already exists").
* SLURM jobs are named after what runs (``stereo_exp:<experiment or model>``); once started, each renames itself
  ``... #<job num> <swept values>``, as sacct and squeue show it.

A training that fails makes its job fail: Hydra keeps a task's exception in its ``JobReturn``, and a submitit job
would exit 0 (SLURM: COMPLETED), so ``_run_job`` raises it again after logging it into the run folder's log.

When every job has ended, the submitter attaches a table and a plot of the sweep's key metric to the parent run,
and its last lines list every job with its state (sacct's for SLURM), its MLflow status and metric, then the sweep
id, the MLflow experiment link and the ``compare`` command to run next. It exits with 1 if a job failed.

Ctrl-C: SLURM jobs go on (the submitter says how to see and cancel them). Local jobs get the terminal's Ctrl-C as a
single run does (a checkpoint after the current step, then they stop); the submitter waits for them, lists them as
INTERRUPTED and says which command resumes the sweep (``hydra.sweep.dir=``), then exits with 130. A second Ctrl-C
stops the jobs at once, without a checkpoint. A sequential sweep stops with its running job (the others: NOT
STARTED), with the same summary; so does it after SIGTERM (143) or a hang-up of its terminal (129), also one that
comes between two trainings. SIGTERM to the submitter of a local sweep (``kill``, ``timeout``) is passed on to its
jobs and ends the same way, with exit code 143; a hang-up of its terminal too (129). The submitter of a SLURM sweep
waits on after a hang-up. Every summary is also appended to ``<sweep dir>/summary.txt``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict, read_write

from stereo_exp.cli import (
    HeldStops,
    cause,
    detach_from_terminal,
    discard_untouched_sweep_folder,
    drop_failed_run,
    quiet_half_built_objects,
    report_failure,
    resume_advice,
    stop_name,
)
from stereo_exp.config import typed

if TYPE_CHECKING:
    from stereo_exp.tracking.sweep import SweepInfo, SweepRecord

log = logging.getLogger(__name__)

FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)
SACCT_WAIT_S = 30.0  # sacct records a job's end moments after its result file appears: wait this long for it
POLL_S = 2.0  # how often the submitter looks for the result files of jobs that ended
STATE_POLL_S = 30.0  # how often it asks sacct for all jobs at once (a job that died leaves no result file)
NOT_STARTED = "NOT STARTED"  # the state of the jobs a sequential sweep did not reach (Ctrl-C)
SUMMARY_FILE = "summary.txt"  # <sweep dir>/summary.txt: every summary the submitter printed, the last one last


class LaunchError(Exception):
    """The sweep cannot be submitted as configured; the message names the key to change."""


class JobInterrupted(Exception):
    """Raised in a job stopped by Ctrl-C or a stop signal (SIGTERM, SIGHUP), so that its result file says so: an
    exit without one looks to the submitter like a job that died. The message says whether it wrote a checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class JobOutcome:
    """How one job of the sweep ended, as the submitter sees it."""

    num: int  # hydra.job.num
    job_id: str  # SLURM's ARRAYID_INDEX, or the local process id
    name: str  # the run name: the swept values
    error: str | None = None  # the exception line of a failed job, or how an interrupted one stopped
    result: JobReturn | None = None  # Hydra's record of a job that completed
    state: str = ""  # "" while it runs; then COMPLETED, FAILED, INTERRUPTED or NOT STARTED, or sacct's (SLURM)
    interrupted: bool = False  # stopped by Ctrl-C or a stop signal (JobInterrupted): resumable, not failed

    @property
    def failed(self) -> bool:
        return self.error is not None and not self.interrupted

    def end(self, result: JobReturn | None = None, *, error: str | None = None, interrupted: bool = False) -> None:
        """Record how the job ended: its result (COMPLETED), its error line (FAILED) or how Ctrl-C stopped it
        (INTERRUPTED)."""
        self.result, self.error, self.interrupted = result, error, interrupted
        self.state = "INTERRUPTED" if interrupted else "FAILED" if error is not None else "COMPLETED"


class SweepLauncher:
    """What every stereo_exp launcher does around its jobs: check them all before any starts, make the sweep's
    MLflow parent run once, and end with a summary (mixed into Hydra's launcher classes, which run the jobs)."""

    config_file: str  # the launcher's config, named in error messages
    config: Any
    # Whether the jobs run on this machine, so that a dataset folder or weights file missing here is missing for them
    # (a job refused before any starts); SLURM's nodes may see data this host does not (staged to node-local disks).
    jobs_run_here = True
    stop_signal: int | None = None  # the signal that stopped the sweep (Ctrl-C, SIGTERM): exit code 128 + it
    hydra_context: Any

    def _start(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> tuple[SweepInfo, list[int], dict[str, Any], dict[int, str], SweepRecord | None]:
        """The sweep, its job numbers, then ``_prepare``'s (parameters, run names, MLflow record). A Ctrl-C before any
        job started ends the process, leaving no sweep folder where nothing was written into it."""
        from stereo_exp.tracking.sweep import SweepInfo, SweepPlan, sweep_id_of

        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        plan = SweepPlan(values=SweepPlan.from_config(self.config).values, num_jobs=len(job_overrides))
        sweep = SweepInfo(sweep_id_of(sweep_dir), str(sweep_dir), job_num=-1, job_id="", overrides=(), plan=plan)
        nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        try:
            return (sweep, nums, *self._prepare(sweep, nums, job_overrides))
        except KeyboardInterrupt:
            discard_untouched_sweep_folder(sweep_dir)
            print("\nInterrupted (Ctrl-C) before any job started: none runs.", file=sys.stderr)
            sys.exit(128 + signal.SIGINT)

    def _prepare(
        self, sweep: SweepInfo, nums: list[int], job_overrides: Sequence[Sequence[str]]
    ) -> tuple[dict[str, Any], dict[int, str], SweepRecord | None]:
        """Before any job starts: check every job, fit the resources, make the sweep folder and its MLflow records.
        Returns (the launcher's parameters, run name of each job number, the MLflow record). A check that fails ends
        the process with one line and removes the sweep folder Hydra made."""
        sweep_dir = Path(sweep.sweep_dir)
        try:
            self._check_configs(sweep, nums, job_overrides)
            params = self._resources()
        except LaunchError as error:
            discard_untouched_sweep_folder(sweep_dir)
            sys.exit(f"error: {error}")
        names = {num: _run_name(sweep, overrides) for num, overrides in zip(nums, job_overrides, strict=True)}

        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # hydra.sweep.mode: the sweep folder's permissions, as Hydra applies them
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        return params, names, self._register(sweep)

    def _resources(self) -> dict[str, Any]:
        """The launcher's parameters as it uses them (the submitit launchers fit theirs to the machine)."""
        return {}

    def _check_configs(self, sweep: SweepInfo, nums: list[int], job_overrides: Sequence[Sequence[str]]) -> None:
        """Compose every job's config as its job will, and run the checks a single run makes before it writes
        anything (its schemas'; a training's datasets, weights, schedule length and crop size): a wrong value or a
        missing dataset fails here, once, not in every job after it started. The message names the job by its swept
        values. A file missing here is only warned about on SLURM, whose nodes may see data that this host does not."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import OmegaConfBaseException

        submitter = HydraConfig.instance().cfg
        unseen: dict[str, int] = {}  # a missing file's error -> the first job that needs it (SLURM only)
        try:
            for num, overrides in zip(nums, job_overrides, strict=True):
                config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with read_write(config.hydra), open_dict(config.hydra):
                    config.hydra.job.num = num
                    output = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
                    config.hydra.runtime.output_dir = str(output.resolve())
                HydraConfig.instance().set_config(config)  # ${hydra:...} as the job resolves it
                task = copy.deepcopy(config)  # keeps the root's schema, which checks the top-level keys (+foo=1)
                with read_write(task), open_dict(task):
                    del task["hydra"]
                given = filter_overrides(overrides)
                swept = [o for o in given if o.partition("=")[0].lstrip("+~") in sweep.plan.values] or given
                try:
                    _check_job(typed(task))
                except OmegaConfBaseException as error:  # not a schema's check: leave it to the job
                    log.warning("Could not check the config of job #%d here: %s", num, _last_line(str(error)))
                except FileNotFoundError as error:  # a dataset folder or weights file that is not here
                    if self.jobs_run_here:
                        raise LaunchError(f"job #{num} ({' '.join(swept)}): {error}") from None
                    unseen.setdefault(str(error).splitlines()[0].rstrip(":"), num)  # the rest: in the job's log
                except ValueError as error:
                    raise LaunchError(f"job #{num} ({' '.join(swept)}): {error}") from None
        finally:
            HydraConfig.instance().cfg = submitter
        for error, num in unseen.items():  # data staged on the nodes themselves, or a mistake: said before submitting
            log.warning("Job #%d will fail unless its nodes see what this host does not: %s", num, error)

    def _register(self, sweep: SweepInfo) -> SweepRecord | None:
        """The sweep's MLflow store, experiment, parent run and view, made once before the jobs start. An
        unreachable or unwritable store is not fatal: the jobs keep their records in their run folders."""
        from stereo_exp.tracking.mlflow_io import get_or_create_experiment, is_unreachable, open_client, server_answers
        from stereo_exp.tracking.sweep import register_sweep, validation_metrics

        tracking = OmegaConf.select(self.config, "tracking")
        if tracking is None or tracking.backend != "mlflow":  # tracking=none, or an app without our tracking group
            return None
        try:
            if not server_answers(tracking.uri, tracking.probe_timeout_s):
                raise ConnectionError(f"no answer to GET /health within {tracking.probe_timeout_s:g} s")
            with _http(tracking):
                client = open_client(tracking.uri)
                experiment_id = get_or_create_experiment(client, tracking.experiment)
                metrics = validation_metrics(OmegaConf.select(self.config, "eval.datasets"))
                return register_sweep(client, tracking.experiment, experiment_id, sweep, metrics=metrics, wait_s=0)
        except Exception as error:
            if not is_unreachable(error):
                raise
            log.warning(
                "MLflow at %s cannot be used now (%s): each job keeps its records in its run folder and "
                "sends them when MLflow answers (or: python -m stereo_exp.tracking.sync %s).",
                tracking.uri,
                _last_line(str(error)),
                sweep.sweep_dir,
            )
            return None

    def _finish(self, sweep: SweepInfo, record: SweepRecord | None, outcomes: list[JobOutcome]) -> list[JobReturn]:
        """Report, then leave as the sweep ended: exit 1 when a job failed, 128 + the signal that stopped the sweep
        (130: Ctrl-C; 143: SIGTERM), 1 when a job was stopped by a signal of its own (scancel); else return Hydra's
        results."""
        self._report(sweep, record, outcomes)
        if any(outcome.failed for outcome in outcomes):
            sys.exit(1)
        if self.stop_signal is not None:
            sys.exit(128 + self.stop_signal)
        if any(outcome.interrupted for outcome in outcomes):
            sys.exit(1)  # a job stopped by a signal of its own (scancel): the sweep did not complete
        return [outcome.result for outcome in outcomes]

    def _report(self, sweep: SweepInfo, record: SweepRecord | None, outcomes: list[JobOutcome]) -> None:
        """Attach the sweep's table and plot to its parent run, then print the summary (the submitter's last lines)."""
        from stereo_exp.tracking.addresses import ui_hint
        from stereo_exp.tracking.mlflow_io import is_unreachable

        runs, metric, note = {}, None, ""
        if record is not None:
            try:
                runs, metric, note = _summarise_in_mlflow(record, self.config.tracking, sweep, outcomes)
            except Exception as error:
                if not is_unreachable(error):
                    raise
                note = f"MLflow at {record.tracking_uri} cannot be reached now ({_last_line(str(error))})"
        relative = os.path.relpath(sweep.sweep_dir)
        where = sweep.sweep_dir if relative.startswith("..") else relative
        completed = sum(1 for outcome in outcomes if outcome.result is not None)
        others = {
            "failed": sum(1 for outcome in outcomes if outcome.failed),
            "interrupted": sum(1 for outcome in outcomes if outcome.interrupted),
            "not started": sum(1 for outcome in outcomes if outcome.state == NOT_STARTED),
        }
        counts = f"{completed} of {len(outcomes)} jobs completed"
        counts += "".join(f", {count} {what}" for what, count in others.items() if count)
        lines = ["", f"Sweep {where} (id {sweep.sweep_id}): {counts}"]
        table = [["job", "id", "state", "mlflow", metric or "val mae", "run"]]
        for outcome in outcomes:
            run = runs.get(outcome.num)
            value = run.data.metrics.get(metric) if run is not None and metric else None
            if value is None and metric is None and outcome.result is not None:
                value = outcome.result.return_value  # without MLflow: the job's own final mae (stereo_exp.__main__)
            status, shown = run.info.status if run else "-", f"{value:.4f}" if value is not None else "-"
            table.append([f"#{outcome.num}", outcome.job_id, outcome.state, status, shown, outcome.name])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row, outcome in zip(table, [None, *outcomes], strict=True):
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            if outcome is not None and outcome.error:
                lines.append(f"      {outcome.error}  (log: {_job_log(where, outcome.num)})")
        if note:
            lines.append(note)
        if others["interrupted"]:
            lines.append(
                f"{resume_advice(self.config)} to resume the sweep (resume=auto, the default: each job continues "
                "from its last checkpoint, if it wrote one)."
            )
        if record is not None:
            hint = ui_hint(record.tracking_uri)
            lines.append(
                f"MLflow experiment {record.experiment}: {record.experiment_url()}" + (f"  ({hint})" if hint else "")
            )
        # compare reads MLflow, and ranks by a validation metric: none in the runs of an eda sweep
        if OmegaConf.select(self.config, "tracking.backend") == "mlflow" and not (runs and metric is None):
            lines.append(f"Next: python -m stereo_exp.compare --sweep {where}")
        # Kept for whoever was not watching (a sweep of days, a terminal that hung up); a resumed sweep adds its own.
        # Written first: printing to a terminal that is gone fails.
        try:
            with open(Path(sweep.sweep_dir) / SUMMARY_FILE, "a") as file:
                file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}]" + "\n".join(lines) + "\n")
        except OSError as error:
            log.warning("Could not keep the summary in %s: %s", sweep.sweep_dir, error)
        print("\n".join(lines), flush=True)


class SubmititSweepLauncher(SweepLauncher):
    """The local launcher (``hydra/launcher=local``), and what the SLURM one shares: hydra-submitit's classes build
    the jobs and run them (``BaseSubmititLauncher.__call__``); every job is a process of its own."""

    _EXECUTOR: str  # submitit's executor: "local" | "slurm"
    config_file = "conf/hydra/launcher/local.yaml"
    params: dict[str, Any]
    job_names: dict[int, str]  # SLURM job name of each job number (set before the launcher is pickled for the jobs)

    # ---- in the job -------------------------------------------------------------------------------------------

    def __call__(
        self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: dict
    ) -> JobReturn:
        """Run one job, ending as ``_run_job`` says (its process exits non-zero when the job failed)."""
        run_in_submitit = super().__call__  # type: ignore[misc]

        def run() -> JobReturn:
            # The local launcher starts its jobs with SIGINT blocked (see ``launch``): a Ctrl-C that came since is
            # delivered here, before the training begins.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            self._rename_job(job_num)
            return run_in_submitit(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

        return _run_job(job_num, run)

    def _rename_job(self, job_num: int) -> None:
        """SLURM only: name this job after its point of the sweep (sacct and squeue show it). A sweep of several
        points is a job array (its tasks are ARRAY_TASK); a one-point multirun is a plain job."""
        name = getattr(self, "job_names", {}).get(job_num)
        if name is None or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return
        array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
        command = ["scontrol", "update", f"JobId={job}", f"JobName={name}"]
        try:
            subprocess.run(command, capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as error:  # a name is not worth failing a job for
            log.info("Could not rename the SLURM job (%s)", error)

    # ---- in the submitting process ----------------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Check, register, submit, wait for every job (through Ctrl-C), report and exit as ``_finish`` says."""
        import submitit

        sweep, nums, params, names, record = self._start(job_overrides, initial_job_idx)
        params["name"] = f"stereo_exp:{_label(self.config)}"
        self.job_names = {num: f"{params['name']} #{num} {name}" for num, name in names.items()}
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, self.config.hydra.sweep.dir)
        if self._EXECUTOR == "local" and len(job_overrides) > 1:
            # The jobs share this machine's cores: their OpenMP threads sleep while waiting instead of spinning (read
            # when each job loads torch; a value in the environment wins). Two 2-thread trainings on 2 cores took
            # 440-490 s spinning and 46-48 s sleeping, same numbers; alone, sleeping costs ~40% (docs/PERFORMANCE.md).
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        arguments = []
        for num, overrides in zip(nums, job_overrides, strict=True):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            arguments.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        try:
            # Local jobs start with SIGINT blocked (inherited): submitit's controller process, which a Ctrl-C would
            # make kill its job 1 s later, before its checkpoint, never takes one; each job unblocks it (__call__).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            if self._EXECUTOR == "local":
                # Nor does that controller handle SIGHUP: a hang-up of the terminal would end it (the default action)
                # while its job still writes its checkpoint, and the job would read as failed, without a result. It
                # inherits SIG_IGN; each job installs its own handler when its training starts.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            jobs = self._executor(params).map_array(self, *zip(*arguments, strict=True))
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as error:
            sys.exit(
                f"error: {self._EXECUTOR} refused the sweep: {_last_line(str(error))} (launcher settings: "
                f"hydra.launcher.*, {self.config_file})"
            )
        outcomes = [JobOutcome(num, str(job.job_id), names[num]) for num, job in zip(nums, jobs, strict=True)]
        self._wait_for_all(jobs, outcomes)
        self._states(outcomes)
        return self._finish(sweep, record, outcomes)

    def _wait_for_all(self, jobs: list[Any], outcomes: list[JobOutcome]) -> None:
        """``_wait``, through Ctrl-C (the one that came while the jobs were submitted too). SLURM: the submitter
        leaves, the jobs go on. Local: every job got it too, checkpoints and stops; this waits for them. A second
        Ctrl-C stops them at once, without a checkpoint (waiting for them still: the summary says how each ended); a
        third leaves them. A local sweep's submitter passes a SIGTERM or a hang-up on to its jobs
        (``_stop_local_jobs``); a SLURM sweep's waits on after a hang-up, its summary going to ``SUMMARY_FILE`` and
        the parent run."""
        interrupts, started = 0, time.monotonic()
        local = self._EXECUTOR == "local"
        if local:
            stop = partial(self._stop_local_jobs, jobs)
            handlers = {signal.SIGTERM: stop, signal.SIGHUP: stop}
        else:  # the jobs run on in SLURM after a hang-up: wait for them without the terminal, for the summary
            handlers = {signal.SIGHUP: lambda _signum, _frame: detach_from_terminal()}
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        try:
            while True:
                try:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C held back since submitting
                    self._wait(jobs, outcomes, started)
                    return
                except KeyboardInterrupt:
                    interrupts += 1
                    self.stop_signal = signal.SIGINT
                    if not local:
                        array = outcomes[0].job_id.split("_")[0]
                        print(
                            f"\nInterrupted: the jobs go on in SLURM and their runs still reach MLflow; see them with "
                            f"squeue -j {array}, cancel them with scancel {array}",
                            file=sys.stderr,
                        )
                        sys.exit(128 + signal.SIGINT)
                    if interrupts == 1:
                        log.warning(
                            "Interrupted (Ctrl-C): every job writes a checkpoint after its current step and stops; "
                            "waiting for them (Ctrl-C again stops them at once, without it)."
                        )
                    elif interrupts == 2:
                        log.warning("Interrupted again: the jobs stop at once; waiting for them (Ctrl-C again leaves).")
                    else:
                        print(f"\nLeft the jobs. {resume_advice(self.config)} to resume the sweep.", file=sys.stderr)
                        sys.exit(128 + signal.SIGINT)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_local_jobs(self, jobs: list[Any], signum: int, _frame: Any) -> None:
        """SIGTERM to the submitter of a local sweep (``kill``, ``timeout``): unlike a Ctrl-C, the jobs did not get it
        (they went on alone, the submitter gone). Pass it to each job's submitit controller, which passes it to the
        job's tasks: each writes a checkpoint after its current step and stops, as after Ctrl-C, while the submitter
        goes on waiting for them, then lists them and exits with 143. SIGHUP (the terminal hung up): the same, passed
        on as SIGTERM (the controller passes on SIGTERM only), the summary going to the parent run and
        ``SUMMARY_FILE``; exit code 129."""
        if signum == signal.SIGHUP:
            detach_from_terminal()
        if self.stop_signal != signum:
            log.warning(
                "Received %s: every job writes a checkpoint after its current step and stops; waiting.",
                signal.Signals(signum).name,
            )
        self.stop_signal = signum
        for job in jobs:
            controller = getattr(job, "_process", None)  # submitit's Popen: it signals only a process still running
            if controller is not None:
                controller.send_signal(signal.SIGTERM)

    def _resources(self) -> dict[str, Any]:
        """The launcher parameters as submitit takes them (the SLURM launcher fits them to the partition)."""
        return dict(self.params)

    def _executor(self, params: dict[str, Any]) -> Any:
        """A submitit executor with ``params``, built as hydra-submitit-launcher builds it."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        init = {f"{self._EXECUTOR}_max_num_timeout": params["max_num_timeout"]} if "max_num_timeout" in params else {}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params["submitit_folder"], **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the keys without an executor prefix
        own = [(key, value) for key, value in params.items() if key not in ("submitit_folder", "max_num_timeout")]
        executor.update_parameters(**{key if key in shared else f"{self._EXECUTOR}_{key}": value for key, value in own})
        return executor

    def _wait(self, jobs: list[Any], outcomes: list[JobOutcome], started: float) -> None:
        """Wait for every job still running (no ``state`` yet); say when each one ends (a sweep may run for days). A
        job that ends without a result (cancelled, killed, out of memory) is noticed through SLURM's accounting, asked
        for all jobs at once every ``STATE_POLL_S``: submitit alone asks less and less often, up to every 10 minutes
        late in a sweep."""
        remaining = [(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True) if not outcome.state]
        next_state_poll = 0.0
        while remaining:
            if self._EXECUTOR == "slurm" and time.monotonic() >= next_state_poll:
                jobs[0].watcher.update()  # one sacct call for every job of the sweep
                next_state_poll = time.monotonic() + STATE_POLL_S
            for job, outcome in [(job, outcome) for job, outcome in remaining if job.done()]:
                remaining.remove((job, outcome))
                error = job.exception()
                if error is None:
                    outcome.end(job.results()[0])  # rank 0's, as hydra-submitit-launcher returns it
                elif interruption := re.search(rf"\b{JobInterrupted.__name__}: (.+)", str(error)):
                    outcome.end(error=interruption.group(1), interrupted=True)
                else:
                    outcome.end(error=_job_error(str(error)))
                ended = outcome.state + (f": {outcome.error}" if outcome.error else "")  # FAILED: NonFiniteLossError...
                elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - started))
                log.info(
                    "job #%d (%s) %s ended after %s: %s", outcome.num, outcome.job_id, outcome.name, elapsed, ended
                )
            if remaining:
                time.sleep(POLL_S)

    def _states(self, outcomes: list[JobOutcome]) -> None:
        """The final states of the jobs, for the summary: local jobs have theirs from ``_wait``."""


class SlurmSweepLauncher(SubmititSweepLauncher):
    """The SLURM launcher's additions: resources fitted to the partition, and sacct's states in the summary."""

    config_file = "conf/hydra/launcher/slurm.yaml"
    jobs_run_here = False

    def _resources(self) -> dict[str, Any]:
        """Fit ``gpus_per_node``, ``tasks_per_node`` and ``cpus_per_task`` (``auto`` or numbers) to the partition,
        and say what each job asks for.

        Raises:
            LaunchError: SLURM is not installed here, the partition does not exist or cannot hold the request.
        """
        if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
            raise LaunchError(
                "hydra/launcher=slurm needs SLURM's sbatch and sinfo on this machine (submit from a "
                "login node), or run the sweep here with hydra/launcher=local"
            )
        params = dict(self.params)
        nodes = _partition_nodes(params.get("partition"))
        partition = nodes[0][0]
        cpus = min(node_cpus for _, node_cpus, _ in nodes)
        gpu_counts = sorted({node_gpus for _, _, node_gpus in nodes})
        gpus = params.get("gpus_per_node")
        if gpus == "auto":
            if len(gpu_counts) > 1:
                raise LaunchError(
                    f"the nodes of partition {partition} have {' or '.join(map(str, gpu_counts))} GPUs: "
                    "set hydra.launcher.gpus_per_node to the number each job uses"
                )
            gpus = gpu_counts[0] or None
        elif gpus and int(gpus) > gpu_counts[-1]:
            has = f"at most {gpu_counts[-1]} GPUs per node" if gpu_counts[-1] else "no GPUs (sinfo: no gres/gpu)"
            raise LaunchError(
                f"hydra.launcher.gpus_per_node={gpus} but partition {partition} has {has}: set "
                "hydra.launcher.gpus_per_node=auto (or null for CPU-only jobs), or choose another "
                "hydra.launcher.partition"
            )
        tasks = params.get("tasks_per_node")
        tasks = (gpus or 1) if tasks in ("auto", None) else int(tasks)
        cpus_per_task = params.get("cpus_per_task")
        if cpus_per_task == "auto":
            workers = OmegaConf.select(self.config, "loader.num_workers", default=0) or 0
            cpus_per_task = max(1, min(int(workers) + 1, cpus // tasks))
        elif cpus_per_task and int(cpus_per_task) * tasks > cpus:
            raise LaunchError(
                f"hydra.launcher.cpus_per_task={cpus_per_task} x tasks_per_node={tasks} is more than "
                f"the {cpus} CPUs of a node of partition {partition}: lower hydra.launcher.cpus_per_task "
                "(or set it to auto)"
            )
        per_node = f"{gpus} GPU(s)" if gpus else "no GPU"
        log.info(
            "SLURM partition %s (%d node(s) of %d CPUs, %d GPUs): each job takes %s node(s) x %d task(s), "
            "%d CPU(s) per task, %s per node",
            partition,
            len(nodes),
            cpus,
            gpu_counts[-1],
            params.get("nodes", 1),
            tasks,
            cpus_per_task,
            per_node,
        )
        return {**params, "gpus_per_node": gpus, "tasks_per_node": tasks, "cpus_per_task": cpus_per_task}

    def _states(self, outcomes: list[JobOutcome]) -> None:
        """sacct's final state of every job (it records a job's end moments after its result file appears)."""
        ids = ",".join(outcome.job_id for outcome in outcomes)
        deadline = time.monotonic() + SACCT_WAIT_S
        while True:
            command = ["sacct", "-n", "-X", "-P", "-j", ids, "-o", "JobID,State"]
            listed = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
            states = {job: state.split(" ")[0] for job, _, state in (line.partition("|") for line in listed.split())}
            if all(states.get(o.job_id) in FINAL_STATES for o in outcomes) or time.monotonic() > deadline:
                break
            time.sleep(1)
        for outcome in outcomes:
            state = states.get(outcome.job_id) or "?"
            if outcome.failed and state in ("CANCELLED", "PREEMPTED"):
                # Stopped by SLURM (scancel, preemption): no result file (_run_job), but resumable; its own log says
                # whether it wrote a checkpoint first.
                log_file = _job_log(self.config.hydra.sweep.dir, outcome.num)
                outcome.end(error=_stop_message(log_file) or f"{state} before its first checkpoint", interrupted=True)
            outcome.state = state


class SequentialSweepLauncher(SweepLauncher):
    """``hydra/launcher=sequential``, the default of ``-m``: the jobs one after another in this process, as Hydra's
    basic launcher runs them, with the same checks before, MLflow parent run and summary as the other launchers. A
    job that fails does not stop the sweep. Ctrl-C stops the running job after its checkpoint (a second one at once),
    and the sweep with it: the summary says which jobs did not start and which command resumes the sweep. SIGTERM
    and a hang-up do the same (exit 143, 129), also between two trainings (``cli.HeldStops``)."""

    config_file = "conf/hydra/launcher/sequential.yaml"
    task_function: Any

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Check, register, run every job in turn, report; exit with 1 when a job failed, 130 after a Ctrl-C."""
        from hydra.core.utils import configure_log, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep, nums, _, names, record = self._start(job_overrides, initial_job_idx)
        log.info("Sweep output dir : %s (%d jobs, one after another)", self.config.hydra.sweep.dir, len(nums))
        outcomes = [JobOutcome(num, "-", names[num]) for num in nums]
        interrupted = False
        held = HeldStops()  # SIGTERM or a hang-up while no training runs: the sweep stops at the next checkpoint
        previous = {signum: signal.signal(signum, held) for signum in HeldStops.signals}
        try:
            for outcome, overrides in zip(outcomes, job_overrides, strict=True):
                if held.received and not interrupted:  # came after a training (or too late for it): stop here
                    interrupted, self.stop_signal = True, held.received[0]
                if interrupted:
                    outcome.state = NOT_STARTED
                    continue
                log.info("\t#%d : %s", outcome.num, " ".join(filter_overrides(overrides)))
                try:
                    outcome.end(_run_job(outcome.num, partial(self._run_in_process, outcome.num, overrides)))
                except JobInterrupted as stop:
                    outcome.end(error=str(stop), interrupted=True)
                    interrupted, self.stop_signal = True, stop.signum
                except Exception as error:  # listed in the summary; the next job starts
                    outcome.end(error=_job_error(f"{type(error).__name__}: {error}"))
                finally:
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # the job set its own
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self._finish(sweep, record, outcomes)

    def _run_in_process(self, num: int, overrides: Sequence[str]) -> JobReturn:
        """One job, as Hydra's basic launcher runs it: its config composed with its overrides, in its sub-folder."""
        from hydra.core.utils import run_job

        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


# ---- helpers --------------------------------------------------------------------------------------------------


def _run_job(job_num: int, run: Callable[[], JobReturn]) -> JobReturn:
    """Run one job (``run``: Hydra's ``run_job``, as the launcher calls it) and say how it ended: its ``JobReturn``
    when it completed; its exception, raised again, when it failed (Hydra keeps it in the ``JobReturn``: a submitit
    job would exit 0 and SLURM say COMPLETED); ``JobInterrupted`` when Ctrl-C stopped it."""
    try:
        result = run()
    except KeyboardInterrupt as stop:  # Hydra's job set-up (stereo_exp.__main__ handles the training's), an evaluation
        signum = getattr(stop, "signum", signal.SIGINT)  # cli.Interrupted: SIGTERM or a hang-up of an evaluation
        quiet_half_built_objects()  # the sweep ends: its summary without the noise of what the stop left half-built
        raise JobInterrupted(f"Interrupted ({stop_name(signum)}) without a checkpoint", signum) from None
    except SystemExit as stop:
        # stereo_exp.__main__ ends a run stopped by a signal with exit code 128 + its number, caused by the trainer's
        # Preempted after its checkpoint; exit code 130 without a cause was a second Ctrl-C, or one before the
        # training began. Any other SystemExit is submitit's requeue or an ending of its own. In a SLURM job any other
        # signal (SIGTERM: scancel, preemption, `scontrol requeue`) may be followed by SLURM's own requeue: the job
        # leaves through SystemExit, which writes no result file, so that the submitter reads the requeued attempt's
        # (else SlurmSweepLauncher._states lists it from sacct and its log).
        from stereo_exp.engine.trainer import Preempted  # loaded already: the job trained

        stopped = stop.__cause__ if isinstance(stop.__cause__, Preempted) else None
        in_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        if stopped is not None and (stopped.signum == signal.SIGINT or not in_slurm):
            raise JobInterrupted(str(stopped), stopped.signum) from None
        if stopped is None and stop.code == 128 + signal.SIGINT:
            raise JobInterrupted("Interrupted (Ctrl-C) without writing a checkpoint") from None
        raise
    if result.status == JobStatus.FAILED:
        error = result._return_value
        # The traceback into the run folder's log (Hydra's job logging is still set up), the cause to the console
        # (the terminal of a sequential sweep; a submitit job's stderr, which gets submitit's traceback too).
        where = report_failure(error, f"Job #{job_num}")
        log.error("Job #%d failed%s: %s", job_num, where, cause(error))
        drop_failed_run(error)  # else its DataLoader's worker processes keep the job (or the next one) from ending
        raise error
    return result


def _check_job(config: Any) -> None:
    """A job's checks before anything of it is written, as a single run makes them: a training's
    (``engine.preflight.check_run``: datasets under ``paths.data``, weights, schedule length, crop size), an
    evaluation's (``evaluate.check_evaluation``: datasets, weights file)."""
    from stereo_exp.config import Config
    from stereo_exp.evaluation.config import EvaluateConfig

    if isinstance(config, Config):
        from stereo_exp.engine.preflight import check_run

        check_run(config)
    elif isinstance(config, EvaluateConfig):
        from stereo_exp.evaluate import check_evaluation

        check_evaluation(config)


def _http(tracking: Any) -> Any:
    from stereo_exp.tracking.mlflow_io import http_settings

    return http_settings(
        timeout_s=tracking.http_timeout_s,
        max_retries=tracking.http_max_retries,
        backoff_factor=tracking.http_backoff_factor,
    )


def _label(config: Any) -> str:
    """What runs, for the SLURM job name: the experiment file, else the model."""
    choices = config.hydra.runtime.choices
    return str(choices.get("experiment") or choices.get("model") or "train")


def _run_name(sweep: SweepInfo, overrides: Sequence[str]) -> str:
    """One job's run name: its swept values, e.g. ``decay_after_steps=0 clip_grad_norm=1.0``."""
    from stereo_exp.tracking.sweep import SweepInfo, plain_override

    job = SweepInfo(sweep.sweep_id, sweep.sweep_dir, 0, "", tuple(plain_override(o) for o in overrides), sweep.plan)
    return job.run_name() or " ".join(job.overrides) or "(no overrides)"


def _partition_nodes(partition: str | None) -> list[tuple[str, int, int]]:
    """(partition, CPUs, GPUs) of each node of ``partition`` (None: the default partition), from sinfo."""
    listed = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%G"], capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        raise LaunchError(f"sinfo failed: {_last_line(listed.stderr)} (is SLURM_CONF set, is the cluster up?)")
    rows = [line.split("|") for line in listed.stdout.splitlines() if line.count("|") == 2]
    if partition is None:
        chosen = [row for row in rows if row[0].endswith("*")] or rows
    else:
        chosen = [row for row in rows if row[0].rstrip("*") == partition]
    if not chosen:
        names = ", ".join(sorted({name.rstrip("*") for name, _, _ in rows})) or "none"
        raise LaunchError(f"hydra.launcher.partition={partition}: no such SLURM partition (sinfo lists: {names})")
    return [(name.rstrip("*"), int(cpus), _gpus(gres)) for name, cpus, gres in chosen]


def _gpus(gres: str) -> int:
    """GPUs in a sinfo gres field: ``gpu:8``, ``gpu:a100:4(S:0-1)``, ``(null)``."""
    return sum(int(count) for count in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _job_log(sweep_dir: Any, num: int) -> Path:
    """A job's own log: Hydra's job log in its folder (``hydra.sweep.subdir``: the job number)."""
    return Path(str(sweep_dir)) / str(num) / "__main__.log"


def _stop_message(log_file: Path) -> str | None:
    """The last "Received SIGTERM: checkpoint written at step N; exiting." of a job's log (stereo_exp.__main__)."""
    try:
        found = re.findall(r"(Received SIG\w+: checkpoint written at step \d+; exiting\.)", log_file.read_text())
    except OSError:
        return None
    return found[-1] if found else None


def _job_error(text: str) -> str:
    """The exception line of a failed job's traceback (submitit's error text holds the whole traceback)."""
    lines = [line for line in text.splitlines() if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b.*", line)]
    line = lines[-1] if lines else _last_line(text)
    return re.sub(r"^(\w+\.)+(?=\w+:)", "", line)[:300]  # stereo_exp.engine.trainer.NonFiniteLossError -> NonF...


def _summarise_in_mlflow(
    record: SweepRecord, tracking: Any, sweep: SweepInfo, outcomes: list[JobOutcome]
) -> tuple[dict[int, Any], str | None, str]:
    """Read the sweep's runs; attach the ranked table and the plot of its key metric to the parent run, with the
    table in its description; close the runs of ended jobs still RUNNING (FAILED, or KILLED when interrupted) and the
    parent (FAILED when a job failed, KILLED when one was interrupted).
    Returns (runs by job number, metric, a note for the summary)."""
    from stereo_exp.tracking.comparison import compare, default_metric, markdown_table, runs_to_compare
    from stereo_exp.tracking.mlflow_io import open_client
    from stereo_exp.tracking.sweep import JOB_NUM_TAG, NOTE_TAG, sweep_description, sweep_status

    with _http(tracking):
        client = open_client(record.tracking_uri, create=False)
        found = runs_to_compare(client, record.experiment_id, record.sweep_id)
        runs = {int(run.data.tags[JOB_NUM_TAG]): run for run in found}
        for outcome in outcomes:  # killed (SIGKILL, out of memory, a lost node): the job could not close its run
            run = runs.get(outcome.num)
            if outcome.error and run is not None and run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED" if outcome.interrupted else "FAILED")
                runs[outcome.num] = client.get_run(run.info.run_id)
        metric = default_metric(found)
        started = [outcome for outcome in outcomes if outcome.state != NOT_STARTED]
        missing = ", ".join(f"#{outcome.num}" for outcome in started if outcome.num not in runs)
        note = ""
        if missing:
            note = (
                f"MLflow has no run of job {missing}: it ended before making one, or its records wait in its run "
                f"folder (python -m stereo_exp.tracking.sync {sweep.sweep_dir})"
            )
        if record.parent_run_id is None:
            return runs, metric, note
        table = ""
        with tempfile.TemporaryDirectory() as folder:
            try:
                result = compare(
                    client,
                    experiment=record.experiment,
                    sweep=record.sweep_id,
                    metric=metric,
                    mode="min",
                    output=Path(folder),
                )
            except ValueError:  # no run logged a metric
                result = None
            if result is not None:
                table = markdown_table(result)
                client.log_artifacts(record.parent_run_id, folder, "sweep_summary")
        client.set_tag(record.parent_run_id, NOTE_TAG, sweep_description(sweep, table))
        # KILLED: as MLflow calls a run ended by Ctrl-C; the sweep's resumption finishes it.
        ends = [
            "FAILED" if o.failed else "KILLED" if o.interrupted or o.state == NOT_STARTED else "FINISHED"
            for o in outcomes
        ]
        client.set_terminated(record.parent_run_id, status=sweep_status(ends))
    return runs, metric, note
