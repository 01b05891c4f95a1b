"""Experiment tracking (MLflow, rank 0 only), sweep grouping and the offline spool."""

from hydra.core.config_store import ConfigStore

from stereo_exp.tracking.mlflow_tracker import MlflowTracker, TrackingConfig, flatten_config
from stereo_exp.tracking.sweep import SweepInfo, default_run_name

__all__ = ["MlflowTracker", "SweepInfo", "TrackingConfig", "default_run_name", "flatten_config", "register_configs"]


def register_configs(cs: ConfigStore) -> None:
    """Store the ``tracking`` group schema."""
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)
