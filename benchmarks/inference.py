"""Inference latency: one stereo pair through ``stereo_exp.models.predict_disparity``, per model and precision.

    python -m benchmarks.inference                               # 384x512, 10 updates, CREStereo and RAFT-Stereo
    python -m benchmarks.inference --models crestereo_base --precisions fp32 --repeats 5
    python -m benchmarks.inference --device cuda                 # the same table on a GPU
    python -m benchmarks.inference --models raft_stereo_realtime --precisions bf16 --compile false,true --warmup 3
    python -m benchmarks.inference --models crestereo_base --overrides "" "model.channels_last=true"   # config variants

What runs is what ``python -m stereo_exp.predict`` and the evaluation run per image: the model in eval mode under
``torch.inference_mode()`` (and autocast for bf16/fp16), padding to the size multiple, ``--iters`` recurrent updates,
one cascade level. Batch 1 (latency). The pair is seeded noise with a constant 8 px disparity: the cost does not
depend on the content. FLOPs and timing as in ``benchmarks.train_step`` (first untimed run: plain reference path
under ``FlopCounterMode``; second: fast paths; then ``--warmup`` and ``--repeats``). ``--compile true`` runs the
recurrent updates compiled (``compile_updates(in_eval=True)``, mode as ``speed.compile_mode`` resolves on the
device: CUDA graphs on a GPU); compilation happens in the warm-up runs, whose seconds are reported.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.common import (
    add_common_arguments,
    add_variant_arguments,
    autocast,
    measure,
    parse_bool,
    parse_list,
    parse_size,
    resolve_device,
    run_benchmark,
    run_single_case,
)
from benchmarks.train_step import synthetic_batch, training_config

NAME = "inference"
MODELS = ("crestereo_base", "raft_stereo_base", "raft_stereo_realtime")

COLUMNS = (
    ("model", "model"),
    ("size", "size"),
    ("iters", "iters"),
    ("precision", "precision"),
    ("fast_paths", "fast"),
    ("compiled", "compiled"),
    ("overrides", "overrides"),
    ("latency_s", "latency s"),
    ("frames_per_s", "frames/s"),
    ("model_gflop", "GFLOP"),
    ("executed_gflop", "executed"),
    ("achieved_gflops", "GFLOP/s"),
    ("ceiling_gflops", "ceiling"),
    ("share_pct", "share %"),
    ("peak_delta_mb", "peak MiB"),
    ("warmup_seconds", "warm-up s"),
)


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One (model, size, iterations, precision) case; see the module docstring for what runs."""
    from stereo_exp.models import build_model, predict_disparity
    from stereo_exp.models.speed import resolve_speed

    device = resolve_device(spec["device"])
    cfg = training_config(spec["model"], spec["precision"], fast_paths=spec["fast_paths"], overrides=spec["overrides"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).eval()
    batch = synthetic_batch(1, spec["size"], device)

    def predict() -> None:
        with torch.inference_mode(), autocast(device, spec["precision"]):
            predict_disparity(model, batch["left"], batch["right"], num_iters=spec["iters"])

    def compile_updates() -> None:
        if spec["compiled"]:
            model.compile_updates(in_eval=True, mode=resolve_speed(cfg.speed, device).compile_mode)

    measured = measure(predict, model, spec, device, prepare=compile_updates)
    return {
        "model": spec["model"],
        "size": "x".join(map(str, spec["size"])),
        "iters": spec["iters"],
        "precision": spec["precision"],
        "fast_paths": spec["fast_paths"],
        "compiled": spec["compiled"],
        "overrides": " ".join(spec["overrides"]),
        "latency_s": measured["seconds"],
        "frames_per_s": 1 / measured["seconds"],
        **measured,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.splitlines()[0])
    add_common_arguments(parser, warmup=1, repeats=3)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registered model names")
    parser.add_argument("--size", type=parse_size, default=[384, 512], help="HxW of the pair")
    parser.add_argument("--iters", type=int, default=10, help="recurrent updates")
    add_variant_arguments(parser)
    parser.add_argument("--compile", default="false", help="false | true | false,true: compiled recurrent updates")
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[""],
        help='config variants, each a space-separated list of Hydra overrides, e.g. "" "model.channels_last=true"',
    )
    args = parser.parse_args(argv)
    if args.case:
        run_single_case(args, run_case)
        return
    specs = [
        {
            "model": model,
            "size": args.size,
            "iters": args.iters,
            "precision": precision,
            "fast_paths": fast,
            "compiled": compiled,
            "overrides": variant.split(),
        }
        for variant in args.overrides
        for model in parse_list(args.models)
        for precision in parse_list(args.precisions)
        for fast in parse_list(args.fast_paths, parse_bool)
        for compiled in parse_list(args.compile, parse_bool)
    ]
    run_benchmark(NAME, "benchmarks.inference", args, specs, COLUMNS, run_case)


if __name__ == "__main__":
    main()
