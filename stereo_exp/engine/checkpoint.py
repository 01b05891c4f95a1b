"""Checkpoints: one file per save, written atomically by rank 0, loadable with ``weights_only=True``.

A checkpoint is a plain dict of named stateful pieces (torchtitan's checkpointer, nanoGPT's dict):

    model, optimizer, scheduler, scaler   state_dicts
    step                                  optimizer steps done (the next step to run)
    rng                                   torch / cuda / numpy / python generator states
    nonfinite_streak                      consecutive skipped steps at save time
    validation                            "first" and "last" validation metrics, each with its step
    mlflow_run_id                         so a resumed run continues the same MLflow run
    world_size                            processes of the run (a resume must use as many)
    config                                the resolved config as plain Python types

Only tensors and plain Python types go in, so ``torch.load(path, weights_only=True)`` reads it and loading a file
can never run code from it.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pth$")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pth"


def checkpoint_step(name: str) -> int | None:
    """The step in a checkpoint file name (``.../step_0000300.pth`` -> 300); None for any other name."""
    match = _NAME.search(name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints of a run directory, oldest first (by step)."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    found = [(step, p) for p in folder.glob("step_*.pth") if (step := checkpoint_step(p.name)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX within one file system
    return path


def prune_checkpoints(output_dir: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep_last`` periodic checkpoints (``protect`` is never deleted)."""
    checkpoints = list_checkpoints(output_dir)
    for path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        if path != protect:
            path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a truncated or foreign file gets a message naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError/UnpicklingError/EOFError depending on the damage
        raise RuntimeError(
            f"Could not read checkpoint {path} ({type(error).__name__}: {error}). The file is truncated, corrupt, "
            "or holds objects other than tensors and plain Python types."
        ) from error
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise ValueError(f"{path} is not a stereo_exp training checkpoint (expected a dict with 'model' and 'step').")
    return state


def rng_state() -> dict[str, Any]:
    """States of every random generator a run may use, as tensors and plain types."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value
