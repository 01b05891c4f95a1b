"""bf16 autocast against fp32 on the embedded motorcycle pair: metrics, disparity differences and speed-up.

    python -m benchmarks.precision                         # CREStereo base, 40 training steps, 384x512, 10 updates
    python -m benchmarks.precision --train-steps 0         # seeded published-layout weights only

Random weights give meaningless disparities, so the comparison uses a model that has learnt something: CREStereo base
with the seeded weights of the published layout (``stereo_exp.testing.weights_layout``, the weights of the prototype
fixture) is first trained for ``--train-steps`` steps of ``stereo_exp.engine.trainer.train_step`` (fp32) on the
motorcycle pair itself, downscaled to ``--train-size``. The trained model then predicts the pair at ``--size``
(the published evaluation protocol: 384 x 512, ``--iters`` updates, one cascade) in fp32 and in bf16 autocast.
Reported: each precision's metrics against the pair's ground truth (``stereo_exp.evaluation.metrics``), their
relative difference, the disparity difference |bf16 - fp32| (mean, 99th percentile, share of pixels > 1 px), and
both latencies (median of ``--repeats``, interleaved with the ceiling as in the other benchmarks).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    MemoryProbe,
    add_common_arguments,
    autocast,
    ceilings_for,
    parse_size,
    resolve_device,
    run_benchmark,
    run_single_case,
    time_interleaved,
)
from benchmarks.train_step import step_options, training_config

NAME = "precision"
METRICS = ("mae", "rmse", "1px", "3px", "5px", "relepe", "fl-all")

COLUMNS = (
    ("model", "model"),
    ("train_steps", "trained steps"),
    ("precision", "precision"),
    ("latency_s", "latency s"),
    ("speedup", "speed-up"),
    ("mae", "mae"),
    ("3px", "3px"),
    ("fl-all", "fl-all"),
    ("max_metric_change_pct", "max metric change %"),
    ("mean_abs_diff_px", "|bf16-fp32| px"),
    ("share_diff_over_1px", "share > 1 px"),
)


def _resized_pair(sample: dict[str, torch.Tensor], size: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """The sample as a batch of 1 resized to ``size`` (bilinear images, disparity scaled with the width; the valid
    mask nearest-neighbour), as the evaluation resizes."""
    w = sample["left"].shape[-1]
    resize = {"size": tuple(size), "mode": "bilinear", "align_corners": False}
    batch = {
        "left": F.interpolate(sample["left"][None], **resize),
        "right": F.interpolate(sample["right"][None], **resize),
        "disparity": F.interpolate(sample["disparity"][None], **resize) * (size[1] / w),
        "valid": F.interpolate(sample["valid"][None].float(), size=tuple(size), mode="nearest") > 0.5,
    }
    batch["valid"] &= batch["disparity"] > 0
    return {key: value.to(device) for key, value in batch.items()}


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Train briefly, then compare fp32 and bf16 predictions of the pair; one row per precision."""
    from stereo_exp.data import build_eval_dataset
    from stereo_exp.engine.optim import build_optimizer
    from stereo_exp.engine.schedule import build_scheduler
    from stereo_exp.engine.trainer import train_step
    from stereo_exp.evaluation.metrics import per_image_metrics
    from stereo_exp.models import build_model, predict_disparity
    from stereo_exp.testing.weights_layout import layout_state_dict

    device = resolve_device(spec["device"])
    cfg = training_config(spec["model"], "fp32")
    model = build_model(cfg.model).to(device)
    model.load_state_dict(layout_state_dict(spec["model"], seed=0), strict=True)
    sample = build_eval_dataset("motorcycle", data_root=".")[0]

    # ---- a short fit to the pair (fp32), so that predictions mean something -----------------------------------
    train_batch = _resized_pair(sample, spec["train_size"], device)
    optimizer = build_optimizer(model, cfg.optim, cfg.schedule.lr)
    scheduler = build_scheduler(optimizer, cfg.schedule, max(spec["train_steps"], 1))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    options = step_options(cfg, device, None)
    losses = [
        float(train_step(model, train_batch, optimizer, scheduler, scaler, options).loss)
        for _ in range(spec["train_steps"])
    ]

    # ---- fp32 and bf16 predictions ----------------------------------------------------------------------------
    model.eval()
    batch = _resized_pair(sample, spec["size"], device)
    predictions: dict[str, torch.Tensor] = {}

    def predict(precision: str) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            return predict_disparity(model, batch["left"], batch["right"], num_iters=spec["iters"]).float()

    ceilings = ceilings_for(device)
    rows = []
    memory = MemoryProbe(device)
    for precision in ("fp32", "bf16"):
        memory.start()
        predictions[precision] = predict(precision)
        timing = time_interleaved(
            lambda p=precision: predict(p),
            device=device,
            warmup=spec["warmup"],
            repeats=spec["repeats"],
            ceilings=ceilings,
        )
        values, _ = per_image_metrics(predictions[precision], batch["disparity"], batch["valid"])
        rows.append(
            {
                "precision": precision,
                "latency_s": timing.median,
                "seconds_all": timing.seconds,
                **{name: float(values[name][0]) for name in METRICS},
                "peak_delta_mb": memory.stop()["delta_mb"],
            }
        )
    fp32, bf16 = rows
    difference = (predictions["bf16"] - predictions["fp32"]).abs()[batch["valid"]]
    bf16["speedup"] = fp32["latency_s"] / bf16["latency_s"]
    bf16["metric_change_pct"] = {
        name: 100 * abs(bf16[name] - fp32[name]) / max(abs(fp32[name]), 1e-12) for name in METRICS
    }
    bf16["max_metric_change_pct"] = max(bf16["metric_change_pct"].values())
    bf16["mean_abs_diff_px"] = float(difference.mean())
    bf16["p99_abs_diff_px"] = float(torch.quantile(difference.double(), 0.99))
    bf16["share_diff_over_1px"] = float((difference > 1).double().mean())
    bf16["mean_fp32_disparity_px"] = float(predictions["fp32"][batch["valid"]].mean())
    common = {
        "model": spec["model"],
        "train_steps": spec["train_steps"],
        "train_size": "x".join(map(str, spec["train_size"])),
        "size": "x".join(map(str, spec["size"])),
        "iters": spec["iters"],
        "train_losses": losses,
    }
    return {"rows": [{**common, **row} for row in rows]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    add_common_arguments(parser, warmup=1, repeats=3)
    parser.add_argument("--model", default="crestereo_base", help="a model with a published layout (weights_layout)")
    parser.add_argument("--train-steps", type=int, default=40, help="fp32 training steps on the pair before comparing")
    parser.add_argument("--train-size", type=parse_size, default=[192, 256], help="HxW of the training batch")
    parser.add_argument("--size", type=parse_size, default=[384, 512], help="HxW the pair is predicted at")
    parser.add_argument("--iters", type=int, default=10, help="recurrent updates")
    args = parser.parse_args(argv)
    if args.case:
        run_single_case(args, run_case)
        return
    spec = {
        "model": args.model,
        "train_steps": args.train_steps,
        "train_size": args.train_size,
        "size": args.size,
        "iters": args.iters,
    }
    run_benchmark(NAME, "benchmarks.precision", args, [spec], COLUMNS, run_case, rows_of=lambda result: result["rows"])


if __name__ == "__main__":
    main()
