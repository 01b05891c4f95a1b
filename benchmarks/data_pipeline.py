"""Data pipeline throughput: Middlebury-sized frames on disk -> augmented training crops, per worker count.

    python -m benchmarks.data_pipeline                         # workers 0, 1, 2; 1988x2880 frames; 384x512 crops
    python -m benchmarks.data_pipeline --workers 2,4 --samples 40

A Middlebury 2014 training replica in its real on-disk format (PNG views, PFM disparities, calib.txt; written by
``stereo_exp.testing.dataset_replicas`` into a temporary folder, removed afterwards) with full-size frames (1988 x
2880, the size of Adirondack) feeds ``stereo_exp.data.build_train_loader`` with the published CREStereo augmentation
(``conf/augmentation/crestereo.yaml``: random scale 0.6-1.0, 384 x 512 crop, colour and spatial augmentation), batch
1, exactly as training reads it. Per worker count: time to the first sample (worker start-up), then samples/s over
the following ``--samples`` samples (less those the workers had prefetched), and CPU seconds per sample (this
process and its workers together: what the loader takes away from the training step on a CPU-only machine). The
replica's pixels are blocky noise: PNG compresses it less well than photographs, so decoding is, if anything,
slower than on the real files.

Compare samples/s with ``benchmarks.train_step``'s samples/s of the same crop: the loader keeps a step fed when it
produces samples at least as fast as the step consumes them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MemoryProbe,
    add_common_arguments,
    children_peak_rss_mb,
    parse_list,
    parse_size,
    resolve_device,
    run_benchmark,
    run_single_case,
)

NAME = "data_pipeline"
FRAME_SIZE = (1988, 2880)  # (H, W) of Middlebury 2014's Adirondack at full resolution
SCENES = ("Adirondack", "Jadeplant")  # official training scene names (torchvision checks them)

COLUMNS = (
    ("workers", "workers"),
    ("frame", "frame"),
    ("crop", "crop"),
    ("samples", "samples"),
    ("first_sample_s", "first s"),
    ("samples_per_s", "samples/s"),
    ("cpu_s_per_sample", "CPU s/sample"),
    ("peak_delta_mb", "peak MiB"),
    ("worker_peak_mb", "worker MiB"),
)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its terminated, waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_replica(root: Path, frame: list[int]) -> None:
    """The Middlebury 2014 training replica (``SCENES``, perfect calibration) with ``frame``-sized views."""
    from stereo_exp.testing.dataset_replicas import write_middlebury2014

    write_middlebury2014(root, split="train", scenes=SCENES, calibrations=("perfect",), size=(frame[0], frame[1]))


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One worker count: writes the replica, reads ``samples + 1`` batches, times them."""
    from stereo_exp.config import LoaderConfig
    from stereo_exp.data import AugmentationConfig, MixConfig, build_train_loader
    from stereo_exp.data.options import DatasetOptions

    device = resolve_device(spec["device"])
    samples = spec["samples"]
    with tempfile.TemporaryDirectory(prefix="stereo_exp_bench_") as root:
        # Written by a child process: the full-size arrays would otherwise set this process's peak memory.
        writer = multiprocessing.get_context("spawn").Process(target=write_replica, args=(Path(root), spec["frame"]))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise RuntimeError(f"Writing the Middlebury replica into {root} failed (exit code {writer.exitcode}).")
        loader = build_train_loader(
            MixConfig(datasets=["middlebury2014-train"], dataset_steps=[samples + 1]),
            AugmentationConfig(crop_size=list(spec["crop"])),
            LoaderConfig(num_workers=spec["workers"], persistent_workers=False),
            data_root=root,
            dataset_options=DatasetOptions(),
            batch_size=1,
            seed=0,
        )
        # Workers prepare up to workers x prefetch_factor samples ahead; they are ready when the first one arrives,
        # so the steady rate is timed from the sample after them.
        ahead = spec["workers"] * loader.prefetch_factor if spec["workers"] else 0
        memory = MemoryProbe(device)
        memory.start()
        cpu_start, tic = _cpu_seconds(), time.perf_counter()
        batches = iter(loader)
        first = next(batches)
        first_seconds = time.perf_counter() - tic
        for _ in range(ahead):
            next(batches)
        tic = time.perf_counter()
        count = sum(1 for _ in batches)  # the workers exit when the loader is exhausted: their CPU time is counted
        seconds = time.perf_counter() - tic
        cpu = _cpu_seconds() - cpu_start
        peak = memory.stop()
    if count != samples - ahead or tuple(first["left"].shape[-2:]) != tuple(spec["crop"]):
        raise RuntimeError(f"Expected {samples - ahead} timed batches of {spec['crop']} crops; got {count}.")
    return {
        "workers": spec["workers"],
        "frame": "x".join(map(str, spec["frame"])),
        "crop": "x".join(map(str, spec["crop"])),
        "samples": count,
        "first_sample_s": first_seconds,
        "samples_per_s": count / seconds,
        "cpu_s_per_sample": cpu / (samples + 1),
        "peak_mb": peak["peak_mb"],
        "peak_delta_mb": peak["delta_mb"],
        "worker_peak_mb": children_peak_rss_mb() if spec["workers"] else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__.splitlines()[0])
    add_common_arguments(parser, warmup=0, repeats=1)  # warm-up / repeats: unused (one pass per worker count)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--frame", type=parse_size, default=list(FRAME_SIZE), help="HxW of the replica's frames")
    parser.add_argument("--crop", type=parse_size, default=[384, 512], help="HxW of the training crops")
    parser.add_argument(
        "--samples",
        type=int,
        default=20,
        help="samples read after the first (the timed ones follow the workers' prefetched samples)",
    )
    args = parser.parse_args(argv)
    if args.case:
        run_single_case(args, run_case)
        return
    if args.samples <= max(parse_list(args.workers, int)) * 2:
        parser.error("--samples must exceed twice the largest worker count (prefetched samples are not timed)")
    specs = [
        {"workers": workers, "frame": args.frame, "crop": args.crop, "samples": args.samples}
        for workers in parse_list(args.workers, int)
    ]
    run_benchmark(NAME, "benchmarks.data_pipeline", args, specs, COLUMNS, run_case)


if __name__ == "__main__":
    main()
