"""The config surface: every option composes and validates, every key is documented, and the key list is reviewed."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, DictConfig, OmegaConf

from stereo_exp.config import Config, register_configs, typed
from tests.conftest import CONF_DIR

PRIMARY_FILES = ("config", "eda", "evaluate")  # conf/<name>.yaml: the configs of the command-line tools
GROUPS = ("model", "mix", "augmentation", "schedule", "optim", "loss", "eval", "tracking", "debug")
KEYS_FILE = Path(__file__).parent / "fixtures" / "config_keys.txt"


def group_options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


def compose_plain(*overrides: str, config_name: str = "config") -> DictConfig:
    """conf/<config_name>.yaml as a user gets it, with ``overrides``."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=["paths.output=unused", *overrides])


@pytest.mark.parametrize("config_name", PRIMARY_FILES)
def test_every_primary_config_composes_without_a_missing_value(config_name):
    cfg = compose_plain(config_name=config_name)
    assert not OmegaConf.missing_keys(cfg), f"conf/{config_name}.yaml leaves keys unset"
    OmegaConf.to_object(cfg)


@pytest.mark.parametrize(
    ("config_name", "override", "valid"),
    [
        ("config", "augmentation.scaling_type=log", "linear, exponential"),
        ("config", "augmentation.disparity_resize=nearest", "auto, bilinear, scatter"),
        ("config", "train.device=gpu", "auto, cpu, cuda"),
        ("evaluate", "device=gpu", "auto, cpu, cuda"),
        ("eda", "augmentation.scaling_type=log", "linear, exponential"),
    ],
)
def test_a_closed_choice_rejects_other_values_at_composition_listing_the_valid_ones(config_name, override, valid):
    key, value = override.split("=")
    with pytest.raises(ConfigCompositionException) as failure:
        compose_plain(override, config_name=config_name)
    message = str(failure.value.__cause__ or failure.value)
    assert f"Invalid value '{value}', expected one of [{valid}]" in message
    assert f"full_key: {key}" in message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+train.max_step=1", "unknown key train.max_step (did you mean train.max_steps?)"),  # a close name beside it
        ("+optim.lr=1", "unknown key optim.lr (did you mean schedule.lr?)"),  # the same name elsewhere
        ("+batch_size=2", "unknown key batch_size (did you mean eval.batch_size or train.batch_size?)"),
        ("+train.checkpoint_every=5", "unknown key train.checkpoint_every (did you mean checkpoint.every?)"),
        ("+model.hiden_dim=3", "unknown key model.hiden_dim. `--help`"),  # nothing close enough: no guess
        ("+foo.bar=1", "unknown key foo. `--help`"),
    ],
)
def test_a_key_no_schema_declares_is_refused_with_the_key_meant(override, message):
    # Hydra's error for a misspelt key advises `+key=value`, which adds it; typed() refuses it, naming the key meant.
    with pytest.raises(ValueError, match=re.escape(message)):
        typed(compose_plain(override))


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


PRAGMA = re.compile(r"(type:\s*ignore|noqa|fmt:\s*(skip|off|on)|pragma)\S*(\[[^\]]*\])?", re.IGNORECASE)


def field_comments(source: str) -> dict[int, str]:
    """The comment text of each line of ``source`` (1-based), without ``#`` and pragmas (``# type: ignore`` ...)."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = PRAGMA.sub("", token.string.lstrip("#")).strip(" #:")
    return comments


def group_slots() -> dict[type, set[str]]:
    """Per primary schema (conf/config.yaml's Config, ...): its fields that a group of its defaults list fills with
    a chosen option. These alone may be ``MISSING`` in the schema: the YAML file names their default."""
    register_configs()
    slots: dict[type, set[str]] = {}
    for name in PRIMARY_FILES:
        defaults = OmegaConf.load(CONF_DIR / f"{name}.yaml")["defaults"]
        schema_name = next(entry for entry in defaults if isinstance(entry, str) and entry != "_self_")
        schema = OmegaConf.get_type(ConfigStore.instance().repo[f"{schema_name}.yaml"].node)
        chosen = {key for entry in defaults if OmegaConf.is_dict(entry) for key, value in entry.items() if value}
        slots[schema] = {key for key in chosen if (CONF_DIR / key).is_dir()}
    return slots


def schema_problems(schema: type, slots: set[str] = frozenset()) -> list[str]:
    """Fields of ``schema`` without a one-line comment (an empty ``#`` or a pragma is none) or without a default
    (``omegaconf.MISSING`` is none, except for the group ``slots`` that the YAML defaults list fills)."""
    source = textwrap.dedent(inspect.getsource(schema))
    lines = source.splitlines()
    comments = field_comments(source)
    (class_def,) = ast.parse(source).body
    problems = []
    for statement in class_def.body:
        if isinstance(statement, ast.AnnAssign):
            span = range(statement.lineno, statement.end_lineno + 1)
            if not any(comments.get(line) for line in span):
                problems.append(f"{statement.target.id}: no comment ({lines[statement.lineno - 1].strip()})")
    for f in dataclasses.fields(schema):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{f.name}: no default")
        elif f.default is MISSING and f.name not in slots:
            problems.append(f"{f.name}: MISSING is a placeholder, not a default")
    return problems


@pytest.mark.parametrize("schema", schema_classes(), ids=lambda cls: cls.__name__)
def test_every_schema_field_has_a_default_and_a_one_line_comment(schema):
    problems = schema_problems(schema, group_slots().get(schema, set()))
    assert not problems, f"{schema.__name__}: {problems}"


@dataclass
class _Undocumented:
    placeholder: list[str] = MISSING  # a value every option file would have to set
    empty: int = 1  #
    pragma_only: Any = None  # type: ignore[assignment]
    spread: list[int] = field(  # the comment may sit on any line of the field
        default_factory=list
    )
    plain: str = "ok"  # a real comment


def test_the_schema_check_rejects_placeholders_empty_comments_and_pragmas():
    assert schema_problems(_Undocumented) == [
        "empty: no comment (empty: int = 1  #)",
        "pragma_only: no comment (pragma_only: Any = None  # type: ignore[assignment])",
        "placeholder: MISSING is a placeholder, not a default",
    ]
    assert schema_problems(_Undocumented, slots={"placeholder"})[-1].startswith("pragma_only")


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
