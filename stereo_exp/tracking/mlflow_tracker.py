"""MLflow records of a run, written by rank 0 only, that survive an unreachable tracking server.

The tracker talks to MLflow through an explicit ``MlflowClient`` (no fluent-API global state), so a test, a
sweep job and the evaluation command can each hold their own. Every method is a no-op on other ranks and when
``tracking.backend=none``.

A resumed run continues the same MLflow run: the checkpoint stores the run id, and ``start(run_id=...)`` reads
the last step logged for each metric, so the steps replayed between the checkpoint and the interruption are not
logged twice (they reproduce the same values, see engine/trainer.py) and no step is missing.

A job of a multirun (``start(sweep=SweepInfo)``) is named by its swept values, tagged with its sweep and overrides
and nested under the sweep's parent run (tracking/sweep.py).

When MLflow cannot be reached or written (server down or hung, network, a locked, read-only or broken SQLite file)
and the tracker has a ``spool_dir``, training goes on: the tracker warns once, appends what it could not send to
``<spool_dir>/mlflow_spool.jsonl`` (tracking/spool.py) and sends it, in order, at its first successful contact
afterwards; it tries again at most every ``offline_retry_s`` seconds, after a cheap ``GET /health`` that gives up
after ``probe_timeout_s`` (also asked before the first contact: a hung server costs seconds, not minutes). What is
still unsent when the run ends is sent by ``python -m stereo_exp.tracking.sync RUN_DIR``. A run created while MLflow
was unreachable gets a placeholder id (``offline-...``), which the checkpoint keeps and the sync maps to the MLflow
run it creates. Without a ``spool_dir``, a failed call raises as MLflow raised it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stereo_exp.tracking.addresses import run_url, ui_hint
from stereo_exp.tracking.mlflow_io import (
    OFFLINE_PREFIX,
    apply_record,
    describe,
    http_settings,
    is_unreachable,
    last_logged_steps,
    open_client,
    server_answers,
)
from stereo_exp.tracking.spool import Spool, SpoolBusy, sync_spool
from stereo_exp.tracking.sweep import SweepInfo, validation_metrics

if TYPE_CHECKING:  # only annotations: importing tracking (compare, sync, the server) stays free of torch
    from stereo_exp.distributed import DistEnv

log = logging.getLogger(__name__)

_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value, in characters
TASK_TAG = "stereo_exp.task"  # "evaluate" | "eda" on the runs of those commands (compare leaves them out)
RUN_KEY_TAG = "stereo_exp.run_key"  # start(run_key=...): finds the run again after a kill before its id was recorded
KEY_METRIC_TAG = "stereo_exp.key_metric"  # the held-out validation metric of a training run (compare's default)


class TrackingBackend(str, Enum):
    mlflow = "mlflow"
    none = "none"


@dataclass
class TrackingConfig:
    backend: TrackingBackend = TrackingBackend.mlflow  # mlflow | none (no records at all)
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking URI: sqlite:///FILE (one machine) or http://HOST:PORT (server)
    experiment: str = "stereo_exp"  # MLflow experiment name; runs of one study share it
    run_name: str | None = None  # MLflow run name; null: a sweep job's swept values, else experiment|model-mix-schedule
    log_checkpoint: bool = True  # upload the final checkpoint as an artifact (~22 MB for crestereo_base)
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on the run, e.g. {team: vision}
    # --- an unreachable server costs seconds, not minutes; records wait in the run dir (docs/CLUSTER.md) ---
    http_timeout_s: int = 10  # MLFLOW_HTTP_REQUEST_TIMEOUT: seconds per HTTP request (MLflow's default: 120)
    http_max_retries: int = 2  # MLFLOW_HTTP_REQUEST_MAX_RETRIES (MLflow's default 7 blocks ~4 min on a dead server)
    http_backoff_factor: int = 1  # MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: retries wait 1, 2, 4 ... s (MLflow's: 2)
    offline_retry_s: float = 60.0  # while unreachable: seconds between attempts to reach MLflow and send the spool
    probe_timeout_s: float = 2.0  # http URIs: GET /health gives up after this, at start and before each retry
    parent_wait_s: float = 60.0  # sweeps: seconds a job waits for the job that creates the sweep's parent run

    def __post_init__(self) -> None:
        if self.http_timeout_s < 1 or self.http_max_retries < 0 or self.http_backoff_factor < 0:
            raise ValueError(
                "tracking.http_timeout_s must be >= 1, tracking.http_max_retries and tracking.http_backoff_factor "
                f">= 0; got {self.http_timeout_s}, {self.http_max_retries}, {self.http_backoff_factor}."
            )
        if self.offline_retry_s < 0 or self.probe_timeout_s <= 0 or self.parent_wait_s < 0:
            raise ValueError(
                "tracking.offline_retry_s and tracking.parent_wait_s must be >= 0 and tracking.probe_timeout_s > 0; "
                f"got {self.offline_retry_s}, {self.parent_wait_s}, {self.probe_timeout_s}."
            )


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: the resolved config as MLflow params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_LENGTH]
    return flat


class MlflowTracker:
    """Params, metrics and artifacts of one run in one MLflow run.

    Args:
        cfg: the ``tracking`` config group (``TrackingConfig`` or its DictConfig).
        dist: the distributed setup; only rank 0 records anything.
        spool_dir: the run directory; when given, records that cannot reach MLflow are kept there and training
            goes on (module docstring). None: failures raise.
    """

    def __init__(
        self, cfg: TrackingConfig | Any, dist: DistEnv | None = None, *, spool_dir: str | Path | None = None
    ) -> None:
        is_main = dist.is_main if dist is not None else True
        self.cfg = cfg
        self.active = cfg.backend == "mlflow" and is_main
        self.run_id: str | None = None
        self._last_step: dict[str, int] = {}  # metric key -> last step already logged (resume)
        self._opened_client = None  # opened at the first contact (opening may fail: then the tracker goes offline)
        self._spool = Spool(spool_dir) if spool_dir is not None and self.active else None
        self._run_ids: dict[str, str] = {}  # offline placeholder -> MLflow run id
        self._offline = False
        self._next_attempt = 0.0  # time.monotonic() of the next attempt to reach MLflow while offline
        self._warned = False

    @property
    def _client(self) -> Any:
        """The ``MlflowClient``, opened at first use (``open_client``: a new SQLite store is set up once)."""
        if self._opened_client is None:
            self._opened_client = open_client(self.cfg.uri)
        return self._opened_client

    @property
    def offline(self) -> bool:
        """True while records go to the spool instead of MLflow."""
        return self._offline

    def start(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        default_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        sweep: SweepInfo | None = None,
        run_key: str | None = None,
    ) -> str | None:
        """Create a run (or continue ``run_id``) and log ``params`` (a nested config); returns the run id
        (an ``offline-...`` placeholder when MLflow cannot be reached). ``default_name``: a new run's name unless
        ``tracking.run_name`` sets one (then what the sweep varies). ``sweep``: tag the run with its sweep and nest it
        under the sweep's parent run. ``run_key``: tag a new run with it (``RUN_KEY_TAG``); without
        ``run_id``, a run of the experiment carrying that key is continued instead of creating a second one (an
        attempt killed between creating the run and recording its id), and its missing params are logged."""
        if not self.active:
            return None
        self._probe()
        if self._spool is not None:
            self._run_ids = dict(self._spool.read_state().run_ids)
            if self._spool.has_pending():  # an earlier attempt of this run went offline: send that first
                self._offline = True
                if not self._attempt(force=True):
                    self._go_offline(f"records of an earlier attempt wait in {self._spool.path}")
        found_by_key = run_id is None and run_key is not None and (run_id := self._find_run(run_key)) is not None
        if run_id is not None:
            self.run_id = self._run_ids.get(run_id, run_id)
            self._continue_run()
            if found_by_key and params:
                self._log_missing_params(flatten_config(params))
            return self.run_id

        placeholder = f"{OFFLINE_PREFIX}{uuid.uuid4().hex}"
        metrics = validation_metrics((params or {}).get("eval", {}).get("datasets"))
        all_tags = {**({KEY_METRIC_TAG: metrics[0]} if metrics else {}), **dict(self.cfg.tags), **dict(tags or {})}
        record = {
            "op": "create_run",
            "run": placeholder,
            "experiment": self.cfg.experiment,
            "run_name": self.cfg.run_name or default_name or (sweep.run_name() if sweep else None),
            "tags": {**all_tags, **({RUN_KEY_TAG: run_key} if run_key else {})},
            "start_time": int(time.time() * 1000),
            "sweep": sweep.to_dict() if sweep else None,
            "metrics": metrics,
        }
        self.run_id = self._send(record) or placeholder
        if sweep is not None:
            log.info(
                "MLflow: run %s of sweep %s (job %d of %s)", self.run_id, sweep.sweep_id, sweep.job_num, sweep.sweep_dir
            )
        flat = flatten_config(params or {})
        if sweep is not None:  # a swept config group (model=a,b) is no key of the config: log it as one too
            flat.update({key: value for key, value in sweep.swept().items() if key not in flat})
        if flat:
            self.log_params(flat)
        return self.run_id

    def _continue_run(self) -> None:
        """Status back to RUNNING; remember the last step of each metric so that replayed steps are not sent."""
        record = {"op": "continue_run", "run": self.run_id}
        if self._send(record) is None or self.run_id.startswith(OFFLINE_PREFIX):
            return  # spooled: the sync skips the steps MLflow already holds
        try:
            with self._http():
                self._last_step.update(last_logged_steps(self._client, self.run_id))
        except Exception as error:
            self._on_failure(error)  # offline from here on: the sync leaves out the steps MLflow holds instead
        log.info("MLflow: continuing run %s", self.run_id)

    def _find_run(self, run_key: str) -> str | None:
        """The run of this experiment tagged with ``run_key``, if MLflow answers and holds one."""
        if self._offline:
            return None
        try:
            with self._http():
                experiment = self._client.get_experiment_by_name(self.cfg.experiment)
                if experiment is None:
                    return None
                runs = self._client.search_runs(
                    [experiment.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1
                )
        except Exception as error:
            self._on_failure(error)
            return None
        return runs[0].info.run_id if runs else None

    def _log_missing_params(self, params: Mapping[str, str]) -> None:
        """Log the params the run does not hold yet (its creator may have died before logging them)."""
        if self._offline:
            return
        try:
            with self._http():
                held = self._client.get_run(self.run_id).data.params
        except Exception as error:
            self._on_failure(error)
            return
        missing = {key: value for key, value in params.items() if key not in held}
        if missing:
            self.log_params(missing)

    def log_params(self, params: Mapping[str, str]) -> None:
        if self._ready():
            self._send({"op": "params", "run": self.run_id, "params": dict(params)})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self._ready():
            self._send({"op": "tags", "run": self.run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step``, leaving out steps this run already holds (after a resume)."""
        if not self._ready():
            return
        new = {key: float(value) for key, value in metrics.items() if step > self._last_step.get(key, -1)}
        if not new:
            return
        record = {
            "op": "metrics",
            "run": self.run_id,
            "step": step,
            "timestamp": int(time.time() * 1000),
            "metrics": new,
        }
        self._send(record)
        for key in new:
            self._last_step[key] = step

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        if self._ready():
            path = str(Path(local_path).resolve())
            self._send({"op": "artifact", "run": self.run_id, "path": path, "artifact_path": artifact_path})

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure as a PNG artifact, e.g. ``val/step_000100/motorcycle.png``."""
        if self._ready():
            self._log_in_memory(
                artifact_file, lambda: self._client.log_figure(self.run_id, figure, artifact_file), figure.savefig
            )

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Store a dict as a JSON or YAML artifact (by the file's extension)."""
        if self._ready():

            def write(path: Path) -> None:
                if path.suffix in (".yaml", ".yml"):
                    path.write_text(yaml.safe_dump(dict(dictionary)))
                else:
                    path.write_text(json.dumps(dict(dictionary), indent=2))

            online = lambda: self._client.log_dict(self.run_id, dict(dictionary), artifact_file)  # noqa: E731
            self._log_in_memory(artifact_file, online, write)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run: FINISHED | FAILED | KILLED (a requeued job's run is left RUNNING: trainer.train).
        While offline, one last attempt to send the spool is made first."""
        if not self._ready():
            return
        if self._offline:
            self._attempt(force=True)
        self._send({"op": "terminate", "run": self.run_id, "status": status, "end_time": int(time.time() * 1000)})
        if self._offline and self._spool is not None:
            log.info(
                "MLflow: %s records of run %s are not sent yet; send them with: python -m stereo_exp.tracking.sync %s",
                len(self._spool.pending(self._spool.read_state())),
                self.run_id,
                self._spool.run_dir,
            )

    def run_url(self) -> str | None:
        """The run's page in the MLflow UI (for a SQLite store, where ``mlflow ui`` serves it); while records still
        wait in the spool, the store, the run id and the sync command."""
        if not self._ready():
            return None
        if not (self._offline or self.run_id.startswith(OFFLINE_PREFIX)):
            try:
                with self._http():
                    experiment_id = self._client.get_run(self.run_id).info.experiment_id
                return run_url(self.cfg.uri, experiment_id, self.run_id)
            except Exception as error:
                if not is_unreachable(error):
                    raise
        where = self._spool.run_dir if self._spool is not None else "?"
        return f"{self.cfg.uri} run {self.run_id} (not all sent: python -m stereo_exp.tracking.sync {where})"

    def where(self) -> str | None:
        """One line on where to look at the run: its page, and for a local store the command that serves the UI."""
        url = self.run_url()
        hint = ui_hint(self.cfg.uri)
        return f"{url}  ({hint})" if url and hint else url

    # ---- sending, or spooling while MLflow is unreachable -------------------------------------------------------

    def _ready(self) -> bool:
        return self.active and self.run_id is not None

    def _probe(self) -> None:
        """Before the first contact with a server: does it answer ``GET /health`` within ``probe_timeout_s``? A hung
        server would otherwise hold every call for http_timeout_s x (1 + http_max_retries) plus the back-off."""
        if self._offline or server_answers(self.cfg.uri, self.cfg.probe_timeout_s):
            return
        reason = f"no answer to GET /health within {self.cfg.probe_timeout_s:g} s (tracking.probe_timeout_s)"
        if self._spool is None:
            raise ConnectionError(f"MLflow at {self.cfg.uri}: {reason}")
        self._go_offline(reason)

    def _http(self) -> Any:
        return http_settings(
            timeout_s=self.cfg.http_timeout_s,
            max_retries=self.cfg.http_max_retries,
            backoff_factor=self.cfg.http_backoff_factor,
        )

    def _send(self, record: dict[str, Any]) -> str | None:
        """Apply ``record`` now; returns its run id, or None when it went to the spool."""
        if not self._offline or self._attempt():
            try:
                with self._http():
                    return apply_record(self._client, record, self._run_ids, parent_wait_s=self.cfg.parent_wait_s)
            except Exception as error:
                self._on_failure(error)
        self._keep(record)
        return None

    def _log_in_memory(self, artifact_file: str, online: Callable[[], Any], write: Callable[[Path], Any]) -> None:
        """Log an artifact made in memory: at once, or written to the spool's files and spooled as a file."""
        if not self._offline or self._attempt():
            try:
                with self._http():
                    online()
                return
            except Exception as error:
                self._on_failure(error)
        path = self._spool.file_for(f"{self.run_id}/{artifact_file}")
        write(path)
        parent = str(Path(artifact_file).parent)
        self._keep(
            {
                "op": "artifact",
                "run": self.run_id,
                "path": str(path),
                "artifact_path": None if parent == "." else parent,
            }
        )

    def _keep(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the spool with the tracking URI it was meant for (the sync's default target)."""
        assert self._spool is not None
        self._spool.append({**record, "uri": self.cfg.uri})

    def _on_failure(self, error: Exception) -> None:
        """Go offline when ``error`` means MLflow is unreachable and there is a spool; else re-raise it."""
        if self._spool is None or not is_unreachable(error):
            raise error
        self._go_offline(describe(error))

    def _go_offline(self, reason: str) -> None:
        """Spool from now on; warn the first time only (a flapping server must not flood the log)."""
        assert self._spool is not None
        self._offline = True
        self._next_attempt = time.monotonic() + self.cfg.offline_retry_s
        if not self._warned:
            self._warned = True
            log.warning(
                "MLflow at %s is unreachable (%s). Training goes on; records are kept in %s and sent when MLflow "
                "answers again (tried every %.0f s), or later with: python -m stereo_exp.tracking.sync %s",
                self.cfg.uri,
                reason,
                self._spool.path,
                self.cfg.offline_retry_s,
                self._spool.run_dir,
            )

    def _attempt(self, force: bool = False) -> bool:
        """While offline: if it is time (or ``force``), reach MLflow and send the spool; True once back online."""
        assert self._spool is not None
        now = time.monotonic()
        if not force and now < self._next_attempt:
            return False
        self._next_attempt = now + self.cfg.offline_retry_s
        if not server_answers(self.cfg.uri, self.cfg.probe_timeout_s):
            return False
        try:
            with self._http():
                report = sync_spool(self._spool, self._client, parent_wait_s=self.cfg.parent_wait_s)
        except SpoolBusy:
            return False  # a manual sync is sending it right now
        except Exception as error:  # the store still cannot be opened
            if not is_unreachable(error):
                raise
            return False
        self._run_ids.update(self._spool.read_state().run_ids)
        if self.run_id is not None:
            self.run_id = self._run_ids.get(self.run_id, self.run_id)
        if report.refused:
            log.warning("MLflow refused %d spooled records: %s", len(report.refused), "; ".join(report.refused))
        if report.remaining:
            return False
        self._offline = False
        log.info("MLflow at %s answers again: %s", self.cfg.uri, report.summary())
        return True
