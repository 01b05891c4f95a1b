"""Evaluation: metrics, the cascade grid (also training validation), the published table layout and disparity
pictures."""

from hydra.core.config_store import ConfigStore

from stereo_exp.evaluation.cascade import GridResult, ValidationResult, evaluate_datasets, evaluate_grid, run_validation
from stereo_exp.evaluation.config import EvalConfig, EvaluateConfig
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


def register_configs(cs: ConfigStore) -> None:
    """Store the ``eval`` group schema and the schema of ``conf/evaluate.yaml``."""
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
