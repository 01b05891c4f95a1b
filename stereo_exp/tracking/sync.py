"""Send what a run kept in its spool while MLflow was unreachable (see spool.py), once MLflow answers.

    python -m stereo_exp.tracking.sync RUN_DIR [RUN_DIR ...]            # the URI the run logged to
    python -m stereo_exp.tracking.sync multirun/2026-11-24/21-45-10     # every run dir below a sweep dir
    python -m stereo_exp.tracking.sync RUN_DIR --uri http://127.0.0.1:5000

A running training does the same by itself at its first successful call after an outage (tracking.offline_retry_s).
Records are sent in their original order with their original timestamps; a run created offline is created now
(under its sweep's parent run) and the checkpoint's placeholder id is mapped to it in ``mlflow_spool.json``.
Metric steps MLflow already holds are skipped: a run resumed from a checkpoint replays, with identical values, the
steps between the checkpoint and the interruption. Exit status: 0 when everything was sent, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stereo_exp.tracking.mlflow_io import (
    OFFLINE_PREFIX,
    apply_record,
    http_settings,
    is_unreachable,
    last_logged_steps,
    open_client,
)
from stereo_exp.tracking.spool import SPOOL_FILE, Spool, SpoolState

log = logging.getLogger(__name__)


class SpoolBusy(RuntimeError):
    """Another process is syncing this spool right now."""


@dataclass
class SyncReport:
    """What one sync of one spool did."""

    run_dir: Path
    sent: int = 0  # records sent to MLflow
    duplicates: int = 0  # metric values skipped: MLflow already held their step
    refused: list[str] = field(default_factory=list)  # records MLflow refused (or unreadable lines), with the reason
    run_ids: dict[str, str] = field(default_factory=dict)  # offline placeholders created in MLflow by this sync
    remaining: int = 0  # records left in the spool (MLflow became unreachable during the sync)
    unreachable: BaseException | None = None  # why the sync stopped early

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and not self.refused

    def summary(self) -> str:
        parts = [f"{self.sent} records sent", f"{self.duplicates} metric values already in MLflow"]
        if self.run_ids:
            parts.append("runs created: " + ", ".join(f"{k} -> {v}" for k, v in self.run_ids.items()))
        if self.refused:
            parts.append(f"{len(self.refused)} refused: " + "; ".join(self.refused))
        if self.remaining:
            parts.append(f"{self.remaining} left (MLflow unreachable: {self.unreachable})")
        return f"{self.run_dir}: " + ", ".join(parts)


def sync_spool(spool: Spool, client: Any, *, parent_wait_s: float = 60.0) -> SyncReport:
    """Send the pending records of ``spool`` with ``client`` (an ``MlflowClient``), in order.

    Records MLflow refuses are reported and skipped (they would be refused again); when MLflow becomes
    unreachable the sync stops and the report says how many records are left for the next one.

    Raises:
        SpoolBusy: another process holds the spool's sync lock.
    """
    report = SyncReport(run_dir=spool.run_dir)
    with spool.locked() as acquired:
        if not acquired:
            raise SpoolBusy(f"another process is syncing {spool.path}")
        state = spool.read_state()
        pending = spool.pending(state)
        last_steps = _LastSteps(client)
        for position, (index, record) in enumerate(pending):
            try:
                sent, duplicates = _send(client, record, state.run_ids, last_steps, report, parent_wait_s)
            except Exception as error:
                if is_unreachable(error):
                    report.remaining = len(pending) - position
                    report.unreachable = error
                    break
                op = record["op"] if record else "unreadable"
                report.refused.append(f"line {index + 1} ({op}): {type(error).__name__}: {error}")
                state.refused.append(report.refused[-1])
            else:
                report.sent, report.duplicates = report.sent + sent, report.duplicates + duplicates
                state.sent, state.duplicates = state.sent + sent, state.duplicates + duplicates
            state.done = index + 1
            spool.write_state(state)  # after every record: a sync cut short goes on from here next time
    return report


def _send(
    client: Any,
    record: dict[str, Any] | None,
    run_ids: dict[str, str],
    last_steps: _LastSteps,
    report: SyncReport,
    parent_wait_s: float,
) -> tuple[int, int]:
    """Apply one spooled record; returns (records sent, metric values skipped as already in MLflow)."""
    if record is None:
        raise ValueError("not a complete JSON record (the writing process died mid-line?)")
    duplicates = 0
    if record["op"] == "metrics":
        record, duplicates = last_steps.keep_new(record, run_ids)
        if record is None:
            return 0, duplicates
    run_id = apply_record(client, record, run_ids, parent_wait_s=parent_wait_s)
    if record["op"] == "create_run":
        report.run_ids[record["run"]] = run_id
        last_steps.new_run(run_id)
    return 1, duplicates


class _LastSteps:
    """The last step MLflow holds for each metric of each run, read once per run, updated as records are sent."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.steps: dict[str, dict[str, int]] = {}

    def new_run(self, run_id: str) -> None:
        self.steps[run_id] = {}

    def keep_new(self, record: dict[str, Any], run_ids: dict[str, str]) -> tuple[dict[str, Any] | None, int]:
        """The record without the metrics whose step MLflow already holds (None when nothing is left), and how
        many were left out."""
        run_id = run_ids.get(record["run"], record["run"])
        if run_id.startswith(OFFLINE_PREFIX):
            return record, 0  # apply_record reports the missing create_run
        known = self.steps.get(run_id)
        if known is None:
            known = self.steps[run_id] = last_logged_steps(self.client, run_id)
        step = int(record["step"])
        metrics = {k: v for k, v in record["metrics"].items() if step > known.get(k, -1)}
        for key in metrics:
            known[key] = step
        skipped = len(record["metrics"]) - len(metrics)
        return ({**record, "metrics": metrics} if metrics else None), skipped


def find_spools(paths: Sequence[str | Path]) -> list[Spool]:
    """The spools of the run directories at or below ``paths`` (a run dir, a sweep dir, any parent folder)."""
    spools: list[Spool] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory (expected a run or sweep directory)")
        found = [path / SPOOL_FILE] if (path / SPOOL_FILE).exists() else sorted(path.rglob(SPOOL_FILE))
        spools.extend(Spool(p.parent) for p in found)
    return spools


def recorded_uri(spool: Spool) -> str | None:
    """The tracking URI the run logged to (every spooled record keeps it)."""
    for _, record in spool.pending(SpoolState()):
        if record and record.get("uri"):
            return str(record["uri"])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: sync the spools below the given directories; prints one line per run directory."""
    from stereo_exp.tracking.mlflow_tracker import TrackingConfig

    parser = argparse.ArgumentParser(prog="python -m stereo_exp.tracking.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, or folders (sweep dirs) to search for them")
    parser.add_argument("--uri", help="tracking URI to send to (default: the one each run logged to)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    defaults = TrackingConfig()
    spools = find_spools(args.paths)
    if not spools:
        print(f"no {SPOOL_FILE} below {', '.join(args.paths)}: nothing to send")
        return 0
    complete = True
    for spool in spools:
        uri = args.uri or recorded_uri(spool)
        if uri is None:
            print(f"{spool.run_dir}: no tracking URI recorded; pass --uri")
            complete = False
            continue
        with http_settings(timeout_s=defaults.http_timeout_s, max_retries=defaults.http_max_retries,
                           backoff_factor=defaults.http_backoff_factor):  # fmt: skip
            try:
                report = sync_spool(spool, open_client(uri), parent_wait_s=defaults.parent_wait_s)
            except SpoolBusy as busy:
                print(f"{spool.run_dir}: {busy}; try again later")
                complete = False
                continue
        print(f"{report.summary()} [{uri}]")
        complete = complete and report.complete
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
