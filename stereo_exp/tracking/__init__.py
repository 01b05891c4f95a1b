"""stereo_exp.tracking (see docs/ARCHITECTURE.md for what this package offers to the others)."""

from hydra.core.config_store import ConfigStore


def register_configs(cs: ConfigStore) -> None:
    """Store this package's config-group schemas in Hydra's ConfigStore."""
