"""MLflow records of a run, written by rank 0 only.

The tracker talks to MLflow through an explicit ``MlflowClient`` (no fluent-API global state), so a test, a
sweep job and the evaluation command can each hold their own. Every method is a no-op on other ranks and when
``tracking.backend=none``.

A resumed run continues the same MLflow run: the checkpoint stores the run id, and ``start(run_id=...)`` reads
the last step logged for each metric, so the steps replayed between the checkpoint and the interruption are not
logged twice (they reproduce the same values, see engine/trainer.py) and no step is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from stereo_exp.engine.distributed import DistEnv

log = logging.getLogger(__name__)

# MLflow's limits: 100 params and 1000 metrics per log_batch call, and a param value of at most 6000 characters.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000


class TrackingBackend(str, Enum):
    mlflow = "mlflow"
    none = "none"


@dataclass
class TrackingConfig:
    backend: TrackingBackend = TrackingBackend.mlflow  # mlflow | none (no records at all)
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking URI: sqlite:///FILE (one machine) or http://HOST:PORT (server)
    experiment: str = "stereo_exp"  # MLflow experiment name; runs of one study share it
    run_name: str | None = None  # MLflow run name; null = <model>-<mix>-<schedule> choices of this run
    log_checkpoint: bool = True  # upload the final checkpoint as an artifact (~22 MB for crestereo_base)
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on the run, e.g. {team: vision}


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
    """Params, metrics and artifacts of one run in one MLflow run."""

    def __init__(self, cfg: TrackingConfig | Any, dist: DistEnv | None = None) -> None:
        is_main = dist.is_main if dist is not None else True
        self.cfg = cfg
        self.active = cfg.backend == "mlflow" and is_main
        self.run_id: str | None = None
        self._last_step: dict[str, int] = {}  # metric key -> last step already in MLflow (resume)
        self._client = None
        if self.active:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=cfg.uri)

    @property
    def client(self) -> Any:
        """The underlying ``MlflowClient`` (None when inactive)."""
        return self._client

    def start(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str | None:
        """Create a run (or continue ``run_id``) and log ``params`` (a nested config); returns the run id."""
        if not self.active:
            return None
        client = self._client
        if run_id is not None:
            run = client.get_run(run_id)
            self.run_id = run.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            for key in run.data.metrics:
                self._last_step[key] = max(m.step for m in client.get_metric_history(self.run_id, key))
            log.info("MLflow: continuing run %s", self.run_id)
            return self.run_id

        experiment = client.get_experiment_by_name(self.cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.cfg.experiment)
        all_tags = {**dict(self.cfg.tags), **dict(tags or {})}
        run = client.create_run(experiment_id, run_name=run_name or self.cfg.run_name, tags=all_tags)
        self.run_id = run.info.run_id
        if params:
            self.log_params(flatten_config(params))
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        if not self._ready():
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self._ready():
            return
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step``, leaving out steps this run already holds (after a resume)."""
        if not self._ready():
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        items = [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if step > self._last_step.get(key, -1)
        ]
        for i in range(0, len(items), _METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=items[i : i + _METRICS_PER_BATCH])
        for metric in items:
            self._last_step[metric.key] = step

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        if self._ready():
            self._client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure as a PNG artifact, e.g. ``val/step_000100/motorcycle.png``."""
        if self._ready():
            self._client.log_figure(self.run_id, figure, artifact_file)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Store a dict as a JSON or YAML artifact (by the file's extension)."""
        if self._ready():
            self._client.log_dict(self.run_id, dict(dictionary), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self._ready():
            self._client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run: FINISHED | FAILED | KILLED (a preempted run is left RUNNING for its requeued job)."""
        if self._ready():
            self._client.set_terminated(self.run_id, status=status)

    def run_url(self) -> str | None:
        """Where to look at the run: the UI address for a server, else the store and run id."""
        if not self._ready():
            return None
        if self.cfg.uri.startswith("http"):
            experiment_id = self._client.get_run(self.run_id).info.experiment_id
            return f"{self.cfg.uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}"
        return f"{self.cfg.uri} run {self.run_id}"

    def _ready(self) -> bool:
        return self.active and self.run_id is not None
