"""Training-step throughput: forward + sequence loss + backward + clip + optimizer + schedule, per model and crop.

    python -m benchmarks.train_step                                    # CREStereo base, RAFT-Stereo base/realtime
    python -m benchmarks.train_step --models crestereo_base --crops 256x320 --precisions fp32 --repeats 5
    python -m benchmarks.train_step --device cuda --batch-size 2       # the same table on a GPU
    python -m benchmarks.train_step --overrides "" "speed.compile=true" --warmup 2   # config variants

Each step is ``stereo_exp.engine.trainer.train_step``, the function the training loop calls, on the composed
training config of the model (``conf/model/<name>.yaml``: its ``train_iters`` recurrent updates, the sequence loss,
Adam), with the ``speed`` section applied by ``stereo_exp.models.prepare_for_training`` as the trainer applies it
(per-device defaults, or ``--overrides``), so the figures are what ``python -m stereo_exp model=<name>`` spends per
step, data loading aside (``benchmarks.data_pipeline`` measures that). The batch is a synthetic pair with a constant
8 px disparity: the cost of a step does not depend on the image content.

Batch size: 1 by default. On a CPU one 256x320 crop already gives each convolution thousands of output pixels per
thread, so a larger batch only multiplies the time per step (samples/s stays within noise); on a GPU pass the
recipe's per-GPU batch (``--batch-size``).

FLOPs: the first untimed step runs the plain reference computation under ``FlopCounterMode`` (model FLOPs, the
numerator of the share), the second the fast paths (executed FLOPs), both eager; then the speed section applies,
``--warmup`` more untimed steps (their seconds are reported: compilation happens there) and ``--repeats`` timed
ones. Warm-up steps update the weights like any step: timing does not depend on their values.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from benchmarks.common import (
    REPO_ROOT,
    add_common_arguments,
    add_variant_arguments,
    measure,
    parse_bool,
    parse_list,
    parse_size,
    resolve_device,
    run_benchmark,
    run_single_case,
)

NAME = "train_step"
MODELS = ("crestereo_base", "raft_stereo_base", "raft_stereo_realtime")
CROPS = ("256x320", "384x512")
DISPARITY_PX = 8  # of the synthetic batch: right = left shifted by this many pixels

COLUMNS = (
    ("model", "model"),
    ("crop", "crop"),
    ("batch", "batch"),
    ("precision", "precision"),
    ("fast_paths", "fast"),
    ("overrides", "overrides"),
    ("samples_per_s", "samples/s"),
    ("seconds_per_step", "s/step"),
    ("model_gflop", "GFLOP/step"),
    ("executed_gflop", "executed"),
    ("achieved_gflops", "GFLOP/s"),
    ("ceiling_gflops", "ceiling"),
    ("share_pct", "share %"),
    ("peak_delta_mb", "peak MiB"),
    ("warmup_seconds", "warm-up s"),
)


def training_config(
    model: str, precision: str, *, fast_paths: bool = True, overrides: Sequence[str] = ()
) -> DictConfig:
    """The composed training config (``conf/config.yaml``) with ``model``, ``train.precision``, ``model.fast_paths``
    and then ``overrides`` (Hydra syntax) overridden."""
    from stereo_exp.config import register_configs

    register_configs()
    chosen = [f"model={model}", f"train.precision={precision}", f"model.fast_paths={str(fast_paths).lower()}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        return compose("config", overrides=[*chosen, "tracking=none", *overrides])


def step_options(cfg: DictConfig, device: torch.device, autocast_dtype: torch.dtype | None) -> Any:
    """``train_step``'s settings (``StepOptions``) from the composed ``cfg``, at ``autocast_dtype``."""
    from stereo_exp.engine.trainer import StepOptions

    loss = OmegaConf.to_object(cfg.loss)
    return StepOptions(cfg.model.train_iters, loss, cfg.optim.clip_grad_norm, autocast_dtype, device)  # type: ignore[arg-type]


def synthetic_batch(batch_size: int, crop: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """A contract batch (docs/ARCHITECTURE.md): seeded noise images whose right view is the left one shifted by
    ``DISPARITY_PX``, that constant disparity, every pixel valid."""
    generator = torch.Generator().manual_seed(0)
    left = torch.rand(batch_size, 3, *crop, generator=generator) * 2 - 1
    right = torch.roll(left, shifts=-DISPARITY_PX, dims=-1)  # x_right = x_left - d
    disparity = torch.full((batch_size, 1, *crop), float(DISPARITY_PX))
    batch = {
        "left": left,
        "right": right,
        "disparity": disparity,
        "valid": torch.ones_like(disparity, dtype=torch.bool),
    }
    return {key: value.to(device) for key, value in batch.items()}


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One (model, crop, batch, precision) case; see the module docstring for what runs."""
    from stereo_exp.engine.optim import build_optimizer
    from stereo_exp.engine.schedule import build_scheduler
    from stereo_exp.engine.trainer import train_step
    from stereo_exp.models import build_model, prepare_for_training
    from stereo_exp.schemas import amp_dtype

    device = resolve_device(spec["device"])
    cfg = training_config(spec["model"], spec["precision"], fast_paths=spec["fast_paths"], overrides=spec["overrides"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim, cfg.schedule.lr)
    scheduler = build_scheduler(optimizer, cfg.schedule, sum(cfg.mix.dataset_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=spec["precision"] == "fp16")
    batch = synthetic_batch(spec["batch_size"], spec["crop"], device)
    options = step_options(cfg, device, amp_dtype(spec["precision"]))

    def step() -> None:
        train_step(model, batch, optimizer, scheduler, scaler, options)

    # FLOPs are counted on the eager model, then the speed section applies (compilation: in the warm-up steps).
    measured = measure(step, model, spec, device, prepare=lambda: prepare_for_training(model, cfg.speed, device))
    return {
        "model": spec["model"],
        "overrides": " ".join(spec["overrides"]),
        "crop": "x".join(map(str, spec["crop"])),
        "batch": spec["batch_size"],
        "precision": spec["precision"],
        "fast_paths": spec["fast_paths"],
        "train_iters": int(cfg.model.train_iters),
        "samples_per_s": spec["batch_size"] / measured["seconds"],
        "seconds_per_step": measured["seconds"],
        **measured,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0])
    add_common_arguments(parser, warmup=1, repeats=3)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registered model names")
    parser.add_argument("--crops", default=",".join(CROPS), help="comma-separated HxW crops")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per step (see the module docstring)")
    add_variant_arguments(parser)
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[""],
        help='config variants, each a space-separated list of Hydra overrides, e.g. "" "speed.compile=true"',
    )
    args = parser.parse_args(argv)
    if args.case:
        run_single_case(args, run_case)
        return
    specs = [
        {
            "model": model,
            "crop": parse_size(crop),
            "batch_size": args.batch_size,
            "precision": precision,
            "fast_paths": fast,
            "overrides": variant.split(),
        }
        for variant in args.overrides
        for model in parse_list(args.models)
        for crop in parse_list(args.crops)
        for precision in parse_list(args.precisions)
        for fast in parse_list(args.fast_paths, parse_bool)
    ]
    run_benchmark(NAME, "benchmarks.train_step", args, specs, COLUMNS, run_case)


if __name__ == "__main__":
    main()
