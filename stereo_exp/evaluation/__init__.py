"""Evaluation: metrics, the cascade grid (also training validation), the published table layout and disparity
pictures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.core.config_store import ConfigStore

from stereo_exp import lazy_exports
from stereo_exp.evaluation.config import EvalConfig, EvaluateConfig

if TYPE_CHECKING:
    from stereo_exp.evaluation.cascade import (
        GridResult,
        ValidationResult,
        evaluate_datasets,
        evaluate_grid,
        run_validation,
    )
    from stereo_exp.evaluation.metrics import CORE_METRICS, EXTRA_METRICS, MetricSums, per_image_metrics, reduce_metrics

__all__ = [
    "CORE_METRICS",
    "EXTRA_METRICS",
    "EvalConfig",
    "EvaluateConfig",
    "GridResult",
    "MetricSums",
    "ValidationResult",
    "evaluate_datasets",
    "evaluate_grid",
    "per_image_metrics",
    "reduce_metrics",
    "register_configs",
    "run_validation",
]

# cascade.py and metrics.py import torch and the data loaders: loaded on first use, not when the config is composed.
_CASCADE = ("GridResult", "ValidationResult", "evaluate_datasets", "evaluate_grid", "run_validation")
_METRICS = ("CORE_METRICS", "EXTRA_METRICS", "MetricSums", "per_image_metrics", "reduce_metrics")
__getattr__ = lazy_exports(__name__, {**dict.fromkeys(_CASCADE, "cascade"), **dict.fromkeys(_METRICS, "metrics")})


def register_configs(cs: ConfigStore) -> None:
    """Store the ``eval`` group schema (the schema of ``conf/evaluate.yaml``: stereo_exp.config)."""
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
