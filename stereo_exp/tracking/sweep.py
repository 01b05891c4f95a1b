"""MLflow records of a Hydra multirun (a sweep): what is swept, the runs' names and tags, one parent run per sweep,
a shared view of the MLflow UI, and the sweep folder's record of where its runs went.

Every job of ``python -m stereo_exp -m ...`` (basic, submitit-local or SLURM launcher) becomes one MLflow run,

    named by what differs   e.g. ``decay_after_steps=0 clip_grad_norm=1.0`` (the swept overrides, short keys)
    mlflow.parentRunId      the sweep's parent run (only when the sweep has more than one job)
    stereo_exp.sweep_id     a short id of the sweep (from its directory), for ``python -m stereo_exp.compare --sweep``
    stereo_exp.sweep_dir    the sweep directory (hydra.sweep.dir, absolute)
    stereo_exp.job_num      hydra.job.num: the point's index in the sweep
    stereo_exp.job_id       hydra.job.id: the launcher's id of the job (SLURM: ARRAYID_INDEX, e.g. 4512_3)
    stereo_exp.overrides    hydra.overrides.task: this job's command-line overrides, space separated, unescaped

What is swept comes from the sweep folder's ``multirun.yaml`` (Hydra writes it before launching any job): the
overrides with several values, on the command line or in ``hydra.sweeper.params``. The sweep directory identifies
a sweep: every job shares it, a requeued job finds it again, and two sweeps never share it.

The parent run is created once although the jobs start together, on several nodes: by the submitting process
(stereo_exp/launcher.py) before any job starts, or else by the first job that creates
``<sweep dir>/.mlflow_sweep_<key>.lock`` (``O_CREAT | O_EXCL``, atomic on local and NFS file systems). That
process also stores a shared view of the UI in the experiment (filter: this sweep's jobs; columns: the swept keys
and the validation metrics) and writes ``.mlflow_sweep_<key>.json`` (``SweepRecord``: store, experiment, parent,
view), which the other jobs wait for (``tracking.parent_wait_s``) and ``compare --sweep DIR`` reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stereo_exp.tracking.addresses import experiment_url, resolve_uri

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests runs under this run
NOTE_TAG = "mlflow.note.content"  # MLflow's own tag: a run's description (markdown) on its page
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's own experiment tags: views opened by ?viewStateShareKey=KEY
SWEEP_ID_TAG = "stereo_exp.sweep_id"
SWEEP_DIR_TAG = "stereo_exp.sweep_dir"
JOB_NUM_TAG = "stereo_exp.job_num"
JOB_ID_TAG = "stereo_exp.job_id"
OVERRIDES_TAG = "stereo_exp.overrides"
ROLE_TAG = "stereo_exp.role"  # "sweep" on parent runs
SWEEP_ROLE = "sweep"
RECORD_PREFIX = ".mlflow_sweep_"  # <sweep dir>/.mlflow_sweep_<key>.json (and .lock)
_POLL_S = 0.5  # how often a waiting job looks for the sweep record


def sweep_id_of(sweep_dir: str | os.PathLike[str]) -> str:
    """The id of the sweep whose directory is ``sweep_dir``: 12 hex digits of the SHA-256 of its absolute path."""
    return hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


def plain_override(override: str) -> str:
    """An override as the user means it: Hydra keeps ``tracking.uri=http\\://host`` escaped in its records."""
    return re.sub(r"\\(.)", r"\1", override)


def validation_metrics(eval_datasets: Any) -> list[str]:
    """The metrics that compare runs: ``val/<dataset>/mae`` of each validation set, the first (held-out) one
    first. It is the sweep's key metric: what ``compare`` plots by default and the parent run's table ranks."""
    return [f"val/{name}/mae" for name in (eval_datasets or [])]


@dataclass(frozen=True)
class SweepPlan:
    """What a multirun sweeps: each swept key with its values (in Hydra's order) and the number of jobs."""

    values: dict[str, list[str]] = field(default_factory=dict)  # key -> values, e.g. {"optim.clip_grad_norm": ...}
    num_jobs: int | None = None  # None when a sweep cannot be counted here (glob over config groups)

    @classmethod
    def from_config(cls, multirun_cfg: Any) -> SweepPlan:
        """The plan of a multirun config: ``hydra.sweeper.params`` overridden by the command line, as Hydra's
        basic sweeper reads them. Keys of a single value are not swept."""
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        hydra_cfg = multirun_cfg.hydra
        lines = [f"{key}={value}" for key, value in (hydra_cfg.sweeper.get("params") or {}).items()]
        lines += [str(line) for line in hydra_cfg.overrides.task]
        by_key = {}
        for override in OverridesParser.create().parse_overrides(lines):  # a later value of a key replaces it
            by_key[override.get_key_element().lstrip("+~")] = override
        values: dict[str, list[str]] = {}
        countable = True
        for key, override in by_key.items():
            if not override.is_sweep_override():
                continue
            try:
                values[key] = [plain_override(v) for v in override.sweep_string_iterator()]
            except HydraException:  # glob(...) needs Hydra's config loader to expand
                values[key], countable = [plain_override(str(override.input_line).partition("=")[2])], False
        swept = {key: options for key, options in values.items() if len(options) > 1 or not countable}
        num_jobs = math.prod(len(options) for options in values.values()) if countable else None
        return cls(values=swept, num_jobs=num_jobs)

    @classmethod
    def from_sweep_dir(cls, sweep_dir: Path) -> SweepPlan:
        """The plan recorded in ``<sweep dir>/multirun.yaml``; an empty plan of unknown size when it is missing."""
        from omegaconf import OmegaConf

        path = sweep_dir / "multirun.yaml"
        return cls.from_config(OmegaConf.load(path)) if path.is_file() else cls()

    def short_keys(self) -> dict[str, str]:
        """Each swept key's shortest unambiguous name: its last part (``clip_grad_norm``) unless two keys share it."""
        last = {key: key.rsplit(".", 1)[-1] for key in self.values}
        repeated = {name for name in last.values() if list(last.values()).count(name) > 1}
        return {key: key if name in repeated else name for key, name in last.items()}


@dataclass(frozen=True)
class SweepInfo:
    """Where one job sits in its multirun (all JSON-serialisable, so an offline spool can carry it)."""

    sweep_id: str  # sweep_id_of(sweep_dir)
    sweep_dir: str  # absolute hydra.sweep.dir
    job_num: int  # hydra.job.num
    job_id: str  # hydra.job.id
    overrides: tuple[str, ...]  # hydra.overrides.task, unescaped
    plan: SweepPlan = field(default_factory=SweepPlan)  # what the sweep varies

    @classmethod
    def from_hydra(cls) -> SweepInfo | None:
        """This job's place in the current Hydra multirun; None in a single run or outside Hydra."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
        if not sweep_dir.is_absolute():  # relative to where the multirun was started (before any chdir)
            sweep_dir = Path(hydra_cfg.runtime.cwd) / sweep_dir
        sweep_dir = sweep_dir.resolve()
        return cls(
            sweep_id=sweep_id_of(sweep_dir),
            sweep_dir=str(sweep_dir),
            job_num=int(hydra_cfg.job.num),
            job_id=str(hydra_cfg.job.get("id", "")),
            overrides=tuple(plain_override(str(o)) for o in hydra_cfg.overrides.task),
            plan=SweepPlan.from_sweep_dir(sweep_dir),
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepInfo:
        plan = SweepPlan(**values["plan"]) if values.get("plan") else SweepPlan()
        return cls(**{**values, "overrides": tuple(values["overrides"]), "plan": plan})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overrides": list(self.overrides)}

    @property
    def has_parent(self) -> bool:
        """Whether this job's run is nested under a sweep parent run: not when the multirun has a single job."""
        return self.plan.num_jobs is None or self.plan.num_jobs > 1

    def swept(self) -> dict[str, str]:
        """This job's values of the swept keys, in the plan's order, e.g. {"optim.clip_grad_norm": "1.0"}."""
        mine = {}
        for override in self.overrides:
            key, _, value = override.partition("=")
            mine[key.lstrip("+~")] = value
        return {key: mine[key] for key in self.plan.values if key in mine}

    def run_name(self) -> str | None:
        """The run's name: what differs from the sweep's other runs, e.g. ``decay_after_steps=0 clip_grad_norm=1.0``
        (None when nothing is swept)."""
        short = self.plan.short_keys()
        return " ".join(f"{short[key]}={value}" for key, value in self.swept().items()) or None

    def tags(self) -> dict[str, str]:
        """Tags of this job's run (the parent run's id is added when it is known)."""
        return {
            SWEEP_ID_TAG: self.sweep_id,
            SWEEP_DIR_TAG: self.sweep_dir,
            JOB_NUM_TAG: str(self.job_num),
            JOB_ID_TAG: self.job_id,
            OVERRIDES_TAG: " ".join(self.overrides),
        }

    @property
    def parent_name(self) -> str:
        """The parent run's name: ``sweep <last two parts of the sweep dir>: <swept keys>``, e.g.
        ``sweep 2026-11-24/21-45-10: decay_after_steps x clip_grad_norm``."""
        name = "sweep " + "/".join(Path(self.sweep_dir).parts[-2:])
        keys = " x ".join(self.plan.short_keys().values())
        return f"{name}: {keys}" if keys else name


def command_run_name(name: str, sweep: SweepInfo | None) -> str:
    """The run name of an evaluate or eda command, ``name`` (``eval <model> <datasets>``), followed in a sweep by
    what its job varies: the one thing that tells the sweep's runs apart."""
    swept = sweep.run_name() if sweep is not None else None
    return f"{name} {swept}" if swept else name


def default_run_name(sweep: SweepInfo | None) -> str | None:
    """A run's name when ``tracking.run_name`` is null: in a sweep, what it varies (``SweepInfo.run_name``);
    otherwise the experiment file, or ``<model>-<mix>-<schedule>``, of Hydra's choices. None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if sweep is not None and (name := sweep.run_name()):
        return name
    if not HydraConfig.initialized():
        return None  # tests calling train(cfg) directly
    choices = HydraConfig.get().runtime.choices
    if choices.get("experiment"):
        return str(choices["experiment"])
    return "-".join(str(choices.get(group)) for group in ("model", "mix", "schedule"))


# ---- the sweep's record: store, experiment, parent run, UI view --------------------------------------------------


@dataclass(frozen=True)
class SweepRecord:
    """Where the runs of a sweep went (``<sweep dir>/.mlflow_sweep_<key>.json``)."""

    tracking_uri: str  # absolute (a SQLite file's path resolved)
    experiment: str
    experiment_id: str
    sweep_id: str
    parent_run_id: str | None  # None for a one-job multirun
    view: str  # key of the experiment's shared UI view of this sweep (experiment_url(..., view=view))

    def experiment_url(self) -> str:
        return experiment_url(self.tracking_uri, self.experiment_id, view=self.view)


def record_files(sweep_dir: str | os.PathLike[str]) -> list[Path]:
    """The sweep records in ``sweep_dir`` (one per MLflow store and experiment the sweep logged to)."""
    return sorted(Path(sweep_dir).glob(f"{RECORD_PREFIX}*.json"))


def read_record(path: Path) -> SweepRecord | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, TypeError):
        return SweepRecord(**json.loads(path.read_text()))
    return None


def register_sweep(
    client: Any, experiment: str, experiment_id: str, sweep: SweepInfo, *, metrics: list[str], wait_s: float
) -> SweepRecord:
    """The sweep's record in ``experiment_id``: written by exactly one of the processes that ask at once (the
    submitter, or the first job), which also creates the parent run and the UI view. The others wait for it.

    Args:
        client: an ``MlflowClient``.
        experiment, experiment_id: the experiment of the sweep's runs (the parent lives there too).
        sweep: any job's ``SweepInfo`` (the submitter makes one for the sweep); its directory holds the record.
        metrics: the validation metrics to show as columns, the key metric first (``validation_metrics``).
        wait_s: seconds to wait for the process that holds the lock before looking the parent up by its tags.
    """
    uri = resolve_uri(str(client.tracking_uri))
    sweep_dir = Path(sweep.sweep_dir)
    stem = RECORD_PREFIX + hashlib.sha256(f"{uri}|{experiment_id}".encode()).hexdigest()[:8]
    path, lock = sweep_dir / f"{stem}.json", sweep_dir / f"{stem}.lock"
    if (record := read_record(path)) is not None:
        return record
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:  # another process registers it: wait for its record
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if (record := read_record(path)) is not None:
                return record
            time.sleep(_POLL_S)
        log.warning(
            "MLflow: no sweep record %s after %.0f s (the process holding %s may have died); looking the parent "
            "run up by its tags.",
            path,
            wait_s,
            lock.name,
        )
    parent = None
    if sweep.has_parent:
        parent = _find_parent(client, experiment_id, sweep.sweep_id) or _create_parent(client, experiment_id, sweep)
    view = f"sweep-{sweep.sweep_id}"
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + view, json.dumps(_view_state(sweep, metrics)))
    record = SweepRecord(
        tracking_uri=uri,
        experiment=experiment,
        experiment_id=experiment_id,
        sweep_id=sweep.sweep_id,
        parent_run_id=parent,
        view=view,
    )
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    os.replace(tmp, path)  # readers see the whole file or none
    return record


def _view_state(sweep: SweepInfo, metrics: list[str]) -> dict[str, Any]:
    """The MLflow UI's experiment view of this sweep (what its "Share" button stores): the jobs of this sweep only
    (the parent has no job number), ranked by the key metric, with the swept keys and the metrics as columns; in
    the chart view (``&compareRunsMode=CHART``) the key metric's chart."""
    columns = [f"params.`{key}`" for key in sweep.plan.values] + [f"metrics.`{name}`" for name in metrics]
    return {
        "searchFilter": f"tags.`{SWEEP_ID_TAG}` = '{sweep.sweep_id}' and tags.`{JOB_NUM_TAG}` != ''",
        "orderByKey": f"metrics.`{metrics[0]}`" if metrics else "attributes.start_time",
        "orderByAsc": bool(metrics),  # errors: the lowest first
        "selectedColumns": columns,
        "chartsSearchFilter": metrics[0] if metrics else "",
    }


def _find_parent(client: Any, experiment_id: str, sweep_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _create_parent(client: Any, experiment_id: str, sweep: SweepInfo) -> str:
    """The parent run: the swept keys as params (their values, comma separated) and a description."""
    from mlflow.entities import Param

    tags = {
        SWEEP_ID_TAG: sweep.sweep_id,
        SWEEP_DIR_TAG: sweep.sweep_dir,
        ROLE_TAG: SWEEP_ROLE,
        NOTE_TAG: sweep_description(sweep),
    }
    run = client.create_run(experiment_id, run_name=sweep.parent_name, tags=tags)
    params = [Param(key, ",".join(values)) for key, values in sweep.plan.values.items()]
    if params:
        client.log_batch(run.info.run_id, params=params)
    log.info("MLflow: created parent run %s for sweep %s (%s)", run.info.run_id, sweep.sweep_id, sweep.sweep_dir)
    return run.info.run_id


def sweep_description(sweep: SweepInfo, table: str = "") -> str:
    """The parent run's description (markdown): what is swept, where, and (once the sweep ended) its table."""
    jobs = f"{sweep.plan.num_jobs} jobs" if sweep.plan.num_jobs else "jobs"
    lines = [f"Sweep of {jobs} in `{sweep.sweep_dir}` (id `{sweep.sweep_id}`), swept:", ""]
    lines += [f"- `{key}`: {', '.join(values)}" for key, values in sweep.plan.values.items()]
    lines += ["", f"Compare: `python -m stereo_exp.compare --sweep {sweep.sweep_dir}`"]
    if table:
        lines += ["", table]
    return "\n".join(lines)


# ---- the parent run's status: that of the sweep's runs --------------------------------------------------------------


def sweep_status(statuses: Iterable[str]) -> str:
    """The status of a sweep from those of its jobs' runs, as the parent run shows it: RUNNING while any job runs
    (a requeued job's run stays RUNNING), else FAILED when one failed, KILLED when one was stopped (resumable), else
    FINISHED."""
    statuses = set(statuses)
    for status in ("RUNNING", "FAILED", "KILLED"):
        if status in statuses:
            return status
    return "FINISHED"


def settle_parent(client: Any, run_id: str, end_time: int | None = None) -> None:
    """After job run ``run_id`` started, resumed or ended: give its sweep's parent run the status of the runs under
    it (``sweep_status``). Done by every job, so that the parent is right when the submitter is gone (a SLURM sweep
    left with Ctrl-C); jobs not started yet have no run and do not count. Of two jobs ending together, the later
    one's search sees both ends. A run outside a sweep: nothing to do."""
    run = client.get_run(run_id)
    parent = run.data.tags.get(PARENT_RUN_TAG)
    if not parent:
        return
    siblings = search_all_runs(client, run.info.experiment_id, f"tags.`{PARENT_RUN_TAG}` = '{parent}'")
    status = sweep_status(sibling.info.status for sibling in siblings)
    if status == "RUNNING":
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")
    else:
        client.set_terminated(parent, status=status, end_time=end_time)


def search_all_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run of ``experiment_id`` that matches ``filter_string``, page after page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
