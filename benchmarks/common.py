"""Measuring tools shared by every benchmark: machine description, matmul ceiling, FLOP counts, interleaved timing,
peak memory, result tables and JSON.

Why the measurements look the way they do:

* **Ceiling, measured in the same process and interleaved.** Each timed repeat is bracketed by two short
  measurements of this machine's dense-matmul rate, and a repeat's *share* is ``FLOPs / time / ceiling`` with the
  ceiling measured around it. When other work shares the CPU, the model and the ceiling slow down together, so
  shares stay comparable across machines and across loads when raw times do not. Not entirely: under bursty load a
  multi-threaded model (thousands of operators, each ending in a thread barrier) suffers more than a 0.1 s GEMM
  sample; on a shared machine, ``--threads 1`` gives stable figures (docs/PERFORMANCE.md).
* **The ceiling is the fastest large matmul torch can run here.** On a CPU torch has two GEMM routes: ``torch.mm``
  (MKL's sgemm for fp32, oneDNN for bf16) and oneDNN's kernels, which a 1x1 convolution over a channels-last tensor
  reaches with the same M, K, N. MKL's sgemm does not use AVX-512 on AMD CPUs and reaches about half of oneDNN's
  rate there, while the networks' convolutions run on oneDNN; the best of both routes, over a square GEMM and a tall
  one shaped like the networks' convolutions (``CPU_GEMMS``), is the honest roof. On CUDA: ``torch.mm``.
* **FLOPs are model FLOPs.** ``torch.utils.flop_counter.FlopCounterMode`` counts the matmuls and convolutions of
  the plain reference computation (``model.fast_paths = False``); the fast paths skip some of that work
  (precomputed context gates), so their executed FLOPs are lower and reported separately; shares credit the fast
  paths for the work they avoid, as MFU does.
* **Warm-up, repeats, median.** The first calls allocate memory and let oneDNN build its kernels; the median of the
  timed repeats is robust to a repeat disturbed by other processes.
* **Peak memory per case, in its own process.** torch allocates outside Python's heap, so ``tracemalloc`` sees
  nothing; each case runs in a fresh subprocess and reports ``ru_maxrss`` (peak resident memory) after setup and at
  the end (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "outputs" / "benchmarks"  # JSON results (git-ignored); docs/PERFORMANCE.md has tables

# GEMM shapes (M, K, N) of the ceiling. CPU: a square one, and a tall one with the shape class of the networks'
# convolutions (many pixels x hundreds of channels), which oneDNN runs faster than the square one on the development
# CPU (1 thread: 249 vs 217 GFLOP/s fp32) and as fast as its best 3x3 convolution (254): without it, convolutions
# would beat the "ceiling". Each takes < 0.1 s on 2 cores in fp32. CUDA: one large square matmul fills the GPU.
CPU_GEMMS = ((2048, 2048, 2048), (12288, 512, 512))
CUDA_GEMMS = ((8192, 8192, 8192),)
CEILING_REPEATS = 2  # best of this many matmuls per route for one ceiling sample
# Ceiling a precision's share is measured against (fp16 autocast runs on the same units as bf16).
CEILING_OF_PRECISION = {"fp32": "fp32", "bf16": "bf16", "fp16": "bf16"}


# --------------------------------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu`` / ``cuda`` as given (cuda must be available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False on this machine.")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda; got {name!r}.")
    return torch.device(name)


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def describe_machine(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: torch build, CPU model and threads, GPU, load at the start."""
    cpu = _lscpu()
    flags = set(cpu.get("Flags", "").split())
    description: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu.get("Model name", platform.processor() or "unknown"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
        "load_average_1min": os.getloadavg()[0],
        "device": str(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
        description["cuda"] = torch.version.cuda
    return description


def machine_summary(machine: dict[str, Any]) -> str:
    """One line for the top of a table."""
    text = (
        f"torch {machine['torch']} | {machine['cpu_model']} | {machine['torch_threads']} torch threads of "
        f"{machine['cpu_count']} CPUs | {machine['cpu_capability']} {','.join(machine['cpu_bf16_instructions'])} | "
        f"load {machine['load_average_1min']:.2f} at start"
    )
    if "gpu" in machine:
        text += f" | {machine['gpu']} (CUDA {machine['cuda']})"
    return text


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer reads the work's end (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to the dtype of ``precision`` (bf16 / fp16), or nothing for fp32."""
    from stereo_exp.schemas import amp_dtype

    dtype = amp_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------------------------
# Ceiling and FLOPs
# --------------------------------------------------------------------------------------------------------------------


class MatmulCeiling:
    """Best dense-matmul rate (FLOP/s) of ``dtype`` on ``device`` over torch's GEMM routes and ``CPU_GEMMS`` /
    ``CUDA_GEMMS`` shapes; call to sample it.

    Operands are allocated once; each call runs every (route, shape) ``CEILING_REPEATS`` times and returns the best
    rate. ``best_by_route`` keeps the best rate seen per route and shape, for the JSON record.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        generator = torch.Generator().manual_seed(0)
        self.routes: dict[str, tuple[Callable[[], Any], int]] = {}  # name -> (run, FLOPs)

        def operand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator).to(device, dtype)

        for m, k, n in CUDA_GEMMS if device.type == "cuda" else CPU_GEMMS:
            a, b = operand(m, k), operand(k, n)
            flops = 2 * m * k * n
            self.routes[f"torch.mm {m}x{k}x{n}"] = (lambda a=a, b=b: torch.mm(a, b), flops)
            if device.type == "cpu":
                # The same GEMM on oneDNN: a 1x1 convolution of m pixels x k channels (channels-last) to n channels.
                image = a.reshape(1, m // 32, 32, k).permute(0, 3, 1, 2)  # (1, k, m/32, 32), channels innermost
                kernel = b.t().reshape(n, k, 1, 1).contiguous(memory_format=torch.channels_last)
                self.routes[f"onednn {m}x{k}x{n}"] = (
                    lambda x=image, w=kernel: torch.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1),
                    flops,
                )
        self.best_by_route: dict[str, float] = {}
        for run, _ in self.routes.values():  # first calls pick kernels and allocate
            run()
        synchronize(device)

    def __call__(self) -> float:
        best = 0.0
        for name, (run, flops) in self.routes.items():
            for _ in range(CEILING_REPEATS):
                tic = time.perf_counter()
                run()
                synchronize(self.device)
                rate = flops / (time.perf_counter() - tic)
                self.best_by_route[name] = max(self.best_by_route.get(name, 0.0), rate)
                best = max(best, rate)
        return best


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul and convolution FLOPs (multiply + add = 2) of everything ``fn`` runs, backward passes included."""
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.mm: _mm_flops}) as counter:
        fn()
    return int(counter.get_total_flops())


def _mm_flops(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    """FLOPs of ``torch.mm(a, b)``: 2 per multiply-add, counting only the stored entries of a sparse ``a`` (the fast
    paths' sparse warp: 4 per row); torch's own formula counts every sparse product as a dense one."""
    stored = a._nnz() if a.layout != torch.strided else a.shape[0] * a.shape[1]
    return 2 * stored * b.shape[1]


_mm_flops._get_raw = True  # FlopCounterMode passes it the tensors, not only their shapes


def count_model_and_executed_flops(model: torch.nn.Module, fn: Callable[[], Any]) -> tuple[int, int]:
    """FLOPs of ``fn`` on the plain reference path (``model.fast_paths = False``: model FLOPs) and on the model's
    own setting (executed FLOPs). Two untimed runs, which also warm up both paths."""
    fast = getattr(model, "fast_paths", False)
    model.fast_paths = False
    try:
        model_flops = count_flops(fn)
    finally:
        model.fast_paths = fast
    return model_flops, count_flops(fn)


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds of each timed repeat and the ceilings (FLOP/s) measured around it (mean of before and after)."""

    seconds: list[float] = field(default_factory=list)
    ceilings: dict[str, list[float]] = field(default_factory=dict)  # dtype name -> one value per repeat
    warmup_seconds: list[float] = field(default_factory=list)  # the untimed runs (compilation happens there)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        """The fastest repeat: the closest to what the machine does undisturbed when other work shares it."""
        return min(self.seconds)

    def share(self, flops: int, dtype: str) -> float:
        """Median over repeats of FLOPs / seconds / ceiling, the ceiling measured around the same repeat."""
        return statistics.median(flops / s / c for s, c in zip(self.seconds, self.ceilings[dtype], strict=True))

    def ceiling(self, dtype: str) -> float:
        return statistics.median(self.ceilings[dtype])


def time_interleaved(
    fn: Callable[[], Any],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    ceilings: dict[str, MatmulCeiling],
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed (their seconds kept apart), then ``repeats`` times timed, each bracketed
    by ceiling samples."""
    timing = Timing(ceilings={name: [] for name in ceilings})
    for _ in range(warmup):
        tic = time.perf_counter()
        fn()
        synchronize(device)
        timing.warmup_seconds.append(time.perf_counter() - tic)
    for _ in range(repeats):
        before = {name: sample() for name, sample in ceilings.items()}
        tic = time.perf_counter()
        fn()
        synchronize(device)
        timing.seconds.append(time.perf_counter() - tic)
        for name, sample in ceilings.items():
            timing.ceilings[name].append((before[name] + sample()) / 2)
    return timing


def time_alternating(
    fns: dict[str, Callable[[], Any]],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    ceilings: dict[str, MatmulCeiling],
) -> dict[str, Timing]:
    """``time_interleaved`` for several functions at once, alternating them within each repeat (a, b, a, b, ...), so
    that a change of load during the run affects all of them alike: their ratios are what to compare."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    timings = {name: Timing(ceilings={c: [] for c in ceilings}) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            one = time_interleaved(fn, device=device, warmup=0, repeats=1, ceilings=ceilings)
            timings[name].seconds += one.seconds
            for c in ceilings:
                timings[name].ceilings[c] += one.ceilings[c]
    return timings


def timing_fields(timing: Timing, model_flops: int, executed_flops: int, precision: str) -> dict[str, Any]:
    """The result fields every timed benchmark reports: median seconds, FLOPs, rate, ceiling and share."""
    ceiling = CEILING_OF_PRECISION[precision]
    measured = ceiling in timing.ceilings  # not bf16's on a CPU without bf16 arithmetic (ceilings_for)
    return {
        "seconds": timing.median,
        "seconds_best": timing.best,
        "seconds_all": timing.seconds,
        "warmup_seconds": timing.warmup_seconds,
        "model_gflop": model_flops / 1e9,
        "executed_gflop": executed_flops / 1e9,
        "achieved_gflops": model_flops / timing.median / 1e9,
        "ceiling_gflops": timing.ceiling(ceiling) / 1e9 if measured else None,
        "ceiling_dtype": ceiling,
        "share_pct": 100 * timing.share(model_flops, ceiling) if measured else None,
        "share_best_pct": 100
        * max(model_flops / t / c for t, c in zip(timing.seconds, timing.ceilings[ceiling], strict=True))
        if measured
        else None,
        "share_of_fp32_ceiling_pct": 100 * timing.share(model_flops, "fp32"),
        "ceilings_gflops_all": {name: [c / 1e9 for c in values] for name, values in timing.ceilings.items()},
    }


def ceilings_for(device: torch.device) -> dict[str, MatmulCeiling]:
    """The fp32 and bf16 ceilings of ``device``; fp32's only on a CPU without bf16 arithmetic (oneDNN's check: no
    AVX-512 or AVX-NE-CONVERT, e.g. an AVX2 AMD EPYC), where bf16 is emulated (~1 GFLOP/s: one ceiling sample took
    minutes) and bf16 shares would mean nothing."""
    from stereo_exp.schemas import has_arithmetic

    ceilings = {"fp32": MatmulCeiling(torch.float32, device)}
    if has_arithmetic("bf16", device):
        ceilings["bf16"] = MatmulCeiling(torch.bfloat16, device)
    return ceilings


# --------------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mb() -> float:
    """Largest peak resident memory of any terminated, waited-for child process (e.g. DataLoader workers), MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


class MemoryProbe:
    """Peak memory of what runs between ``start()`` and ``stop()``: the growth of the process's peak RSS on CPU
    (a fresh process per case keeps earlier cases out of it), ``max_memory_allocated`` on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_mb = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.baseline_mb = peak_rss_mb()

    def stop(self) -> dict[str, float]:
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else peak_rss_mb()
        return {"peak_mb": peak, "baseline_mb": self.baseline_mb, "delta_mb": peak - self.baseline_mb}


def measure(
    fn: Callable[[], Any],
    model: torch.nn.Module,
    spec: dict[str, Any],
    device: torch.device,
    prepare: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """The measurement of a timed benchmark case: ``timing_fields`` of ``fn`` plus ``peak_mb`` / ``peak_delta_mb``.

    Inside one ``MemoryProbe``: two untimed runs count the model and executed FLOPs
    (``count_model_and_executed_flops``, eager), then ``prepare`` (e.g. compilation settings) runs, then
    ``spec["warmup"]`` untimed runs (seconds reported apart: compilation happens there) and ``spec["repeats"]`` timed
    runs bracketed by ceiling samples (``time_interleaved``); the share is taken against ``spec["precision"]``'s
    ceiling.
    """
    memory = MemoryProbe(device)
    memory.start()
    model_flops, executed_flops = count_model_and_executed_flops(model, fn)
    if prepare is not None:
        prepare()
    ceilings = ceilings_for(device)
    timing = time_interleaved(fn, device=device, warmup=spec["warmup"], repeats=spec["repeats"], ceilings=ceilings)
    peak = memory.stop()
    return {
        **timing_fields(timing, model_flops, executed_flops, spec["precision"]),
        "peak_mb": peak["peak_mb"],
        "peak_delta_mb": peak["delta_mb"],
    }


# --------------------------------------------------------------------------------------------------------------------
# Cases in subprocesses, tables, JSON
# --------------------------------------------------------------------------------------------------------------------


def run_case_in_subprocess(module: str, spec: dict[str, Any], *, threads: int | None) -> dict[str, Any]:
    """Run ``python -m <module> --case '<spec json>'`` and return the JSON object it prints on its last line.

    A fresh process per case gives each case its own peak-memory figure and keeps one case's allocator state and
    oneDNN caches out of the next. A failing case raises with the child's stderr.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # read by torch's OpenMP pool at start-up
    command = [sys.executable, "-m", module, "--case", json.dumps(spec)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"Benchmark case {spec} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"Benchmark case {spec} printed no JSON result. stdout:\n{result.stdout[-2000:]}")
    return json.loads(lines[-1])


def format_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table: ``columns`` = (key, header); floats with 3 significant digits, missing values as '-'."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        if isinstance(value, list):
            return ",".join(cell(item) for item in value) or "-"
        return str(value)

    table = [[header for _, header in columns]] + [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (dataclasses allowed) as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(payload, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
    )
    return path


def set_threads(threads: int | None) -> None:
    """torch intra-op threads for this process (None keeps torch's default: one per core)."""
    if threads is not None:
        torch.set_num_threads(threads)


def gemm_shapes_note() -> str:
    """How the ceiling is measured, for the JSON record."""
    return (
        f"best of torch.mm and (CPU) oneDNN via a 1x1 convolution on MxKxN GEMMs {CPU_GEMMS} (CUDA: {CUDA_GEMMS}), "
        f"{CEILING_REPEATS} repeats each, sampled before and after every timed repeat"
    )


# --------------------------------------------------------------------------------------------------------------------
# Command line shared by the benchmark modules
# --------------------------------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, *, warmup: int, repeats: int) -> None:
    """Options every benchmark takes."""
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: one per core)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs before the timed ones")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs; tables show their median")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: outputs/benchmarks/NAME-DEVICE.json)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the cases in this process (debugging: memory figures then add up)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case (JSON spec), print its JSON result


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precisions`` and ``--fast-paths``: the variants every case of a timed benchmark runs in."""
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32 | bf16 | fp16 (autocast)")
    parser.add_argument(
        "--fast-paths", default="true", help="true | false | true,false: model.fast_paths (false = plain computation)"
    )


def parse_list(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    """``"a,b"`` -> ``[kind("a"), kind("b")]``."""
    return [kind(item) for item in text.split(",") if item]


def parse_bool(text: str) -> bool:
    """``"true"`` / ``"false"`` (any case) -> bool."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")
    return text.lower() == "true"


def parse_size(text: str) -> list[int]:
    """``"384x512"`` -> ``[384, 512]`` (H x W)."""
    height, _, width = text.partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HxW such as 384x512; got {text!r}")
    return [int(height), int(width)]


def run_benchmark(
    name: str,
    module: str,
    args: argparse.Namespace,
    specs: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    run_case: Callable[[dict[str, Any]], dict[str, Any]],
    rows_of: Callable[[dict[str, Any]], list[dict[str, Any]]] = lambda result: [result],
) -> dict[str, Any]:
    """Run every case (each in its own process unless ``--in-process``), print the table, write the JSON record.

    ``rows_of`` turns one case's result into its table rows (default: the result is the row)."""
    device = resolve_device(args.device)
    set_threads(args.threads)
    machine = describe_machine(device)
    print(machine_summary(machine), flush=True)
    print("\n".join(format_table(columns, []).splitlines()[:2]), flush=True)  # header of the progress lines
    common = {"device": device.type, "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats}
    rows = []
    for spec in specs:
        spec = {**common, **spec}
        result = run_case(spec) if args.in_process else run_case_in_subprocess(module, spec, threads=args.threads)
        for row in rows_of(result):
            rows.append(row)
            print(format_table(columns, [row]).splitlines()[-1], flush=True)  # progress: one line per finished row
    print(f"\n{name} | {machine_summary(machine)}\n{format_table(columns, rows)}")
    record = {"benchmark": name, "machine": machine, "ceiling_method": gemm_shapes_note(), "results": rows}
    path = write_json(args.out or DEFAULT_OUTPUT / f"{name}-{device.type}.json", record)
    print(f"JSON: {path}")
    return record


def run_single_case(args: argparse.Namespace, run_case: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The child side of ``run_case_in_subprocess``: one case from ``--case``, its result as one JSON line."""
    spec = json.loads(args.case)
    set_threads(spec.get("threads"))
    print(json.dumps(run_case(spec)), flush=True)


__all__ = [
    "CEILING_OF_PRECISION",
    "DEFAULT_OUTPUT",
    "MatmulCeiling",
    "MemoryProbe",
    "Timing",
    "add_common_arguments",
    "add_variant_arguments",
    "autocast",
    "ceilings_for",
    "children_peak_rss_mb",
    "count_flops",
    "count_model_and_executed_flops",
    "describe_machine",
    "format_table",
    "machine_summary",
    "measure",
    "parse_bool",
    "parse_list",
    "parse_size",
    "resolve_device",
    "run_benchmark",
    "run_case_in_subprocess",
    "run_single_case",
    "set_threads",
    "synchronize",
    "time_alternating",
    "time_interleaved",
    "timing_fields",
    "write_json",
]
