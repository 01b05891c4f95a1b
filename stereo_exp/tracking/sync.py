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
from pathlib import Path

from stereo_exp.tracking.mlflow_io import http_settings, open_client
from stereo_exp.tracking.mlflow_tracker import TrackingConfig
from stereo_exp.tracking.spool import SPOOL_FILE, Spool, SpoolBusy, SpoolState, sync_spool


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
    parser = argparse.ArgumentParser(prog="python -m stereo_exp.tracking.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, or folders (sweep dirs) to search for them")
    parser.add_argument("--uri", help="tracking URI to send to (default: the one each run logged to)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    defaults = TrackingConfig()
    try:
        spools = find_spools(args.paths)
    except FileNotFoundError as error:
        parser.error(str(error))  # the usage and the folder that is missing; exit status 2
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
        with http_settings(
            timeout_s=defaults.http_timeout_s,
            max_retries=defaults.http_max_retries,
            backoff_factor=defaults.http_backoff_factor,
        ):
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
