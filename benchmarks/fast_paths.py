"""What the fast paths and bf16 buy: plain vs fast, fp32 vs bf16, timed alternately in one process.

    python -m benchmarks.fast_paths                                    # CREStereo base: inference and train step
    python -m benchmarks.fast_paths --models crestereo_base,raft_stereo_base --workloads inference --repeats 5

Two copies of the model with the same seeded weights, one built with ``fast_paths=False`` (the plain computation,
channels-first weights: the code before the optimisations) and one with the fast paths, each run in fp32 and in
bf16 autocast. The four variants alternate within every repeat (plain fp32, fast fp32, plain bf16, fast bf16, then
again), each bracketed by ceiling samples, so a change of load during the run hits all of them alike; speed-ups are
medians of per-repeat ratios. Workloads: ``inference`` (``predict_disparity`` at ``--size``, ``--iters`` updates,
batch 1) and ``train`` (``stereo_exp.engine.trainer.train_step`` at ``--crop``, batch 1, each copy with its own
Adam). Model FLOPs (the share's numerator) are those of the plain fp32 variant.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import (
    add_common_arguments,
    autocast,
    ceilings_for,
    count_flops,
    parse_list,
    parse_size,
    resolve_device,
    run_benchmark,
    run_single_case,
    time_alternating,
    timing_fields,
)
from benchmarks.train_step import step_options, synthetic_batch, training_config

NAME = "fast_paths"
VARIANTS = (("plain", "fp32"), ("fast", "fp32"), ("plain", "bf16"), ("fast", "bf16"))

COLUMNS = (
    ("model", "model"),
    ("workload", "workload"),
    ("size", "size"),
    ("precision", "precision"),
    ("path", "path"),
    ("seconds", "median s"),
    ("seconds_best", "best s"),
    ("share_pct", "share %"),
    ("share_best_pct", "best share %"),
    ("speedup_vs_plain_fp32", "speed-up"),
    ("speedup_vs_plain_same_precision", "vs plain"),
)


def _workload(spec: dict[str, Any], device: torch.device) -> dict[str, Callable[[], None]]:
    """One callable per (path, precision) variant."""
    from stereo_exp.engine.optim import build_optimizer
    from stereo_exp.engine.schedule import build_scheduler
    from stereo_exp.engine.trainer import train_step
    from stereo_exp.models import build_model, predict_disparity
    from stereo_exp.schemas import amp_dtype

    models = {}
    for path in ("plain", "fast"):
        cfg = training_config(spec["model"], "fp32", fast_paths=path == "fast")
        torch.manual_seed(0)  # the same weights in both copies
        models[path] = (build_model(cfg.model).to(device), cfg)
    fns: dict[str, Callable[[], None]] = {}
    if spec["workload"] == "inference":
        batch = synthetic_batch(1, spec["size"], device)
        for path, precision in VARIANTS:
            model = models[path][0].eval()

            def predict(model=model, precision=precision) -> None:
                with torch.inference_mode(), autocast(device, precision):
                    predict_disparity(model, batch["left"], batch["right"], num_iters=spec["iters"])

            fns[f"{path} {precision}"] = predict
        return fns
    batch = synthetic_batch(1, spec["size"], device)
    for path, precision in VARIANTS:
        model, cfg = models[path]
        optimizer = build_optimizer(model, cfg.optim, cfg.schedule.lr)
        scheduler = build_scheduler(optimizer, cfg.schedule, sum(cfg.mix.dataset_steps))
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        options = step_options(cfg, device, amp_dtype(precision))

        def step(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, options=options) -> None:
            train_step(model, batch, optimizer, scheduler, scaler, options)

        fns[f"{path} {precision}"] = step
    return fns


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One (model, workload): the four variants, alternating."""
    device = resolve_device(spec["device"])
    fns = _workload(spec, device)
    model_flops = count_flops(fns["plain fp32"])
    executed_flops = count_flops(fns["fast fp32"])
    timings = time_alternating(
        fns, device=device, warmup=spec["warmup"], repeats=spec["repeats"], ceilings=ceilings_for(device)
    )
    base = timings["plain fp32"].seconds
    rows = []
    for path, precision in VARIANTS:
        timing = timings[f"{path} {precision}"]
        same_precision = timings[f"plain {precision}"].seconds
        rows.append(
            {
                "model": spec["model"],
                "workload": spec["workload"],
                "size": "x".join(map(str, spec["size"])),
                "iters": spec["iters"] if spec["workload"] == "inference" else "train_iters",
                "precision": precision,
                "path": path,
                **timing_fields(timing, model_flops, executed_flops if path == "fast" else model_flops, precision),
                "speedup_vs_plain_fp32": statistics.median(b / t for b, t in zip(base, timing.seconds, strict=True)),
                "speedup_vs_plain_same_precision": statistics.median(
                    b / t for b, t in zip(same_precision, timing.seconds, strict=True)
                ),
            }
        )
    return {"rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fast_paths", description=__doc__.splitlines()[0])
    add_common_arguments(parser, warmup=1, repeats=3)
    parser.add_argument("--models", default="crestereo_base", help="comma-separated registered model names")
    parser.add_argument("--workloads", default="inference,train", help="comma-separated: inference | train")
    parser.add_argument("--size", type=parse_size, default=[384, 512], help="HxW of the inference pair")
    parser.add_argument("--iters", type=int, default=10, help="recurrent updates of the inference")
    parser.add_argument("--crop", type=parse_size, default=[256, 320], help="HxW of the training crop")
    args = parser.parse_args(argv)
    if args.case:
        run_single_case(args, run_case)
        return
    specs = [
        {
            "model": model,
            "workload": workload,
            "size": args.size if workload == "inference" else args.crop,
            "iters": args.iters,
        }
        for model in parse_list(args.models)
        for workload in parse_list(args.workloads)
    ]
    run_benchmark(NAME, "benchmarks.fast_paths", args, specs, COLUMNS, run_case, rows_of=lambda result: result["rows"])


if __name__ == "__main__":
    main()
