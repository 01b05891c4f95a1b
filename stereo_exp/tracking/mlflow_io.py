"""Talking to MLflow: one tracker record -> ``MlflowClient`` calls, which errors mean "unreachable", HTTP settings.

The tracker describes everything it sends as a small JSON-serialisable record, so that the same record is either
applied at once or, while MLflow cannot be reached, appended to the run's spool and applied later by
``stereo_exp.tracking.sync``. Records (``run`` is an MLflow run id or an offline placeholder, see ``OFFLINE_PREFIX``;
spooled records also keep the ``uri`` they were meant for):

    {"op": "create_run", "run", "experiment", "run_name", "tags", "start_time", "sweep": SweepInfo dict | null}
    {"op": "continue_run", "run"}                      status back to RUNNING (a resumed run)
    {"op": "params", "run", "params": {key: str}}
    {"op": "tags", "run", "tags": {key: str}}
    {"op": "metrics", "run", "step", "timestamp", "metrics": {key: float}}
    {"op": "artifact", "run", "path", "artifact_path"}  a local file, absolute path
    {"op": "terminate", "run", "status", "end_time"}   also ends the sweep's parent run (its end = last job's end)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from stereo_exp.tracking.sweep import PARENT_RUN_TAG, SweepInfo, get_or_create_parent_run

OFFLINE_PREFIX = "offline-"  # placeholder run ids of runs created while MLflow was unreachable
# MLflow's limits: 100 params and 1000 metrics per log_batch call.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# MLflow error codes of answers that mean "not now" (HTTP 503 and 429) rather than "not this request".
_TRANSIENT_ERROR_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


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
    (503) or rate limited (429), a locked or unreachable database. False for requests MLflow refuses on their merits
    (bad value, unknown run): retrying them would fail again.
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
        if isinstance(current, sqlalchemy.exc.OperationalError):  # SQLite "database is locked", DB server down
            return True
        if isinstance(current, ConnectionError | TimeoutError):
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
    """The id of experiment ``name``, created if missing (concurrent jobs may race to create it)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
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
            tags[PARENT_RUN_TAG] = get_or_create_parent_run(client, experiment_id, sweep, wait_s=parent_wait_s)
        run = client.create_run(
            experiment_id, start_time=record.get("start_time"), tags=tags, run_name=record.get("run_name")
        )
        run_ids[record["run"]] = run.info.run_id
        return run.info.run_id

    run_id = run_ids.get(record["run"], record["run"])
    if run_id.startswith(OFFLINE_PREFIX):
        raise ValueError(f"record for run {run_id} comes before the record that creates it")
    if op == "continue_run":
        client.update_run(run_id, status="RUNNING")
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
        parent = client.get_run(run_id).data.tags.get(PARENT_RUN_TAG)
        if parent:
            client.set_terminated(parent, status="FINISHED", end_time=record.get("end_time"))
    else:
        raise ValueError(f"unknown tracking record op {op!r} (expected one of: create_run, continue_run, params, "
                         "tags, metrics, artifact, terminate)")  # fmt: skip
    return run_id
