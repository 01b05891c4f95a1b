"""MLflow grouping of the jobs of one Hydra multirun (a sweep): tags, and one parent run per sweep.

Every job of ``python -m stereo_exp -m ...`` (basic, submitit-local or SLURM launcher) becomes one MLflow run with

    mlflow.parentRunId      the sweep's parent run: the MLflow UI nests the jobs under it, side by side
    stereo_exp.sweep_id     a short id of the sweep (from its directory), for ``python -m stereo_exp.compare --sweep``
    stereo_exp.sweep_dir    the sweep directory (hydra.sweep.dir, absolute)
    stereo_exp.job_num      hydra.job.num: the point's index in the sweep
    stereo_exp.job_id       hydra.job.id: the launcher's id of the job (SLURM: ARRAYID_INDEX, e.g. 4512_3)
    stereo_exp.overrides    hydra.overrides.task: this job's command-line overrides, space separated

The sweep directory identifies a sweep: every job of a sweep shares it, a requeued job finds it again, and two
sweeps never share it (the default is multirun/<date>/<time>).

The parent run is created once per sweep although the jobs start concurrently, on several nodes: the first job
that creates ``<sweep dir>/.mlflow_parent_<key>.lock`` (``O_CREAT | O_EXCL``, atomic on local and NFS file systems)
creates or finds the run and writes its id to ``.mlflow_parent_<key>.json``; the others wait for that file. If it
does not appear within ``tracking.parent_wait_s`` (the first job died in between), a job looks the parent up by its
tags and creates it only if there is none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests runs under this run
SWEEP_ID_TAG = "stereo_exp.sweep_id"
SWEEP_DIR_TAG = "stereo_exp.sweep_dir"
JOB_NUM_TAG = "stereo_exp.job_num"
JOB_ID_TAG = "stereo_exp.job_id"
OVERRIDES_TAG = "stereo_exp.overrides"
ROLE_TAG = "stereo_exp.role"  # "sweep" on parent runs
SWEEP_ROLE = "sweep"
_POLL_S = 0.5  # how often a waiting job looks for the parent-run file


def sweep_id_of(sweep_dir: str | os.PathLike[str]) -> str:
    """The id of the sweep whose directory is ``sweep_dir``: 12 hex digits of the SHA-256 of its absolute path."""
    return hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SweepInfo:
    """Where one job sits in its multirun (all JSON-serialisable, so an offline spool can carry it)."""

    sweep_id: str  # sweep_id_of(sweep_dir)
    sweep_dir: str  # absolute hydra.sweep.dir
    job_num: int  # hydra.job.num
    job_id: str  # hydra.job.id
    overrides: tuple[str, ...]  # hydra.overrides.task

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
            overrides=tuple(str(o) for o in hydra_cfg.overrides.task),
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepInfo:
        return cls(**{**values, "overrides": tuple(values["overrides"])})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overrides": list(self.overrides)}

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
        """The parent run's name: ``sweep <last two parts of the sweep dir>``, e.g. ``sweep 2026-11-24/21-45-10``."""
        return "sweep " + "/".join(Path(self.sweep_dir).parts[-2:])


def get_or_create_parent_run(client: Any, experiment_id: str, sweep: SweepInfo, *, wait_s: float) -> str:
    """The id of the sweep's parent run in ``experiment_id``, created by exactly one of the sweep's jobs.

    Args:
        client: an ``MlflowClient``.
        experiment_id: the experiment of the sweep's runs (the parent lives there too).
        sweep: this job's ``SweepInfo``; its sweep directory holds the lock and the id file.
        wait_s: seconds to wait for the job that holds the lock before looking the parent up by its tags.
    """
    sweep_dir = Path(sweep.sweep_dir)
    key = hashlib.sha256(f"{client.tracking_uri}|{experiment_id}".encode()).hexdigest()[:8]
    id_file, lock_file = sweep_dir / f".mlflow_parent_{key}.json", sweep_dir / f".mlflow_parent_{key}.lock"
    if (run_id := _read_id(id_file)) is not None:
        return run_id
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:  # another job creates it: wait for its id file
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if (run_id := _read_id(id_file)) is not None:
                return run_id
            time.sleep(_POLL_S)
        log.warning(
            "MLflow: no parent run id in %s after %.0f s (the job holding %s may have died); looking it up by tag.",
            id_file, wait_s, lock_file.name,
        )  # fmt: skip
    run_id = _find_parent(client, experiment_id, sweep.sweep_id) or _create_parent(client, experiment_id, sweep)
    tmp = id_file.with_name(f"{id_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "tracking_uri": client.tracking_uri, "experiment_id": experiment_id}))
    os.replace(tmp, id_file)  # readers see the whole file or none
    return run_id


def _read_id(id_file: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
        return str(json.loads(id_file.read_text())["run_id"])
    return None


def _find_parent(client: Any, experiment_id: str, sweep_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _create_parent(client: Any, experiment_id: str, sweep: SweepInfo) -> str:
    tags = {SWEEP_ID_TAG: sweep.sweep_id, SWEEP_DIR_TAG: sweep.sweep_dir, ROLE_TAG: SWEEP_ROLE}
    run = client.create_run(experiment_id, run_name=sweep.parent_name, tags=tags)
    log.info("MLflow: created parent run %s for sweep %s (%s)", run.info.run_id, sweep.sweep_id, sweep.sweep_dir)
    return run.info.run_id
