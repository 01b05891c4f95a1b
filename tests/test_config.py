"""The config surface: every option composes and validates, every key is documented, and the key list is reviewed."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from stereo_exp.config import Config, register_configs
from tests.conftest import CONF_DIR

GROUPS = ("model", "mix", "augmentation", "schedule", "optim", "loss", "eval", "tracking", "debug")
KEYS_FILE = Path(__file__).parent / "fixtures" / "config_keys.txt"


def group_options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


def compose_plain(*overrides: str) -> DictConfig:
    """conf/config.yaml as a user gets it, with ``overrides``."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["paths.output=unused", *overrides])


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_of_every_group_composes_and_passes_its_schema_checks(group, option):
    cfg = compose_plain(f"{group}={option}")
    OmegaConf.to_object(cfg)  # instantiates every schema dataclass: runs each __post_init__ check


def flat_keys(node: object, prefix: str = "") -> list[str]:
    if OmegaConf.is_dict(node):
        return [k for key in node for k in flat_keys(node._get_node(key), f"{prefix}{key}.")]  # no interpolation
    return [prefix.rstrip(".")]


def default_keys() -> list[str]:
    cfg = compose_plain()
    return sorted(key for key in flat_keys(cfg) if not key.startswith("hydra."))


def test_the_list_of_config_keys_is_reviewed():
    """Adding, renaming or dropping a setting shows up in review. Regenerate: python -m tests.test_config"""
    assert default_keys() == KEYS_FILE.read_text().split(), "config keys changed: run `python -m tests.test_config`"


def schema_classes() -> list[type]:
    """Every dataclass reachable from the top-level Config and from the schemas stored in the ConfigStore."""
    register_configs()
    roots: list[type] = [Config]
    repo = ConfigStore.instance().repo
    for group in (*GROUPS, ""):
        entries = repo.get(group, {}) if group else repo
        for entry in entries.values():
            node = getattr(entry, "node", None)
            schema = OmegaConf.get_type(node) if node is not None else None
            if schema is not None and dataclasses.is_dataclass(schema):
                roots.append(schema)
    seen: list[type] = []
    while roots:
        cls = roots.pop()
        if cls in seen or not dataclasses.is_dataclass(cls):
            continue
        seen.append(cls)
        roots += [f.default_factory for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.default_factory)]
        roots += [f.type for f in dataclasses.fields(cls) if isinstance(f.type, type)]
    return seen


@pytest.mark.parametrize("schema", schema_classes(), ids=lambda cls: cls.__name__)
def test_every_schema_field_has_a_default_and_a_one_line_comment(schema):
    source = textwrap.dedent(inspect.getsource(schema))
    lines = source.splitlines()
    (class_def,) = ast.parse(source).body
    undocumented = []
    for statement in class_def.body:
        if isinstance(statement, ast.AnnAssign):
            span = lines[statement.lineno - 1 : statement.end_lineno]
            if not any("#" in line for line in span):
                undocumented.append(statement.target.id)
    assert not undocumented, f"{schema.__name__}: fields without a comment: {undocumented}"
    missing_default = [
        f.name
        for f in dataclasses.fields(schema)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    assert not missing_default, f"{schema.__name__}: fields without a default: {missing_default}"


def test_option_files_set_only_what_differs_from_their_schema(tmp_path):
    """A YAML value equal to the schema default would silently override a changed code default (ARCHITECTURE.md)."""
    register_configs()
    repeated = []
    for group, option in group_options():
        if group == "debug":
            continue
        yaml = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
        schema_name = next(d for d in yaml.get("defaults", []) if isinstance(d, str) and d.endswith("_schema"))
        schema = OmegaConf.structured(ConfigStore.instance().repo[group][f"{schema_name}.yaml"].node)
        repeated += [
            f"{group}/{option}.yaml: {key}"
            for key, value in yaml.items()
            if key not in ("defaults", "name") and key in schema and schema[key] == value
        ]
    assert not repeated, f"values equal to the schema default: {repeated}"


if __name__ == "__main__":
    KEYS_FILE.write_text("\n".join(default_keys()) + "\n")
    print(f"wrote {KEYS_FILE}")
