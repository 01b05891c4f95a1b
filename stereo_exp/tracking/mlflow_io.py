"""Talking to MLflow: opening a store, one tracker record -> ``MlflowClient`` calls, which errors mean
"unreachable", HTTP settings (the addresses of stores and of the UI: addresses.py).

The tracker describes everything it sends as a small JSON-serialisable record, so that the same record is either
applied at once or, while MLflow cannot be reached, appended to the run's spool and applied later by
``stereo_exp.tracking.sync``. Records (``run`` is an MLflow run id or an offline placeholder, see ``OFFLINE_PREFIX``;
spooled records also keep the ``uri`` they were meant for):

    {"op": "create_run", "run", "experiment", "run_name", "tags", "start_time", "sweep": SweepInfo dict | null,
     "metrics": [the validation metrics a sweep's UI view shows]}
    {"op": "continue_run", "run"}                      status back to RUNNING (a resumed run; its sweep's parent too)
    {"op": "params", "run", "params": {key: str}}
    {"op": "tags", "run", "tags": {key: str}}
    {"op": "metrics", "run", "step", "timestamp", "metrics": {key: float}}
    {"op": "artifact", "run", "path", "artifact_path"}  a local file, absolute path
    {"op": "terminate", "run", "status", "end_time"}   the sweep's parent ends with its last running job
                                                       (``sweep.settle_parent``)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stereo_exp.tracking.addresses import sqlite_path
from stereo_exp.tracking.sweep import PARENT_RUN_TAG, SweepInfo, register_sweep, settle_parent

OFFLINE_PREFIX = "offline-"  # placeholder run ids of runs created while MLflow was unreachable
# MLflow's limits: 100 params and 1000 metrics per log_batch call.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# MLflow error codes of answers that mean "not now" (HTTP 503 and 429) rather than "not this request".
_TRANSIENT_ERROR_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
# OS errors of a store that cannot be written now (a full, read-only or forbidden disk): keep the records.
_UNWRITABLE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)
# The MLflow 3 UI opens experiments of this kind on their training runs, not on the GenAI traces page.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


class StoreNotFound(FileNotFoundError):
    """A lookup (compare) found no MLflow store at the URI; nothing was created."""


class StoreUnavailable(ConnectionError):
    """A local store that cannot be opened or written now: a SQLite file that is locked, read-only, not a database,
    or in a folder that cannot be created. Like an unreachable server (``is_unreachable``), the records wait."""


def open_client(uri: str, *, create: bool = True) -> Any:
    """An ``MlflowClient`` whose store is ready to use.

    Opening a SQLite store creates its tables (or migrates them) the first time. Several processes doing that at
    once break the file ("table _alembic_tmp_metrics already exists": the jobs of a sweep starting together), so it
    happens under a lock on the database's folder, one process at a time. ``create=False`` (a lookup: compare)
    never creates a store: it raises ``StoreNotFound`` instead of leaving an empty database behind.
    """
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path is None:
        if not create and _local_store_missing(uri):
            raise StoreNotFound(f"no MLflow store at {uri}")
        return MlflowClient(tracking_uri=uri)
    if not create:
        if not path.is_file():
            raise StoreNotFound(f"no MLflow store at {uri} (no file {path.resolve()})")
        return MlflowClient(tracking_uri=uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreUnavailable(f"cannot create the folder of {path}: {error}") from error
    with _folder_lock(path.parent):
        _check_writable(path)
        return MlflowClient(tracking_uri=uri)


def _check_writable(path: Path, timeout_s: float = 20.0) -> None:
    """Open the SQLite file and take its write lock once (then let go), with Python's own sqlite3: MLflow retries
    a database it cannot open for minutes (10 attempts, exponential back-off) before it gives up."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=timeout_s, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
    except sqlite3.Error as error:
        raise StoreUnavailable(f"SQLite store {path}: {error}") from error


def _local_store_missing(uri: str) -> bool:
    """True for a file store (``file:///DIR`` or a plain path) whose folder does not exist."""
    if uri.startswith("file:"):
        return not Path(uri.removeprefix("file://")).is_dir()
    return "://" not in uri and not Path(uri).is_dir()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` while the block runs (no lock file left behind). Where the file system
    cannot lock a folder (some NFS mounts), the block runs unlocked: sweeps open the store once before their jobs
    start (stereo_exp/launcher.py), so the jobs find it ready."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


@contextlib.contextmanager
def http_settings(*, timeout_s: int, max_retries: int, backoff_factor: int) -> Iterator[None]:
    """MLflow's HTTP client settings for the calls inside the block (MLflow reads them from the environment at
    each request). Its defaults (timeout 120 s, 7 retries, backoff factor 2) make one call to a dead server block
    for about 4 minutes; the environment is restored afterwards, so nothing leaks to other code."""
    values = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(backoff_factor),
    }
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    # urllib3 logs a warning for every retry; the tracker's own single warning says what happened.
    retries_log = logging.getLogger("urllib3.connectionpool")
    saved_level = retries_log.level
    retries_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries_log.setLevel(saved_level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def describe(error: BaseException) -> str:
    """A one-line reason for a failed call: the OS error if there is one ("[Errno 111] Connection refused")."""
    text = str(error)
    if match := re.search(r"\[Errno -?\d+\][^'\")]*", text):
        return match.group(0).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def is_unreachable(error: BaseException) -> bool:
    """True when ``error`` means "MLflow cannot be reached now" (worth keeping the record and retrying later):
    a refused or timed-out connection, server errors that outlasted MLflow's own retries, "temporarily unavailable"
    (503) or rate limited (429), a locked, read-only or unreachable database, a full or read-only disk. False for
    requests MLflow refuses on their merits (bad value, unknown run, a missing artifact file): retrying them would
    fail again.
    """
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # the error and its causes
        seen.add(id(current))
        if isinstance(current, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        if isinstance(current, requests.exceptions.RetryError | requests.exceptions.ChunkedEncodingError):
            return True
        # SQLite "database is locked" / "attempt to write a readonly database" / "unable to open database file",
        # a database server that is down.
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlite3.OperationalError):
            return True
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if isinstance(current, OSError) and current.errno in _UNWRITABLE_ERRNOS:
            return True
        if isinstance(current, MlflowException) and current.error_code in _TRANSIENT_ERROR_CODES:
            return True
        current = current.__cause__ or current.__context__
    return False


def server_answers(uri: str, timeout_s: float) -> bool:
    """Whether the tracking server answers ``GET /health`` now (always True for non-HTTP stores: try and see)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def get_or_create_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing (concurrent jobs may race to create it) as an experiment
    of training runs (the MLflow 3 UI then opens it on its runs)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # another job created it meanwhile


def last_logged_steps(client: Any, run_id: str) -> dict[str, int]:
    """``{metric key: last step}`` of what MLflow already holds for ``run_id`` (a resumed run replays steps)."""
    return {
        key: max(m.step for m in client.get_metric_history(run_id, key)) for key in client.get_run(run_id).data.metrics
    }


def apply_record(client: Any, record: Mapping[str, Any], run_ids: dict[str, str], *, parent_wait_s: float) -> str:
    """Perform ``record`` with ``client``; returns the MLflow run id it concerned.

    ``run_ids`` maps offline placeholders to MLflow run ids; a ``create_run`` record adds its own mapping.
    """
    from mlflow.entities import Metric, Param, RunTag

    op = record["op"]
    if op == "create_run":
        experiment_id = get_or_create_experiment(client, record["experiment"])
        tags = dict(record["tags"])
        if record.get("sweep"):
            sweep = SweepInfo.from_dict(record["sweep"])
            tags.update(sweep.tags())
            registered = register_sweep(
                client,
                record["experiment"],
                experiment_id,
                sweep,
                metrics=list(record.get("metrics") or []),
                wait_s=parent_wait_s,
            )
            if registered.parent_run_id is not None:
                tags[PARENT_RUN_TAG] = registered.parent_run_id
        run = client.create_run(
            experiment_id, start_time=record.get("start_time"), tags=tags, run_name=record.get("run_name")
        )
        run_ids[record["run"]] = run.info.run_id
        settle_parent(client, run.info.run_id)  # a sweep resumed after it ended runs again
        return run.info.run_id

    run_id = run_ids.get(record["run"], record["run"])
    if run_id.startswith(OFFLINE_PREFIX):
        raise ValueError(f"record for run {run_id} comes before the record that creates it")
    if op == "continue_run":
        client.update_run(run_id, status="RUNNING")
        settle_parent(client, run_id)
    elif op == "params":
        items = [Param(k, str(v)) for k, v in record["params"].items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
    elif op == "metrics":
        timestamp, step = int(record["timestamp"]), int(record["step"])
        items = [Metric(k, float(v), timestamp, step) for k, v in record["metrics"].items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=items[i : i + METRICS_PER_BATCH])
    elif op == "artifact":
        if not os.path.isfile(record["path"]):
            raise FileNotFoundError(f"artifact {record['path']} of run {run_id} no longer exists")
        client.log_artifact(run_id, record["path"], record.get("artifact_path"))
    elif op == "terminate":
        client.set_terminated(run_id, status=record["status"], end_time=record.get("end_time"))
        settle_parent(client, run_id, end_time=record.get("end_time"))
    else:
        raise ValueError(
            f"unknown tracking record op {op!r} (expected one of: create_run, continue_run, params, "
            "tags, metrics, artifact, terminate)"
        )
    return run_id
