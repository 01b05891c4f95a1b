"""Compare the runs of a sweep (or of an experiment) from MLflow: one plot of a metric against step, one table.

    python -m stereo_exp.compare --sweep multirun/2026-11-24/21-45-10      # the store and experiment it logged to
    python -m stereo_exp.compare --sweep multirun                          # the newest sweep in multirun/
    python -m stereo_exp.compare --uri http://127.0.0.1:5000 --experiment schedules --sweep 3f2a9c81d0e4
    python -m stereo_exp.compare --metric val/middlebury2014-train/mae -o outputs/compare   # every run of stereo_exp

``--sweep`` takes the sweep directory (its record says which MLflow store and experiment the runs went to, and
the sweep's id), a folder of sweep directories (``multirun``: the newest sweep in it), or a sweep id (the
``stereo_exp.sweep_id`` tag, printed when the sweep ends; then ``--uri`` and ``--experiment`` say where). Without
it, every training run of the experiment is compared (sweep parent runs and the runs of the evaluate and eda
commands are left out). The metric defaults to the held-out validation metric the runs were trained with
(``val/<first eval dataset>/mae``). A lookup never creates a store: a URI without one is an error.

Written into ``-o``; by default a folder of this comparison's own, so that comparing another sweep replaces nothing:
``<sweep folder>/compare`` for a sweep folder, ``compare/<sweep id>`` for a sweep id, ``compare/<experiment>`` for
every run of an experiment:

    <metric>.png   the metric against step, one line per run, labelled by the overrides that differ between runs
    <metric>.md    table: run, overrides, status, last step, final value, best value (and its step)
    <metric>.csv   the same table, with the full run ids

The markdown table is also printed. Runs that did not log the metric are listed, not silently dropped.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stereo_exp.launcher import SUMMARY_FILE
from stereo_exp.tracking.comparison import compare, markdown_table
from stereo_exp.tracking.mlflow_io import StoreNotFound, open_client
from stereo_exp.tracking.mlflow_tracker import TrackingConfig
from stereo_exp.tracking.sweep import read_record, record_files, sweep_id_of

DEFAULT_URI = TrackingConfig.uri  # the tracking config's default store
DEFAULT_EXPERIMENT = TrackingConfig.experiment


def newest_sweep(folder: Path) -> Path:
    """``folder`` if it is a sweep directory (Hydra's ``multirun.yaml`` is in it), else the newest sweep directory
    below it (``multirun`` -> ``multirun/2026-11-24/21-45-10``)."""
    if (folder / "multirun.yaml").is_file() or record_files(folder):
        return folder
    found = [path.parent for depth in ("*", "*/*", "*/*/*") for path in folder.glob(f"{depth}/multirun.yaml")]
    if not found:
        raise ValueError(f"{folder} is no sweep directory and holds none (no multirun.yaml in it or below it)")
    newest = max(found, key=lambda path: (path / "multirun.yaml").stat().st_mtime)
    print(f"newest sweep in {folder}: {newest}", file=sys.stderr)
    return newest


@dataclass(frozen=True)
class Target:
    """What to compare: the runs of ``experiment`` in the store at ``uri``, those of one sweep when ``sweep_id``."""

    uri: str
    experiment: str
    sweep_id: str | None = None
    sweep_dir: Path | None = None  # the sweep's folder, when --sweep named one

    def default_output(self) -> Path:
        """This comparison's own folder: beside the sweep's jobs, else under compare/ by sweep id or experiment."""
        if self.sweep_dir is not None:
            return self.sweep_dir / "compare"
        return Path("compare") / (self.sweep_id or re.sub(r"[^A-Za-z0-9._-]+", "_", self.experiment))


def resolve_target(uri: str | None, experiment: str | None, sweep: str | None) -> Target:
    """The runs to compare: what a sweep directory records, unless given explicitly; otherwise
    ``$MLFLOW_TRACKING_URI`` or the tracking config's defaults.

    Raises:
        ValueError: the sweep directory logged to several stores or experiments and the arguments do not choose;
            ``sweep`` is neither a directory nor a sweep id.
    """
    sweep_id, sweep_dir = sweep, None
    if sweep and not Path(sweep).is_dir() and not re.fullmatch(r"[0-9a-f]{12}", sweep):
        raise ValueError(
            f"--sweep {sweep}: no such directory, and not a sweep id (12 hex digits); run compare where "
            "the sweep's folder is (multirun/ under the folder you started it from)"
        )
    if sweep and Path(sweep).is_dir():
        sweep_dir = newest_sweep(Path(sweep))
        sweep_id = sweep_id_of(sweep_dir)
        records = [r for p in record_files(sweep_dir) if (r := read_record(p)) is not None]
        records = [r for r in records if uri in (None, r.tracking_uri) and experiment in (None, r.experiment)]
        if len(records) > 1:
            where = "; ".join(f"--uri {r.tracking_uri} --experiment {r.experiment}" for r in records)
            raise ValueError(f"sweep {sweep_dir} logged to several places; choose one: {where}")
        if records:
            return Target(records[0].tracking_uri, records[0].experiment, records[0].sweep_id, sweep_dir)
        if _tracking_backend(sweep_dir) == "none":
            raise ValueError(
                f"sweep {sweep_dir} ran with tracking=none: no MLflow run to compare (its summary, with each job's "
                f"final mae: {sweep_dir / SUMMARY_FILE})"
            )
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    return Target(uri, experiment or DEFAULT_EXPERIMENT, sweep_id, sweep_dir)


def _tracking_backend(sweep: Path) -> str | None:
    """``tracking.backend`` of the sweep's config, as Hydra recorded it (``multirun.yaml``); None if unknown."""
    try:
        return OmegaConf.select(OmegaConf.load(sweep / "multirun.yaml"), "tracking.backend")
    except (OSError, ValueError, OmegaConfBaseException):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stereo_exp.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sweep",
        help="sweep directory (its MLflow store, experiment and id), a folder of sweeps "
        "(multirun: its newest sweep) or a sweep id",
    )
    parser.add_argument(
        "--uri",
        help=f"MLflow tracking URI (default: the sweep directory's, else $MLFLOW_TRACKING_URI, else {DEFAULT_URI})",
    )
    parser.add_argument(
        "--experiment", help=f"MLflow experiment (default: the sweep directory's, else {DEFAULT_EXPERIMENT})"
    )
    parser.add_argument("--metric", help="metric to compare (default: the held-out validation mae of the runs)")
    parser.add_argument(
        "--mode",
        choices=("min", "max"),
        default="min",
        help="best = min (errors: mae, rmse, relepe) or max (shares: 1px, 3px, 5px)",
    )
    parser.add_argument(
        "-o",
        "--output",
        help="folder for the plot and tables (default: <sweep folder>/compare, else compare/<sweep id or experiment>)",
    )
    args = parser.parse_args(argv)

    try:
        target = resolve_target(args.uri, args.experiment, args.sweep)
        uri, experiment, sweep = target.uri, target.experiment, target.sweep_id
        client = open_client(uri, create=False)
        output = Path(args.output) if args.output else target.default_output()
        result = compare(client, experiment=experiment, sweep=sweep, metric=args.metric, mode=args.mode, output=output)
    except StoreNotFound as error:
        print(
            f"error: {error}; run compare where the runs were logged, or pass --uri or --sweep SWEEP_DIR",
            file=sys.stderr,
        )
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(result), end="")
    print(
        f"\n{result.metric} of {len(result.curves)} runs ({uri}, experiment {experiment}"
        f"{', sweep ' + sweep if sweep else ''})"
    )
    print(f"wrote {result.plot}, {result.table_md}, {result.table_csv}")
    return 0


if __name__ == "__main__":
    from stereo_exp.cli import exit_interrupted, ignore_stops_while_exiting

    try:
        status = main()
    except KeyboardInterrupt as stop:
        exit_interrupted(stop, "Comparison")
    ignore_stops_while_exiting()  # the files are written: a stop now would only print an exit handler's traceback
    sys.exit(status)
