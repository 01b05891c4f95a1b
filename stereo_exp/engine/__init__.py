"""Training engine: distributed setup, schedule, optimizer, loss, checkpoints and the training loop."""

from hydra.core.config_store import ConfigStore

from stereo_exp.engine.config import LossConfig, OptimConfig, ScheduleConfig


def register_configs(cs: ConfigStore) -> None:
    """Store the ``schedule``, ``optim`` and ``loss`` group schemas."""
    cs.store(group="schedule", name="schedule_schema", node=ScheduleConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="loss", name="loss_schema", node=LossConfig)
