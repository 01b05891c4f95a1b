"""The offline spool of a run: tracking records that could not reach MLflow, kept in the run directory.

Files in the run directory (``paths.output``):

    mlflow_spool.jsonl    one record per line (see mlflow_io), append-only, in the order the tracker made them
    mlflow_spool.json     progress of the syncs: lines handled, placeholder -> MLflow run ids, refused records
    mlflow_spool_files/   figures and dicts logged while offline (their records point at these files)
    mlflow_spool.lock     locked (flock) while a sync sends records, so two syncs never send a record twice

Only the run's rank-0 process appends; a sync (the tracker itself when MLflow answers again, or
``python -m stereo_exp.tracking.sync``) reads the lines after the last one handled. A line is complete once its
newline is written (one ``write`` call); a line cut short by a crash is isolated by the next append, then reported
as unreadable by the sync, never sent half. ``sync_spool`` sends the pending lines in order; sync.py is its command
line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stereo_exp.tracking.mlflow_io import OFFLINE_PREFIX, apply_record, is_unreachable, last_logged_steps

SPOOL_FILE = "mlflow_spool.jsonl"
STATE_FILE = "mlflow_spool.json"
FILES_DIR = "mlflow_spool_files"
LOCK_FILE = "mlflow_spool.lock"


@dataclass
class SpoolState:
    """What the syncs of one spool have done so far (kept in ``mlflow_spool.json``)."""

    done: int = 0  # spool lines handled (sent, skipped as already in MLflow, or refused)
    run_ids: dict[str, str] = field(default_factory=dict)  # offline placeholder -> MLflow run id
    sent: int = 0  # records sent to MLflow
    duplicates: int = 0  # metric values skipped because MLflow already held their step (replayed after a resume)
    refused: list[str] = field(default_factory=list)  # "line N (op): error" for records MLflow refused or unreadable


class Spool:
    """The spool files of the run directory ``run_dir`` (nothing is created before the first ``append``)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / SPOOL_FILE
        self.state_path = self.run_dir / STATE_FILE
        self.files_dir = self.run_dir / FILES_DIR
        self._checked_tail = False

    def append(self, record: dict[str, Any]) -> None:
        """Add one record at the end (one ``write`` of one line)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as spool:
            if not self._checked_tail:  # an earlier process may have died mid-line: start on a fresh line
                self._checked_tail = True
                if spool.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
                    line = "\n" + line
            spool.write(line)

    def file_for(self, artifact_file: str) -> Path:
        """Where to keep an artifact produced in memory (figure, dict) until it can be sent."""
        path = (self.files_dir / artifact_file).resolve()
        if self.files_dir.resolve() not in path.parents:
            raise ValueError(f"artifact file {artifact_file!r} points outside {self.files_dir}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def read_state(self) -> SpoolState:
        if not self.state_path.exists():
            return SpoolState()
        try:
            return SpoolState(**json.loads(self.state_path.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(
                f"{self.state_path} is not a spool state file ({error}); move it away to send the whole spool again "
                "(metric steps MLflow already holds are skipped, other records may be sent twice)"
            ) from error

    def write_state(self, state: SpoolState) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=1))
        os.replace(tmp, self.state_path)  # atomic: a sync cut short leaves the previous or the new state

    def pending(self, state: SpoolState) -> list[tuple[int, dict[str, Any] | None]]:
        """``(line index, record)`` for each complete line after ``state.done``; record None when unreadable."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")[:-1]  # the part after the last newline is not complete yet
        out: list[tuple[int, dict[str, Any] | None]] = []
        for index in range(state.done, len(lines)):
            try:
                record = json.loads(lines[index])
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            out.append((index, record if isinstance(record, dict) and "op" in record else None))
        return out

    def has_pending(self) -> bool:
        return bool(self.pending(self.read_state()))

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the sync lock if it is free; yields False (and holds nothing) when another sync holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / LOCK_FILE, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


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
