"""Wall time of the cascade-evaluation grid (``stereo_exp.evaluation.cascade.evaluate_grid``).

    python -m benchmarks.cascade_eval                  # CREStereo base, published grid on the embedded motorcycle pair
    python -m benchmarks.cascade_eval --n-iterations 2,5 --precisions fp32 --repeats 1
    python -m benchmarks.cascade_eval --dataset middlebury2014-train --data-root /datasets   # real data

The grid of ``conf/evaluate.yaml`` (cascades 1, 2 x iterations 2, 5, 10, 20 at 384 x 512), single process, batch
1, on the embedded Middlebury 2014 motorcycle pair (shipped with scikit-image: nothing to download). One timed run
is the whole grid over the dataset, what ``python -m stereo_exp.evaluate`` spends besides start-up. The first
untimed grid counts the plain path's FLOPs, the second the fast paths'; they also warm up, so ``--warmup`` is 0 by
default. The model has seeded random weights: the metrics are meaningless and not reported, the cost is the same.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.common import (
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
from benchmarks.train_step import training_config

NAME = "cascade_eval"

COLUMNS = (
    ("model", "model"),
    ("dataset", "dataset"),
    ("images", "images"),
    ("grid", "cascades x iters"),
    ("precision", "precision"),
    ("fast_paths", "fast"),
    ("seconds", "grid s"),
    ("seconds_per_image", "s/image"),
    ("model_gflop", "GFLOP"),
    ("achieved_gflops", "GFLOP/s"),
    ("ceiling_gflops", "ceiling"),
    ("share_pct", "share %"),
    ("peak_delta_mb", "peak MiB"),
)


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One (model, dataset, grid, precision) case; see the module docstring for what runs."""
    from stereo_exp.data import build_eval_dataset
    from stereo_exp.distributed import DistEnv
    from stereo_exp.evaluation.cascade import evaluate_grid
    from stereo_exp.models import build_model
    from stereo_exp.schemas import amp_dtype

    device = resolve_device(spec["device"])
    cfg = training_config(spec["model"], spec["precision"], fast_paths=spec["fast_paths"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).eval()
    size = tuple(spec["size"]) if spec["size"] else None
    dataset = build_eval_dataset(spec["dataset"], data_root=spec["data_root"], size=size)
    dist = DistEnv(device=device)

    def grid() -> None:
        evaluate_grid(
            model,
            dataset,
            n_cascades=spec["n_cascades"],
            n_iterations=spec["n_iterations"],
            batch_size=1,
            dist=dist,
            device=device,
            amp_dtype=amp_dtype(spec["precision"]),
            progress=False,
        )

    measured = measure(grid, model, spec, device)
    return {
        "model": spec["model"],
        "dataset": spec["dataset"],
        "size": "native" if size is None else "x".join(map(str, size)),
        "images": len(dataset),
        "grid": f"{spec['n_cascades']} x {spec['n_iterations']}".replace(" ", ""),
        "precision": spec["precision"],
        "fast_paths": spec["fast_paths"],
        "seconds_per_image": measured["seconds"] / len(dataset),
        **measured,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cascade_eval", description=__doc__.splitlines()[0])
    add_common_arguments(parser, warmup=0, repeats=2)
    parser.add_argument("--models", default="crestereo_base", help="comma-separated registered model names")
    parser.add_argument("--dataset", default="motorcycle", help="catalog name of the evaluation set")
    parser.add_argument("--data-root", default="data", help="paths.data for datasets on disk (embedded: ignored)")
    parser.add_argument("--size", type=parse_size, default=[384, 512], help="HxW the images are resized to")
    parser.add_argument("--n-cascades", default="1,2", help="comma-separated cascade counts")
    parser.add_argument("--n-iterations", default="2,5,10,20", help="comma-separated recurrent update counts")
    add_variant_arguments(parser)
    args = parser.parse_args(argv)
    if args.case:
        run_single_case(args, run_case)
        return
    specs = [
        {
            "model": model,
            "dataset": args.dataset,
            "data_root": args.data_root,
            "size": args.size,
            "n_cascades": parse_list(args.n_cascades, int),
            "n_iterations": parse_list(args.n_iterations, int),
            "precision": precision,
            "fast_paths": fast,
        }
        for model in parse_list(args.models)
        for precision in parse_list(args.precisions)
        for fast in parse_list(args.fast_paths, parse_bool)
    ]
    run_benchmark(NAME, "benchmarks.cascade_eval", args, specs, COLUMNS, run_case)


if __name__ == "__main__":
    main()
