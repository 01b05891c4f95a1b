"""A comparison of MLflow runs on one metric: its history per run, a ranked table (markdown, CSV) and a plot.

Used by ``python -m stereo_exp.compare`` and by the sweep launchers, which attach the table and the plot to a
sweep's parent run when the sweep ends (stereo_exp/launcher.py). The default metric is the held-out validation
metric the runs were trained with (their ``stereo_exp.key_metric`` tag: ``val/<first eval dataset>/mae``).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stereo_exp.tracking.mlflow_tracker import KEY_METRIC_TAG, TASK_TAG
from stereo_exp.tracking.sweep import (
    OVERRIDES_TAG,
    ROLE_TAG,
    SWEEP_ID_TAG,
    SWEEP_ROLE,
    search_all_runs,
    validation_metrics,
)

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
    without_metric: list[str]  # "name (run id, status)" of selected runs that never logged the metric
    plot: Path
    table_md: Path
    table_csv: Path


def runs_to_compare(client: Any, experiment_id: str, sweep: str | None) -> list[Any]:
    """The runs of one sweep's jobs if ``sweep`` is given (training runs, or the evaluations of a sweep of
    ``stereo_exp.evaluate``), else the experiment's training runs; never the sweeps' parent runs, nor outside a sweep
    the runs of the evaluate and eda commands (tagged stereo_exp.task)."""
    runs = search_all_runs(client, experiment_id, f"tags.`{SWEEP_ID_TAG}` = '{sweep}'" if sweep else "")
    return [r for r in runs if r.data.tags.get(ROLE_TAG) != SWEEP_ROLE and (sweep or TASK_TAG not in r.data.tags)]


def default_metric(runs: list[Any]) -> str | None:
    """The metric most runs name as their key (the held-out validation set's mae); for runs without that tag the
    first of their ``eval.datasets``; else the ``val/<dataset>/mae`` most runs logged."""
    keys = Counter(r.data.tags[KEY_METRIC_TAG] for r in runs if KEY_METRIC_TAG in r.data.tags)
    if not keys:
        firsts = [validation_metrics(_as_list(r.data.params.get("eval.datasets")))[:1] for r in runs]
        keys = Counter(first[0] for first in firsts if first)
    if not keys:
        keys = Counter(k for r in runs for k in r.data.metrics if _VAL_MAE.match(k))
    return sorted(keys, key=lambda k: (-keys[k], k))[0] if keys else None


def load_curves(
    client: Any, experiment: str, sweep: str | None, metric: str | None
) -> tuple[str, list[RunCurve], list[str]]:
    """The runs of ``experiment`` (only those of ``sweep`` if given) and their history of ``metric``.

    Returns (metric, curves, runs without the metric); ``metric`` None picks ``default_metric``.

    Raises:
        ValueError: unknown experiment (the message lists the existing ones), no runs, or no such metric.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}; experiments: {names}")
    runs = runs_to_compare(client, found.experiment_id, sweep)
    if not runs:
        where = f"sweep {sweep}" if sweep else "it"
        raise ValueError(f"experiment {experiment!r} at {client.tracking_uri} has no runs of {where}")
    if metric is None and (metric := default_metric(runs)) is None:
        logged = sorted({k for r in runs for k in r.data.metrics})
        raise ValueError(f"no val/<dataset>/mae metric in these runs; pass --metric, one of {logged}")
    curves, without = [], []
    for run in runs:
        if metric not in run.data.metrics:
            without.append(f"{run.info.run_name} ({run.info.run_id}, {run.info.status})")
            continue
        history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp))
        by_step = {m.step: m.value for m in history}  # the latest record of a step wins
        overrides = run.data.tags.get(OVERRIDES_TAG, "").split()
        curves.append(
            RunCurve(
                run_id=run.info.run_id,
                name=run.info.run_name or run.info.run_id,
                status=run.info.status,
                overrides=overrides,
                steps=sorted(by_step),
                values=[by_step[s] for s in sorted(by_step)],
            )
        )
    if not curves:
        raise ValueError(f"none of the {len(runs)} runs logged {metric!r}")
    return metric, curves, without


def compare(
    client: Any, *, experiment: str, sweep: str | None, metric: str | None, mode: str, output: Path
) -> Comparison:
    """Load the runs, then write ``<metric>.png``, ``.md`` and ``.csv`` into ``output``."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max; got {mode!r}")
    metric, curves, without = load_curves(client, experiment, sweep, metric)
    _label(curves)
    sign = 1.0 if mode == "min" else -1.0
    curves.sort(key=lambda c: (sign * c.final() if math.isfinite(c.final()) else math.inf, c.label))
    output.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", metric)
    result = Comparison(
        metric=metric,
        mode=mode,
        curves=curves,
        without_metric=without,
        plot=output / f"{stem}.png",
        table_md=output / f"{stem}.md",
        table_csv=output / f"{stem}.csv",
    )
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
        lines.append(
            f"| {curve.name} | {overrides} | {curve.status} | {curve.steps[-1]} | {curve.final():.4f} | "
            f"{best:.4f} | {best_step} |"
        )
    if result.without_metric:
        lines.append("")
        lines.append(f"{len(result.without_metric)} runs without {result.metric}: {', '.join(result.without_metric)}")
    return "\n".join(lines) + "\n"


def _as_list(text: str | None) -> list[str]:
    """A list param as MLflow stores it (``"['synthetic-val', 'motorcycle']"``) back to its items."""
    return re.findall(r"[^\s\[\]',\"]+", text or "")


def _label(curves: list[RunCurve]) -> None:
    """Label each run by its overrides that not every run shares (its name when it has none)."""
    shared = set.intersection(*(set(c.overrides) for c in curves)) if len(curves) > 1 else set()
    for curve in curves:
        varying = [o for o in curve.overrides if o not in shared]
        curve.label = " ".join(varying) or curve.name


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
            writer.writerow(
                [
                    curve.run_id,
                    curve.name,
                    " ".join(curve.overrides),
                    curve.status,
                    curve.steps[-1],
                    repr(curve.final()),
                    repr(best),
                    best_step,
                ]
            )
