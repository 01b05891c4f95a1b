"""Compare the runs of a sweep (or of an experiment) from MLflow: one plot of a metric against step, one table.

    python -m stereo_exp.compare --uri http://127.0.0.1:5000 --sweep multirun/2026-11-24/21-45-10
    python -m stereo_exp.compare --experiment stereo_exp --metric val/middlebury2014-train/mae -o outputs/compare

``--sweep`` takes a sweep id (the ``stereo_exp.sweep_id`` tag, printed by every job of the sweep) or the sweep
directory itself; without it, every training run of the experiment is compared (sweep parent runs and the runs of
the evaluate and eda commands are left out). The metric defaults to the ``val/<dataset>/mae`` that most runs
logged. Written into ``-o`` (default ``compare``):

    <metric>.png   the metric against step, one line per run, labelled by the overrides that differ between runs
    <metric>.md    table: run, overrides, status, last step, final value, best value (and its step)
    <metric>.csv   the same table, with the full run ids

The markdown table is also printed. Runs that did not log the metric are listed, not silently dropped.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stereo_exp.tracking.mlflow_tracker import TASK_TAG, TrackingConfig
from stereo_exp.tracking.sweep import OVERRIDES_TAG, ROLE_TAG, SWEEP_ID_TAG, SWEEP_ROLE, sweep_id_of

DEFAULT_URI = TrackingConfig.uri  # the tracking config's default store
_VAL_MAE = re.compile(r"^val/[^/]+/mae$")


@dataclass
class RunCurve:
    """One run's history of the compared metric."""

    run_id: str
    name: str
    status: str
    overrides: list[str]  # its command-line overrides (the sweep job's), [] when not from a sweep
    steps: list[int]  # ascending
    values: list[float]
    label: str = ""  # set by compare(): the overrides that differ from the other runs, or the run name

    def final(self) -> float:
        return self.values[-1]

    def best(self, mode: str) -> tuple[float, int]:
        """(best value, its step); mode "min" (errors: mae, rmse) or "max" (shares: 1px, 3px ...)."""
        pick = min if mode == "min" else max
        index = pick(range(len(self.values)), key=lambda i: self.values[i])
        return self.values[index], self.steps[index]


@dataclass
class Comparison:
    metric: str
    mode: str
    curves: list[RunCurve]  # sorted best final value first
    without_metric: list[str]  # "name (run id)" of selected runs that never logged the metric
    plot: Path
    table_md: Path
    table_csv: Path


def load_curves(client: Any, experiment: str, sweep: str | None, metric: str | None) -> tuple[str, list[RunCurve],
                                                                                              list[str]]:  # fmt: skip
    """The runs of ``experiment`` (only those of ``sweep`` if given) and their history of ``metric``.

    Returns (metric, curves, runs without the metric). ``metric`` None picks the ``val/<dataset>/mae`` logged by
    the most runs (alphabetically first on ties).

    Raises:
        ValueError: unknown experiment (the message lists the existing ones), no runs, or no such metric.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}; experiments: {names}")
    filters = [f"tags.`{SWEEP_ID_TAG}` = '{sweep}'"] if sweep else []
    runs = _search_all(client, found.experiment_id, " and ".join(filters))
    # Training runs only: not the sweeps' parent runs, nor the runs of evaluate / eda (tagged stereo_exp.task).
    runs = [r for r in runs if r.data.tags.get(ROLE_TAG) != SWEEP_ROLE and TASK_TAG not in r.data.tags]
    if not runs:
        where = f"sweep {sweep}" if sweep else "it"
        raise ValueError(f"experiment {experiment!r} at {client.tracking_uri} has no runs of {where}")
    if metric is None:
        counts = Counter(k for r in runs for k in r.data.metrics if _VAL_MAE.match(k))
        if not counts:
            logged = sorted({k for r in runs for k in r.data.metrics})
            raise ValueError(f"no val/<dataset>/mae metric in these runs; pass --metric, one of {logged}")
        metric = sorted(counts, key=lambda k: (-counts[k], k))[0]
    curves, without = [], []
    for run in runs:
        if metric not in run.data.metrics:
            without.append(f"{run.info.run_name} ({run.info.run_id})")
            continue
        history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp))
        by_step = {m.step: m.value for m in history}  # the latest record of a step wins
        overrides = run.data.tags.get(OVERRIDES_TAG, "").split()
        curves.append(RunCurve(run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
                               status=run.info.status, overrides=overrides, steps=sorted(by_step),
                               values=[by_step[s] for s in sorted(by_step)]))  # fmt: skip
    if not curves:
        raise ValueError(f"none of the {len(runs)} runs logged {metric!r}")
    return metric, curves, without


def compare(
    client: Any, *, experiment: str, sweep: str | None, metric: str | None, mode: str, output: Path
) -> Comparison:
    """Load the runs, then write the plot and the tables into ``output`` (see the module docstring)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max; got {mode!r}")
    metric, curves, without = load_curves(client, experiment, sweep, metric)
    _label(curves)
    sign = 1.0 if mode == "min" else -1.0
    curves.sort(key=lambda c: (sign * c.final() if math.isfinite(c.final()) else math.inf, c.label))
    output.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", metric)
    result = Comparison(metric=metric, mode=mode, curves=curves, without_metric=without,
                        plot=output / f"{stem}.png", table_md=output / f"{stem}.md",
                        table_csv=output / f"{stem}.csv")  # fmt: skip
    _plot(result, title=f"{metric} ({experiment}{', sweep ' + sweep if sweep else ''})")
    result.table_md.write_text(markdown_table(result))
    _write_csv(result)
    return result


def markdown_table(result: Comparison) -> str:
    """The comparison as a markdown table (best final value first), with a note on runs without the metric."""
    lines = [
        f"| run | overrides | status | last step | final {result.metric} | best ({result.mode}) | best step |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for curve in result.curves:
        best, best_step = curve.best(result.mode)
        overrides = curve.label if curve.overrides else "-"
        lines.append(f"| {curve.name} | {overrides} | {curve.status} | {curve.steps[-1]} | {curve.final():.4f} | "
                     f"{best:.4f} | {best_step} |")  # fmt: skip
    if result.without_metric:
        lines.append("")
        lines.append(f"{len(result.without_metric)} runs without {result.metric}: {', '.join(result.without_metric)}")
    return "\n".join(lines) + "\n"


def _label(curves: list[RunCurve]) -> None:
    """Label each run by its overrides that not every run shares (its name when it has none)."""
    shared = set.intersection(*(set(c.overrides) for c in curves)) if len(curves) > 1 else set()
    for curve in curves:
        varying = [o for o in curve.overrides if o not in shared]
        curve.label = " ".join(varying) or curve.name


def _search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _plot(result: Comparison, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed on a cluster node
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    for curve in result.curves:
        axes.plot(curve.steps, curve.values, marker="o", markersize=3, linewidth=1.5, label=curve.label)
    axes.set_xlabel("step")
    axes.set_ylabel(result.metric)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(result.plot, dpi=120)
    plt.close(figure)


def _write_csv(result: Comparison) -> None:
    with open(result.table_csv, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run_id", "run", "overrides", "status", "last_step", "final", "best", "best_step"])
        for curve in result.curves:
            best, best_step = curve.best(result.mode)
            writer.writerow([curve.run_id, curve.name, " ".join(curve.overrides), curve.status, curve.steps[-1],
                             repr(curve.final()), repr(best), best_step])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stereo_exp.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI),
                        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")  # fmt: skip
    parser.add_argument("--experiment", default="stereo_exp", help="MLflow experiment (default: stereo_exp)")
    parser.add_argument("--sweep", help="sweep id (tag stereo_exp.sweep_id) or sweep directory")
    parser.add_argument("--metric", help="metric to compare (default: the runs' first val/<dataset>/mae)")
    parser.add_argument("--mode", choices=("min", "max"), default="min",
                        help="best = min (errors: mae, rmse, relepe) or max (shares: 1px, 3px, 5px)")  # fmt: skip
    parser.add_argument("-o", "--output", default="compare", help="folder for the plot and tables (default: compare)")
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    sweep = sweep_id_of(args.sweep) if args.sweep and Path(args.sweep).is_dir() else args.sweep
    try:
        result = compare(MlflowClient(tracking_uri=args.uri), experiment=args.experiment, sweep=sweep,
                         metric=args.metric, mode=args.mode, output=Path(args.output))  # fmt: skip
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(result), end="")
    print(f"\nwrote {result.plot}, {result.table_md}, {result.table_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
