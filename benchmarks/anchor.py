"""stereo_exp against torchvision's prototype (the anchor): train steps, same weights and inputs, alternating.

    python -m benchmarks.anchor                                   # crestereo_base, 256x320, batch 2, 10 updates
    python -m benchmarks.anchor --variants default speed.keep_freed_memory=false "model.fast_paths=false"
    python -m benchmarks.anchor --variants default speed.compile=true --warmup 2   # compiled: warm-up reported
    python -m benchmarks.anchor --device cuda --crop 384x512 --precisions fp32,bf16

Needs the prototype importable (not part of the torchvision wheel; /work/shared/anchor/README.md): install it with
``bash /work/shared/anchor/tools/install_into_venv.sh PYTHON``, into a copy of torchvision put first on PYTHONPATH
if the venv is shared. The prototype's code is imported, never copied.

What runs. Each side is its own worker process, driven by this one: the prototype, and one stereo_exp worker per
``--variants`` entry (Hydra overrides of ``conf/config.yaml``, space-separated inside an entry; ``default`` = none;
``src=DIR`` runs that worker on another checkout of stereo_exp, e.g. ``git worktree add /tmp/base main``). Only one
worker works at a time: a repeat asks every worker for one train step, in an order that alternates between repeats,
so a change of load hits all sides alike, and each side keeps its own process settings (the prototype runs as
torchvision's reference would, stereo_exp with ``prepare_for_training``'s). Every model loads the weights the
prototype was built with (seed 0; published layout, strict), every side the same seeded inputs.

A train step is what both training scripts do per step, data loading aside: forward under autocast (fp32: none), the
sequence loss of ``stereo_exp.engine.loss`` (gamma 0.8) on every prediction against a constant 8 px disparity,
backward, optimizer step. The prototype uses ``torch.optim.Adam`` as its reference ``train.py`` builds it;
stereo_exp uses ``build_optimizer`` (``optim.implementation``). Each worker times its own steps (CUDA:
synchronised). The first ``--warmup`` steps are untimed and reported apart (compilation happens there).

Figures: per side the median and spread of the step time; per stereo_exp side ``ratio`` = prototype time / its time
within the same repeat (>1: stereo_exp faster), median and range over repeats; with ``--no-prototype`` the first
variant takes the prototype's place. The same for CPU time (``time.process_time``, all threads of the worker): on a
machine shared with other work, wall times measure the load as much as the code, CPU times much less so, best with
``--threads 1`` (with 2 threads OpenMP's spin-waiting at every operator's barrier counts as CPU time). JSON record:
outputs/benchmarks/. Memory: every side holds a training step's activations (crestereo_base at 256x320, batch 2:
~4 GB), so a 24 GB machine runs two or three sides at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "outputs" / "benchmarks"
PROTOTYPE = "prototype"
DISPARITY_PX = 8.0  # the constant ground truth of the loss
GAMMA = 0.8  # sequence-loss weight decay (the recipes' loss.gamma)
LR = 1e-5  # tiny: the weights barely move over a benchmark, the cost does not depend on them


# --------------------------------------------------------------------------------------------------------------------
# Worker: one side, driven through stdin/stdout, one JSON object per line
# --------------------------------------------------------------------------------------------------------------------


def _prototype_side(spec: dict[str, Any], device: Any) -> tuple[Any, Any, float]:
    """The prototype model (its weights saved for the other sides), Adam as the reference builds it, the sign of
    its disparity channel."""
    import torch
    import torchvision.prototype.models.depth.stereo as prototype_models

    torch.manual_seed(0)
    model = prototype_models.__dict__[spec["model"]]()
    torch.save(model.state_dict(), spec["weights"])
    model = model.to(device)
    # The prototype's RAFT-Stereo returns the x-flow (negative disparity); its CREStereo the positive disparity.
    sign = -1.0 if spec["model"].startswith("raft_stereo") else 1.0
    return model, torch.optim.Adam(model.parameters(), lr=LR), sign


def _stereo_exp_side(spec: dict[str, Any], device: Any) -> tuple[Any, Any, float]:
    """The project's model from the composed config with the variant's overrides, ``prepare_for_training``-ed, and
    its configured optimizer."""
    import torch
    from hydra import compose, initialize_config_dir

    from stereo_exp import models
    from stereo_exp.config import register_configs
    from stereo_exp.engine.optim import build_optimizer

    register_configs()
    conf = Path(spec["src"] or REPO_ROOT) / "conf"
    overrides = [f"model={spec['model']}", "tracking=none", *spec["overrides"]]
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    model = models.build_model(cfg.model)
    if Path(spec["weights"]).exists():  # the prototype's (or, with --no-prototype, the first side's) weights
        model.load_state_dict(torch.load(spec["weights"]), strict=True)
    else:
        torch.save(model.state_dict(), spec["weights"])
    model = model.to(device)
    # An older checkout (src=DIR) may predate the speed section: it then trains the model as it is.
    prepare = getattr(models, "prepare_for_training", None)
    if prepare is not None:
        model = prepare(model, cfg.get("speed"), device)
    return model, build_optimizer(model, cfg.optim, LR), 1.0


def worker(spec: dict[str, Any]) -> None:
    """Build one side, then answer ``step`` requests with the seconds a train step took, until ``quit``."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # answers; anything else printed goes to stderr
    os.dup2(2, 1)
    import torch

    from stereo_exp.engine.loss import sequence_loss

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    tic = time.perf_counter()
    build = _prototype_side if spec["side"] == PROTOTYPE else _stereo_exp_side
    model, optimizer, sign = build(spec, device)
    model.train()
    generator = torch.Generator().manual_seed(0)
    batch, (height, width) = spec["batch_size"], spec["crop"]
    left = (torch.rand(batch, 3, height, width, generator=generator) * 2 - 1).to(device)
    right = torch.roll(left, shifts=-int(DISPARITY_PX), dims=-1)  # x_right = x_left - d
    gt = torch.full((batch, 1, height, width), DISPARITY_PX, device=device)
    valid = torch.ones_like(gt, dtype=torch.bool)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]

    def train_step() -> dict[str, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            predictions = model(left, right, num_iters=spec["iters"])
        disparities = [sign * p[:, :1].float() for p in predictions]
        loss = sequence_loss(disparities, gt, valid, gamma=GAMMA)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}

    source = sys.modules[type(model).__module__].__file__  # which checkout (or the prototype) this side runs
    print(json.dumps({"setup_s": time.perf_counter() - tic, "source": source}), file=protocol)
    for line in sys.stdin:
        if line.strip() == "quit":
            return
        print(json.dumps(train_step()), file=protocol)


# --------------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------------


class Side:
    """A worker process and the step times it reported."""

    def __init__(self, label: str, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.label = label
        self.spec = spec
        # Run as a script: its folder, not the repository, is then first on sys.path, so ``stereo_exp`` comes from
        # the PYTHONPATH that ``run`` sets (this checkout, or ``src=DIR``).
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self._answer()
        self.setup_s, self.source = ready["setup_s"], ready["source"]
        self.warmup: list[float] = []
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def _answer(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.label!r} exited (code {self.process.wait()}); see its stderr")
        return json.loads(line)

    def step(self) -> float:
        """One train step; returns its wall seconds (its CPU seconds go to ``cpu_seconds``)."""
        self.process.stdin.write("step\n")
        answer = self._answer()
        self.cpu_seconds.append(answer["cpu_seconds"])
        return answer["seconds"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait()


def _variant(text: str) -> tuple[str, list[str], str | None]:
    """``"a=1 b=2"`` -> (label, overrides, src); ``default`` has no overrides; ``src=DIR`` is not an override."""
    words = [] if text == "default" else text.split()
    src = next((w.partition("=")[2] for w in words if w.startswith("src=")), None)
    return text, [w for w in words if not w.startswith("src=")], src


def _environment(src: str | None) -> dict[str, str]:
    """This environment with ``src`` (another checkout) or this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src or str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    height, _, width = args.crop.partition("x")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="anchor-bench-") as scratch:
        for precision in args.precisions.split(","):
            common = {
                "model": args.model,
                "crop": [int(height), int(width)],
                "batch_size": args.batch_size,
                "iters": args.iters,
                "precision": precision,
                "device": device,
                "threads": args.threads,
                "weights": str(Path(scratch) / "weights.pth"),
            }
            sides: list[Side] = []
            try:
                if args.prototype:
                    sides.append(Side(PROTOTYPE, {**common, "side": PROTOTYPE}, _environment(None)))
                for text in args.variants:
                    label, overrides, src = _variant(text)
                    spec = {**common, "side": "stereo_exp", "overrides": overrides, "src": src}
                    sides.append(Side(f"stereo_exp {label}", spec, _environment(src)))
                for side in sides:
                    side.warmup = [side.step() for _ in range(args.warmup)]
                    side.cpu_seconds.clear()
                for repeat in range(args.repeats):
                    order = sides if repeat % 2 == 0 else sides[::-1]
                    for side in order:
                        side.seconds.append(side.step())
                    print(
                        f"{precision} repeat {repeat + 1}/{args.repeats}: "
                        + "  ".join(f"{s.label} {s.seconds[-1]:.3f}s" for s in sides),
                        flush=True,
                    )
            finally:
                for side in sides:
                    side.close()
            reference = sides[0]
            for side in sides:
                ratios = [a / b for a, b in zip(reference.seconds, side.seconds, strict=True)]
                cpu_ratios = [a / b for a, b in zip(reference.cpu_seconds, side.cpu_seconds, strict=True)]
                rows.append(
                    {
                        "precision": precision,
                        "side": side.label,
                        "source": side.source,
                        "setup_s": side.setup_s,
                        "warmup_s": side.warmup,
                        "seconds": _summary(side.seconds),
                        "seconds_all": side.seconds,
                        "ratio": _summary(ratios),
                        "ratios_all": ratios,
                        "cpu_seconds": _summary(side.cpu_seconds),
                        "cpu_seconds_all": side.cpu_seconds,
                        "cpu_ratio": _summary(cpu_ratios),
                    }
                )
    record = {
        "benchmark": "anchor",
        "command": " ".join(sys.argv),
        "model": args.model,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "iters": args.iters,
        "device": device,
        "threads": args.threads or torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "rows": rows,
    }
    print(_table(record))
    out = args.out or DEFAULT_OUTPUT / f"anchor-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"JSON: {out}")
    return record


def _table(record: dict[str, Any]) -> str:
    head = (
        f"\n{record['model']} train step, {record['crop']} batch {record['batch_size']}, {record['iters']} updates, "
        f"{record['device']}, {record['threads']} threads, {len(record['rows'][0]['seconds_all'])} alternating repeats"
    )
    lines = [
        head,
        f"{'precision':9}  {'side':40}  {'warm-up s':>14}  {'median s':>8}  {'min-max s':>13}  "
        f"{'ref/side':>8}  {'range':>11}  {'CPU s':>7}  {'CPU ref/side':>12}  {'range':>11}",
    ]
    for row in record["rows"]:
        seconds, ratio, cpu, cpu_ratio = row["seconds"], row["ratio"], row["cpu_seconds"], row["cpu_ratio"]
        warmup = ",".join(f"{s:.1f}" for s in row["warmup_s"]) or "-"
        lines.append(
            f"{row['precision']:9}  {row['side']:40.40}  {warmup:>14.14}  {seconds['median']:8.3f}  "
            f"{seconds['min']:6.2f}-{seconds['max']:<6.2f}  {ratio['median']:8.2f}  "
            f"{ratio['min']:5.2f}-{ratio['max']:<5.2f}  {cpu['median']:7.2f}  {cpu_ratio['median']:12.2f}  "
            f"{cpu_ratio['min']:5.2f}-{cpu_ratio['max']:<5.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anchor", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="crestereo_base", help="a model both sides have, e.g. raft_stereo_base")
    parser.add_argument("--crop", default="256x320", help="HxW of the training crop")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per step")
    parser.add_argument("--iters", type=int, default=10, help="recurrent updates per forward pass")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32 | bf16 | fp16 (autocast)")
    parser.add_argument("--variants", nargs="+", default=["default"], help="stereo_exp sides (see above)")
    parser.add_argument(
        "--no-prototype",
        dest="prototype",
        action="store_false",
        help="stereo_exp variants only (ratios against the first one): for levers, and where the prototype is missing",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: one per core)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first (compilation happens here)")
    parser.add_argument("--repeats", type=int, default=7, help="alternating timed steps per side")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default: outputs/benchmarks/anchor-DEVICE.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one side (JSON spec)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    run(args)


if __name__ == "__main__":
    main()
