"""Where the model to evaluate comes from: one ``weights`` string, shared by ``evaluate`` and ``predict``.

``weights`` may be

* a published name (``MEGVII_V1``, ``CRESTEREO_ETH_MBL_V1`` ...): the ``model`` config names the architecture;
* a file: our training checkpoint (a dict with ``model``, ``step`` and ``config``; the architecture comes from the
  checkpoint's stored config, the ``model`` config is ignored) or a plain ``state_dict`` (for the ``model`` config);
* an MLflow run: ``runs:/<run id>`` or the bare 32-character run id; the newest ``checkpoints/step_*.pth`` artifact
  of the run is downloaded to a temporary folder and loaded as a checkpoint;
* null: the newest checkpoint under the ``checkpoints`` folder (``**/checkpoints/step_*.pth`` by modification time),
  or, when there is none, the ``model`` config as it is (its own ``weights``, else random initialisation).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from stereo_exp import models
from stereo_exp.engine import checkpoint as ckpt
from stereo_exp.models.config import ModelConfig
from stereo_exp.models.weights import checkpoint_weights, read_weights_only

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # MLflow run ids: 32 lowercase hex characters
_RUN_URI = re.compile(r"^runs:/([^/]+)(?:/(.+))?$")  # runs:/<id>[/<artifact path>]


@dataclass
class LoadedModel:
    """A model ready for inference (on the CPU, eval mode) and what it is.

    model_cfg: the resolved ``model`` group config it was built from (name, eval_iters, architecture keys).
    source: for people, e.g. ``checkpoint outputs/.../step_0000300.pth (step 300)``.
    step: the training step of a checkpoint (None for published weights, state_dicts and random models).
    """

    model: nn.Module
    model_cfg: dict[str, Any]
    source: str
    step: int | None = None
    tags: dict[str, str] = field(default_factory=dict)  # for the MLflow run of an evaluation

    @property
    def eval_iters(self) -> int:
        return int(self.model_cfg["eval_iters"])


def load_model(
    weights: str | None, model_cfg: DictConfig | Any, *, checkpoints: str | Path, tracking_uri: str
) -> LoadedModel:
    """Resolve ``weights`` as described in the module docstring; errors name the value and what was expected."""
    if weights is None:
        if Path(checkpoints).is_file():  # e.g. checkpoints=outputs/.../step_0000300.pth
            raise ValueError(
                f"checkpoints={checkpoints} is a file; checkpoints names the folder searched for the newest "
                f"checkpoint when weights is not given. To evaluate this file: weights={checkpoints}"
            )
        latest = find_latest_checkpoint(checkpoints)
        if latest is not None:
            log.info("weights=null: using the newest checkpoint under %s: %s", checkpoints, latest)
            return load_checkpoint_model(latest)
        return _from_model_config(model_cfg, weights=None, search=checkpoints)
    weights = str(weights)
    run_uri = _RUN_URI.match(weights)
    if run_uri:
        return load_run_model(run_uri.group(1), run_uri.group(2), tracking_uri=tracking_uri)
    path = Path(weights)
    if _RUN_ID.match(weights) and not path.exists():
        return load_run_model(weights, None, tracking_uri=tracking_uri)
    if path.is_file():
        state = read_weights_only(path, what="weights file")
        if isinstance(state, dict) and "model" in state and "config" in state:
            return load_checkpoint_model(path, state)
        return _from_model_config(model_cfg, weights=str(path), search=None)
    check_weights_file(weights)  # a path that is not a file
    _check_published_fits(weights, str(model_cfg.name))
    return _from_model_config(model_cfg, weights=weights, search=None)  # a published name


def check_weights_file(weights: str | None) -> None:
    """Raise ``FileNotFoundError`` when ``weights`` names a file (a path, or a name ending in .pth, .pt, .ckpt or
    .bin) that is not there, without reading anything: what a sweep checks before its jobs start."""
    if weights is None:
        return
    spec, path = str(weights), Path(str(weights))
    if _RUN_URI.match(spec) or path.is_file() or (_RUN_ID.match(spec) and not path.exists()):
        return
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin") or "/" in spec or path.is_dir():
        raise FileNotFoundError(
            f"weights={spec!r} is not a file. Expected a published weights name, a .pth state_dict or checkpoint "
            "file, or an MLflow run (runs:/<run id>)."
        )


def _check_published_fits(name: str, model_name: str) -> None:
    """A published name for another architecture is an error that says which ``model=`` to pass."""
    from stereo_exp.models.weights import WEIGHT_ENUMS

    enum_name, _, member = name.rpartition(".")
    builders = {
        enum[member].value.builder
        for enum in WEIGHT_ENUMS
        if enum_name in ("", enum.__name__) and member in enum.__members__
    }
    if builders and model_name not in builders:
        raise ValueError(
            f"weights={name} are published for {' / '.join(sorted(builders))}, but the model is {model_name}: "
            f"add model={sorted(builders)[0]} (--model for predict)."
        )


def find_latest_checkpoint(root: str | Path) -> Path | None:
    """The most recently written ``<run>/checkpoints/step_*.pth`` anywhere under ``root`` (None if there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.glob(f"**/{ckpt.CHECKPOINT_DIR}/step_*.pth") if p.is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def load_checkpoint_model(path: str | Path, state: dict[str, Any] | None = None) -> LoadedModel:
    """Our training checkpoint: the architecture from its stored config, then its weights."""
    path = Path(path)
    state = state if state is not None else ckpt.load_checkpoint(path)
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"Checkpoint {path} has no stored model config (expected state['config']['model']).")
    model_cfg = dict(config["model"], weights=None)  # the checkpoint's own weights replace any initial ones
    model = models.build_model(model_cfg)
    try:
        model.load_state_dict(checkpoint_weights(state))
    except RuntimeError as error:
        raise RuntimeError(f"Checkpoint {path}: its weights do not fit its model config {model_cfg['name']}") from error
    step = int(state["step"]) if "step" in state else None
    averaged = " (averaged weights)" if "model_averaged" in state else ""
    source = f"checkpoint {path} (step {step}){averaged}"
    return LoadedModel(model=model.eval(), model_cfg=model_cfg, source=source, step=step, tags={"weights": str(path)})


def load_run_model(run_id: str, artifact: str | None, *, tracking_uri: str) -> LoadedModel:
    """Download a checkpoint artifact of an MLflow run (the newest ``checkpoints/step_*.pth`` if not named)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
        if artifact is None:
            names = [a.path for a in client.list_artifacts(run_id, ckpt.CHECKPOINT_DIR) if not a.is_dir]
            steps = [(step, name) for name in names if (step := ckpt.checkpoint_step(name)) is not None]
            if not steps:
                raise FileNotFoundError(
                    f"MLflow run {run_id} ({tracking_uri}) has no {ckpt.CHECKPOINT_DIR}/step_*.pth artifact; "
                    "was it trained with tracking.log_checkpoint=true and did it finish?"
                )
            artifact = max(steps)[1]
        with tempfile.TemporaryDirectory(prefix="stereo_exp_run_") as folder:
            local = Path(client.download_artifacts(run_id, artifact, folder))
            loaded = load_checkpoint_model(local)
    except MlflowException as error:
        raise RuntimeError(f"Could not read MLflow run {run_id!r} from {tracking_uri}: {error}") from error
    loaded.source = f"MLflow run {run_id}, artifact {artifact} (step {loaded.step})"
    loaded.tags = {"weights": f"runs:/{run_id}/{artifact}", "evaluated_run_id": run_id}
    return loaded


def _from_model_config(
    model_cfg: DictConfig | ModelConfig, *, weights: str | None, search: str | Path | None
) -> LoadedModel:
    config = models.as_model_config(model_cfg)
    if weights is not None:
        config = dataclasses.replace(config, weights=weights)
    model = models.build_model(config)
    cfg = OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)
    assert isinstance(cfg, dict)
    if config.weights is None:
        log.warning(
            "No weights: %s is randomly initialised (no checkpoint under %s). What it computes only shows that "
            "the pipeline runs; give it weights (a published name, a .pth file or runs:/RUN_ID) for real results.",
            config.name,
            search,
        )
        source = f"{config.name} with random weights"
    else:
        source = f"{config.name} with weights {config.weights}"
    return LoadedModel(model=model.eval(), model_cfg=cfg, source=source, tags={"weights": str(config.weights)})
