"""Top-level config schema and the registration of every group's schema in Hydra's ConfigStore.

Each config group owns one dataclass, defined beside the code that reads it (``engine/schedule.py`` holds
``ScheduleConfig``, ``data/config.py`` holds ``MixConfig`` ...). Its fields carry the defaults; the YAML files
under ``conf/<group>/`` name that schema in their defaults list and set only what differs. Hydra then checks
every key and type at composition, so a misspelt key or a wrong type stops the run before anything is built.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from stereo_exp.data.options import DatasetOptions
from stereo_exp.schemas import CheckpointConfig, LoaderConfig, PathsConfig, Precision, SpeedConfig, TrainConfig

__all__ = [
    "CheckpointConfig",
    "Config",
    "LoaderConfig",
    "PathsConfig",
    "Precision",
    "SpeedConfig",
    "TrainConfig",
    "launch_time",
    "register_configs",
    "to_plain",
    "typed",
]


@dataclass
class Config:
    """The whole run. Groups are typed ``Any`` here; each group's option files validate against their own schema."""

    model: Any = MISSING  # conf/model/*: network and its hyper-parameters
    mix: Any = MISSING  # conf/mix/*: training datasets and their dataset steps
    augmentation: Any = MISSING  # conf/augmentation/*: crop size and photometric/spatial augmentation
    schedule: Any = MISSING  # conf/schedule/*: learning rate over steps
    optim: Any = MISSING  # conf/optim/*: optimizer and gradient clipping
    loss: Any = MISSING  # conf/loss/*: sequence loss over the recurrent predictions
    eval: Any = MISSING  # conf/eval/*: validation during training
    tracking: Any = MISSING  # conf/tracking/*: MLflow (or none)
    paths: PathsConfig = field(default_factory=PathsConfig)  # where data is read and results are written
    datasets: DatasetOptions = field(default_factory=DatasetOptions)  # per-dataset reading options (docs/DATASETS.md)
    train: TrainConfig = field(default_factory=TrainConfig)  # batch, precision, logging, validation cadence
    loader: LoaderConfig = field(default_factory=LoaderConfig)  # DataLoader workers of the training data
    speed: SpeedConfig = field(default_factory=SpeedConfig)  # compilation and allocator settings of the training step
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # how often and how many to keep
    seed: int = 0  # seeds model init, data order, augmentation and every worker
    resume: str | None = "auto"  # auto: continue the latest checkpoint in paths.output if any | PATH | null: never
    init_from: str | None = None  # weights-only start (fine-tuning): our checkpoint or a state_dict file

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:  # random_streams.py: larger seeds would overlap the streams
            raise ValueError(f"seed must lie in [0, 2**32); got {self.seed}.")


def register_configs(app: str | None = None) -> None:
    """Store the primary schema of ``app`` (the name of its primary config: ``config`` for training, ``evaluate``,
    ``eda``; None: all three) and every group schema in Hydra's ConfigStore (idempotent). An entry point stores only
    its own primary schema: Hydra's ``--help`` copies the whole store once per config group (about 100 times)."""
    # Imported here so that importing stereo_exp.config stays cheap and free of import cycles.
    from stereo_exp import data, engine, evaluation, models, tracking
    from stereo_exp.data.config import EdaAppConfig
    from stereo_exp.evaluation.config import EvaluateConfig

    cs = ConfigStore.instance()
    primary_schemas = {
        "config": ("base_config", Config),
        "evaluate": ("evaluate_schema", EvaluateConfig),
        "eda": ("eda_schema", EdaAppConfig),
    }
    for config_name, (schema_name, schema) in primary_schemas.items():
        if app in (None, config_name):
            cs.store(name=schema_name, node=schema)
    for package in (models, data, engine, evaluation, tracking):
        package.register_configs(cs)
    # Hydra re-registers its own `now` whenever it starts, so the default folders use a resolver of their own.
    OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)


def launch_time(pattern: str) -> str:
    """``${launch_time:PATTERN}``, the moment the command was launched as ``strftime(PATTERN)``: the default run and
    sweep folders are named by it (conf/*.yaml). Hydra's ``${now:...}`` is read by each process, and torchrun's
    ranks start apart, so two ranks could name two folders (one second apart), and the ranks torchrun restarts after
    a failure (``--max-restarts``) a new one, where they would start over instead of resuming. For a worker of
    torchrun it is therefore the moment torchrun itself started (the worker's parent), the same for every rank of
    the host and every restart; for any other process, now."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun exports it to its workers only
        try:
            return _process_start(os.getppid()).strftime(pattern)
        except (OSError, ValueError, StopIteration):  # no /proc (not Linux): each rank's now, as Hydra's
            pass
    return datetime.datetime.now().strftime(pattern)


def _process_start(pid: int) -> datetime.datetime:
    """When process ``pid`` started, to the clock tick, from /proc: the same figure whoever reads it and when."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks_after_boot = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the name in (...) may hold spaces
    boot_lines = Path("/proc/stat").read_text().splitlines()
    boot = next(int(line.split()[1]) for line in boot_lines if line.startswith("btime "))  # seconds since the epoch
    return datetime.datetime.fromtimestamp(boot + ticks_after_boot / os.sysconf("SC_CLK_TCK"))


def to_plain(config: Any) -> dict[str, Any]:
    """A typed config (``Config``, or an app's schema object) as plain data, enums as their names: what config.yaml,
    checkpoints and MLflow params record. The inverse of the typing done at each entry point."""
    return OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)  # type: ignore[return-value]


def typed(cfg: DictConfig) -> Any:
    """The composed ``cfg`` as its schema objects (``Config``, or an app's schema): every schema's own checks run
    here (``__post_init__``; ``ValueError`` naming the key). Keys that no schema declares are refused first: Hydra's
    ``+key=value`` adds any key to a structured config, and its own error for a misspelt key suggests exactly that,
    so ``+train.max_step=100`` would otherwise train as if the option had not been given."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError(refusal(unknown))
    return OmegaConf.to_object(cfg)


def refusal(unknown: list[str]) -> str:
    """The message that refuses a command for ``unknown_keys``' findings."""
    return "; ".join(unknown) + ". `--help` lists every key."


def unknown_keys(node: DictConfig, prefix: str = "", known: list[str] | None = None) -> list[str]:
    """``unknown key KEY (did you mean ...?)`` for every key under ``node`` that its schema dataclass does not
    declare. Nodes without a dataclass schema (free-form dicts) may hold any key; their children are still checked.
    Values are not resolved (an interpolation such as ``${hydra:...}`` needs a running Hydra). ``known``: every key
    path of the whole config, where a suggestion may come from (computed from ``node`` when not given)."""
    known = list(_key_paths(node, prefix)) if known is None else known
    declared = _declared(node)
    found = []
    for key in node:
        path = f"{prefix}{key}"
        if declared is not None and key not in declared:
            found.append(f"unknown key {path}{_did_you_mean(str(key), prefix, declared, known)}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            found += unknown_keys(child, f"{path}.", known)
    return found


def did_you_mean(cfg: DictConfig, path: str) -> str:
    """`` (did you mean ...?)`` for ``path``, a key that no schema of ``cfg`` declares ("" when nothing is close)."""
    prefix, _, name = path.rpartition(".")
    node = OmegaConf.select(cfg, prefix) if prefix else cfg
    declared = (_declared(node) or []) if isinstance(node, DictConfig) else []
    return _did_you_mean(name, f"{prefix}." if prefix else "", declared, list(_key_paths(cfg)))


def _declared(node: DictConfig) -> list[str] | None:
    """The keys ``node``'s schema dataclass declares; None for a free-form node."""
    schema = OmegaConf.get_type(node)
    return [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None


def _key_paths(node: DictConfig, prefix: str = "") -> Iterator[str]:
    """Every declared key path under ``node`` (those of free-form nodes included)."""
    declared = _declared(node)
    for key in node:
        if declared is not None and key not in declared:
            continue
        yield f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from _key_paths(child, f"{prefix}{key}.")


def _did_you_mean(name: str, prefix: str, declared: list[str], known: list[str]) -> str:
    """The keys meant by unknown key ``prefix + name``: a close name beside it (train.max_step: train.max_steps),
    else the same name elsewhere (optim.lr: schedule.lr), else a close whole path (train.checkpoint_every:
    checkpoint.every; 0.75 keeps model.hiden_dim from suggesting model.name)."""
    close = [prefix + match for match in difflib.get_close_matches(name, declared, n=1)]
    close = close or [path for path in known if path.rsplit(".", 1)[-1] == name]
    close = close or difflib.get_close_matches(prefix + name, known, n=1, cutoff=0.75)
    return f" (did you mean {' or '.join(close[:3])}?)" if close else ""
