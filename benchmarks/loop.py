"""The training loop end to end: the published recipe on full-size replicas of its data, launched by torchrun.

    python -m benchmarks.loop --device cuda                         # 1 GPU: crestereo_eth_mbl, 384x512, batch 2
    python -m benchmarks.loop --device cuda --nproc 8 --steps 200   # every GPU of a node (NCCL)
    python -m benchmarks.loop --device cpu --steps 20 --overrides model=crestereo_tiny "augmentation.crop_size=[96,128]"

What runs is what a user runs: ``torchrun --standalone --nproc_per_node N -m stereo_exp experiment=crestereo_eth_mbl``
(NCCL on GPUs, gloo on CPUs) with ``paths.data`` on replicas of the recipe's three data sets in their real formats and
at their real frame sizes (``stereo_exp.testing.dataset_replicas``: CREStereo 1080x1920 JPEG + 16-bit PNG disparities,
ETH3D 480x752 grey PNG + PFM, Middlebury 2014 "additional" 1988x2880 PNG + PFM), the recipe's augmentation, loader
workers and speed defaults, ``--steps`` steps, MLflow into a local SQLite file. Every ``train.log_every`` steps the
trainer records ``train/samples_per_s`` and ``train/data_wait_share`` (the share of step time spent waiting for the
next batch); this script reads them back and reports the first window (compilation happens there) and the median of
the others. Compare samples/s with ``benchmarks.train_step`` at the same crop and batch: the loop keeps up when it
reaches the step's rate, the data keeps up when data_wait_share stays near 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "outputs" / "benchmarks"
RECIPE = "crestereo_eth_mbl"
# Frame sizes (H, W) of the recipe's data sets: CREStereo's synthetic set, ETH3D low-res two-view, Middlebury 2014 at
# full resolution (Adirondack).
FRAMES = {"crestereo": (1080, 1920), "eth3d-train": (480, 752), "middlebury2014-other": (1988, 2880)}


def write_replicas(root: Path) -> None:
    """The recipe's three data sets under ``root``, a few frames each at full size, in their real formats."""
    from stereo_exp.testing.dataset_replicas import write_crestereo, write_eth3d, write_middlebury2014

    write_crestereo(root, per_folder=2, size=FRAMES["crestereo"])
    write_eth3d(root, size=FRAMES["eth3d-train"])
    write_middlebury2014(root, split="additional", size=FRAMES["middlebury2014-other"])


def read_metrics(uri: str) -> dict[str, list[tuple[int, float]]]:
    """Every ``train/*`` metric history of the only run in the MLflow store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"] or client.search_experiments()
    (run,) = client.search_runs([experiment.experiment_id])
    names = [name for name in run.data.metrics if name.startswith("train/")]
    return {name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)] for name in names}


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="stereo_exp_loop_"))
    try:
        tic = time.perf_counter()
        write_replicas(scratch / "data")
        written_s = time.perf_counter() - tic
        uri = f"sqlite:///{scratch / 'mlflow.db'}"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "stereo_exp",
            f"experiment={RECIPE}",
            f"paths.data={scratch / 'data'}",
            f"hydra.run.dir={scratch / 'run'}",
            f"train.device={args.device}",
            f"train.max_steps={args.steps}",
            f"train.log_every={args.log_every}",
            "train.val_every=1000000",
            "eval.max_samples=2",
            "eval.save_images=0",
            f"tracking.uri={uri}",
            "tracking.log_checkpoint=false",
            *args.overrides,
        ]
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        print("$ " + " ".join(command), flush=True)
        tic = time.perf_counter()
        subprocess.run(command, cwd=scratch, env=env, check=True)
        wall_s = time.perf_counter() - tic
        metrics = read_metrics(uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    windows = {name: [value for _, value in history] for name, history in metrics.items()}
    rate, wait = windows.get("train/samples_per_s", []), windows.get("train/data_wait_share", [])
    record = {
        "benchmark": "loop",
        "recipe": RECIPE,
        "device": args.device,
        "nproc": args.nproc,
        "steps": args.steps,
        "log_every": args.log_every,
        "overrides": args.overrides,
        "replicas_written_s": written_s,
        "torchrun_wall_s": wall_s,
        "first_window": {"samples_per_s": rate[:1], "data_wait_share": wait[:1]},
        "later_windows_median": {
            "samples_per_s": statistics.median(rate[1:]) if len(rate) > 1 else None,
            "data_wait_share": statistics.median(wait[1:]) if len(wait) > 1 else None,
        },
        "metrics": metrics,
    }
    later = record["later_windows_median"]
    print(
        f"\nloop: {RECIPE} on replicas, {args.nproc} x {args.device}, {args.steps} steps, logged every "
        f"{args.log_every}; torchrun wall {wall_s:.0f} s\n"
        f"  first window (compilation):   samples/s {rate[:1]}  data_wait_share {wait[:1]}\n"
        f"  later windows, median:        samples/s {later['samples_per_s']}  "
        f"data_wait_share {later['data_wait_share']}"
    )
    out = args.out or DEFAULT_OUTPUT / f"loop-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"JSON: {out}")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (NCCL) | cpu (gloo)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) of the one node")
    parser.add_argument("--steps", type=int, default=100, help="training steps")
    parser.add_argument("--log-every", type=int, default=10, help="steps per logged window")
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides of the run")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default: outputs/benchmarks/loop-DEVICE.json)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
