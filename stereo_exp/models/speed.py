"""How a model is executed for training: the ``speed`` config section (``stereo_exp.schemas.SpeedConfig``) per device.

``prepare_for_training(model, cfg.speed, device)`` is the one call the trainer makes after building the model (and
wrapping it in DDP): it resolves every ``null`` of the section for the device and applies it.

* ``compile``: ``torch.compile`` of the recurrent updates (``CREStereo.compile_updates``,
  ``RaftStereo.compile_updates``; regional compilation: a few graphs serve every update). Static shapes: one graph
  per pyramid level and search window (CREStereo: 6, RAFT-Stereo: 1), the crop being fixed for a run; inductor
  (torch 2.14) fails on CREStereo's update with symbolic shapes, and evaluation, whose sizes vary, runs eager. On a
  GPU the step is bound by kernel launches and host work (issue 12: 3% of the bf16 matmul rate), which compiled
  code, with CUDA graphs (``compile_mode`` reduce-overhead), removes; on by default there. On a CPU inductor fuses
  the elementwise work around the convolutions, but building the graphs takes minutes on 2 cores
  (docs/PERFORMANCE.md has the figures), more than it saves in the embedded default's 4-minute run: off by default
  there, worth turning on for long runs.
* ``keep_freed_memory``: glibc returns every large freed block to the operating system, so each training step
  page-faults its activations back in (hundreds of MB). Raising glibc's mmap and trim thresholds (``mallopt``) keeps
  freed memory for reuse; on by default on CPU, where that is measurable (docs/PERFORMANCE.md). Process-wide, and
  inherited by DataLoader workers forked afterwards; peak memory is unchanged (freed blocks are reused, not added).

The fast paths of the models (``model.fast_paths``) and the optimizer's fused kernel (``optim.implementation``) are
the other speed settings; they live with what they change.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from stereo_exp.models.registry import unwrap_ddp
from stereo_exp.schemas import SpeedConfig

__all__ = ["ResolvedSpeed", "keep_freed_memory", "prepare_for_training", "resolve_speed"]

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h) and the values ``keep_freed_memory`` sets.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 2**30  # blocks below 1 GiB come from the heap, whose freed memory can be reused without faults
_TRIM_THRESHOLD = 2**31 - 1  # never give free memory at the top of the heap back to the OS (the largest int)
_TOP_PAD = 2**26  # grow the heap 64 MiB beyond each request: fewer, larger extensions


@dataclass(frozen=True)
class ResolvedSpeed:
    """``SpeedConfig`` with every ``null`` replaced by the device's default."""

    compile: bool
    compile_mode: str
    keep_freed_memory: bool


def resolve_speed(cfg: SpeedConfig | DictConfig | None, device: torch.device | str) -> ResolvedSpeed:
    """The settings ``prepare_for_training`` applies on ``device``: the config's values, its nulls per device."""
    if cfg is None:
        cfg = SpeedConfig()
    elif isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SpeedConfig), cfg))
    cuda = torch.device(device).type == "cuda"
    return ResolvedSpeed(
        compile=cuda if cfg.compile is None else cfg.compile,
        compile_mode=cfg.compile_mode or ("reduce-overhead" if cuda else "default"),
        keep_freed_memory=(not cuda) if cfg.keep_freed_memory is None else cfg.keep_freed_memory,
    )


def prepare_for_training(
    model: nn.Module, cfg: SpeedConfig | DictConfig | None, device: torch.device | str
) -> nn.Module:
    """Apply the ``speed`` section to ``model`` (the network or its DDP wrapper) and to this process; returns
    ``model`` itself, ready to train (its state_dict keys are unchanged).

    A model without ``compile_updates`` is trained as it is when ``speed.compile`` is null, and refused with an
    explanation when it is true.
    """
    speed = resolve_speed(cfg, device)
    network = unwrap_ddp(model)
    compile_updates = getattr(network, "compile_updates", None) if speed.compile else None
    if speed.compile and compile_updates is None and cfg is not None and cfg.compile:
        raise ValueError(
            f"speed.compile=true: {type(network).__name__} has no compile_updates method (the models of "
            "stereo_exp.models have one); set speed.compile=false."
        )
    if speed.keep_freed_memory and keep_freed_memory():
        log.info("speed.keep_freed_memory: glibc keeps freed memory for reuse (mallopt).")
    if compile_updates is not None:
        compile_updates(mode=speed.compile_mode, dynamic=False)
        log.info(
            "speed.compile: recurrent updates compiled (mode %s); the first steps include building the graphs.",
            speed.compile_mode,
        )
    elif speed.compile:
        log.info("speed.compile: %s has no compile_updates; training it uncompiled.", type(network).__name__)
    return model


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (process-wide); False where there is no glibc ``mallopt``.

    By default glibc serves blocks above a (dynamic, at most 32 MiB) threshold with ``mmap`` and returns them with
    ``munmap``, and trims the heap top beyond 128 KiB: a tensor allocated after another was freed starts as fresh
    pages, each one a page fault when first written. Equivalent to MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_
    and MALLOC_TOP_PAD_ in the environment, set from Python because the trainer is not started by a wrapper.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or not glibc (musl has no mallopt, macOS)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
    return all([mallopt(parameter, value) == 1 for parameter, value in settings])
