"""Checkpoints: one file per save, written atomically by rank 0, loadable with ``weights_only=True``.

A checkpoint is the plain dict of ``TrainState.state_dict()`` (engine/state.py): named stateful pieces (model,
optimizer, scheduler, scaler, log window, RNG ...), the step and the resolved config. Only tensors and plain Python
types go in, so ``torch.load(path, weights_only=True)`` reads it and loading a file can never run code from it.

``Checkpointer`` owns the ``<run dir>/checkpoints/step_XXXXXXX.pth`` files of one run: it saves (never twice for one
step), prunes to ``checkpoint.keep_last`` and finds the newest intact checkpoint, skipping damaged files with a
warning that names them. A write is atomic (``.tmp`` then ``os.replace``), so a crash mid-write leaves the previous
checkpoint as the newest; a write that fails (disk full) names the file, the cause and the bytes it needed, and
removes its ``.tmp``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stereo_exp.models.weights import read_weights_only

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pth$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions ...); the message names the file and the cause."""


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
    """Write ``state`` to ``path`` atomically: a crash mid-write never leaves a truncated checkpoint behind.

    The state is serialised in memory first, so the size is known; a failed write (e.g. no space left) removes
    its ``.tmp`` and raises ``CheckpointWriteError`` naming the file, the cause and the bytes needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the rename makes them the checkpoint
        os.replace(tmp, path)  # atomic on POSIX within one file system
    except OSError as error:
        tmp.unlink(missing_ok=True)
        cause = os.strerror(error.errno) if error.errno else str(error)
        space = ""
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            space = f": {len(data):,} bytes needed, {shutil.disk_usage(path.parent).free:,} free on that file system"
        raise CheckpointWriteError(
            f"Could not write checkpoint {path} ({cause}{space}). Its partial {tmp.name} was removed."
        ) from error
    _sync_directory(path.parent)
    return path


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power loss right after it keeps the new name)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems (and platforms) cannot fsync a directory; the rename itself stays atomic
    finally:
        os.close(descriptor)


def prune_checkpoints(output_dir: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (``protect`` is never deleted)."""
    checkpoints = list_checkpoints(output_dir)
    for path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        if path != protect:
            path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a missing, truncated or foreign file gets a message naming it."""
    state = read_weights_only(path, what="checkpoint", map_location=map_location)
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise ValueError(f"{path} is not a stereo_exp training checkpoint (expected a dict with 'model' and 'step').")
    return state


class Checkpointer:
    """The checkpoints of one run directory: ``save`` (rank 0 writes), ``newest_intact``, pruning.

    Args:
        run_dir: the run directory (``paths.output``); files go to ``<run_dir>/checkpoints``.
        keep_last: checkpoints kept after each save (``checkpoint.keep_last``); the one just written always stays.
        is_main: whether this process writes (rank 0); ``save`` is a no-op elsewhere.
    """

    def __init__(self, run_dir: str | Path, *, keep_last: int, is_main: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.is_main = is_main
        self.last_saved_step: int | None = None

    def path(self, step: int) -> Path:
        return checkpoint_path(self.run_dir, step)

    def list(self) -> list[Path]:
        return list_checkpoints(self.run_dir)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` as the checkpoint of ``step`` (once per step: a periodic save, then a stop signal at
        the same step, write one file), then prune. Returns the path (on every rank)."""
        path = self.path(step)
        if self.last_saved_step == step:
            return path
        self.last_saved_step = step  # on every rank: all of them skip the same saves
        if not self.is_main:
            return path
        previous = [p for p in self.list() if p != path]  # a damaged file of this step is no fallback
        try:
            save_checkpoint(path, state)
        except CheckpointWriteError as error:
            kept = f"The newest checkpoint is still {previous[-1]}." if previous else "There is no earlier checkpoint."
            raise CheckpointWriteError(
                f"{error} {kept} Free space (or move the run directory) and run the same command again: it resumes "
                "from the newest checkpoint."
            ) from error.__cause__
        prune_checkpoints(self.run_dir, self.keep_last, protect=path)
        return path

    def newest_intact(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that reads, and its state; each newer damaged file is skipped with a warning
        naming it (it stays where it is until a save of the same step replaces it). None when there is none;
        ``DamagedCheckpointsError`` when every checkpoint is damaged."""
        damaged: list[str] = []
        for path in reversed(self.list()):
            try:
                state = load_checkpoint(path, map_location)
            except (RuntimeError, ValueError) as error:
                reason = str(error.__cause__ or error).split(". ")[0].splitlines()[0]  # torch's run for lines
                damaged.append(f"{path.name}: {reason}")
                log.warning("Skipping damaged checkpoint %s (%s)", path, reason)
                continue
            if damaged:
                log.warning("Resuming from %s, the newest intact checkpoint.", path)
            return path, state
        if damaged:
            raise DamagedCheckpointsError(
                f"No intact checkpoint in {self.run_dir / CHECKPOINT_DIR}; every one is damaged:\n  "
                + "\n  ".join(damaged)
                + "\nNothing was changed. Move that folder aside to start this run again from step 0, or start "
                "in a new run directory."
            )
        return None

    def remove_partial_writes(self) -> None:
        """Delete ``*.tmp`` files left by a write that was killed (never a complete checkpoint)."""
        if not self.is_main:
            return
        for tmp in (self.run_dir / CHECKPOINT_DIR).glob("*.tmp"):
            log.info("Removing %s, left by an interrupted checkpoint write.", tmp)
            tmp.unlink(missing_ok=True)


class DamagedCheckpointsError(RuntimeError):
    """A run directory holds checkpoints, none of which can be read."""


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
