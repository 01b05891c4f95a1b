"""A real ``mlflow server`` on 127.0.0.1 with a SQLite backend and a local artifact store, all in one folder.

Concurrent writers (the jobs of a SLURM sweep) should not open one SQLite file directly: SQLite locks the whole
database for every write and jobs fail with "database is locked". They talk to one server instead, which
serialises the writes; runs log to ``tracking.uri=http://127.0.0.1:PORT``.

Command line (from any directory; ``--dir`` is relative to it)::

    python -m stereo_exp.tracking.server start --dir outputs/mlflow_server --port 5000   # returns once it is healthy
    python -m stereo_exp.tracking.server status --dir outputs/mlflow_server
    python -m stereo_exp.tracking.server stop --dir outputs/mlflow_server

(``python -m launch.mlflow_server`` is the same command from a checkout's root.)

In Python (tests use it through ``tests/cluster_fixtures.py``)::

    server = MlflowServer(tmp_path).start()   # a free port unless one is given
    ... log to server.uri ...
    server.stop(); server.start()             # same port, same database: a restart mid-run
    server.stop()

The folder holds ``mlflow.db`` (runs, params, metrics), ``artifacts/`` (served through the server, so clients
need no shared file system), ``server.log`` (the server's output) and, while it runs, ``server.json``
(pid, process group, port, url) so that a later ``stop`` or ``status`` finds it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"  # loopback only, unless the caller asks for another interface
STATE_FILE = "server.json"
# MLflow 3's server also starts a job runner with seven huey consumer processes (GenAI evaluation jobs, unused
# here) and temporary queues in /dev/shm; switched off, the server is one uvicorn process beside its parent.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
LOG_FILE = "server.log"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """One ``mlflow server`` process group whose database, artifacts and log live in ``root``.

    Args:
        root: folder for ``mlflow.db``, ``artifacts/``, ``server.log`` and ``server.json`` (created if missing).
        port: TCP port; ``None`` picks a free one at the first ``start`` and keeps it for restarts.
        host: interface to bind; 127.0.0.1 keeps the server private to this machine.
        workers: server worker processes (1 is plenty for tests and a handful of cluster jobs).
        startup_timeout_s: seconds ``start`` waits for ``GET /health`` to answer before it gives up.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        workers: int = 1,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.workers = workers
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The tracking URI clients use, ``http://HOST:PORT`` (valid once a port is chosen)."""
        if self.port is None:
            raise RuntimeError(f"MLflow server in {self.root} has no port yet: call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / LOG_FILE

    def command(self) -> list[str]:
        """The ``mlflow server`` command line this object runs."""
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def is_healthy(self, timeout_s: float = 2.0) -> bool:
        """True when ``GET /health`` answers 200 now."""
        if self.port is None:
            return False
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> MlflowServer:
        """Start the server (a no-op when this object's server runs) and wait until it is healthy.

        Raises:
            RuntimeError: the process exited or did not answer within ``startup_timeout_s``; the message
                names the log file and quotes its end.
        """
        if self._process is not None and self._process.poll() is None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        if self.is_healthy():
            raise RuntimeError(f"port {self.port} on {self.host} already serves an MLflow server; pick another port")
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.command())}\n".encode())
            log.flush()
            # Own session and process group: the server's worker processes are stopped together with it, and a
            # Ctrl-C in the caller's terminal does not reach them.
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **SERVER_ENV},
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {self._process.returncode} before answering on {self.uri}; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            if self.is_healthy():
                self._write_state()
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"mlflow server did not answer on {self.uri}/health within {self.startup_timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``timeout_s`` (a no-op when stopped)."""
        if self._process is None:
            return
        _stop_group(self._process.pid, timeout_s, is_alive=lambda: self._process.poll() is None)
        self._process.wait()
        self._process = None
        (self.root / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_state(self) -> None:
        assert self._process is not None
        state = {"pid": self._process.pid, "pgid": self._process.pid, "port": self.port, "url": self.uri}
        (self.root / STATE_FILE).write_text(json.dumps(state) + "\n")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(log unreadable: {error})"


def _stop_group(pgid: int, timeout_s: float, is_alive: Callable[[], bool]) -> None:
    """SIGTERM the process group ``pgid``; SIGKILL it if its leader is still alive after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        # Also ends workers that outlived their parent after the SIGTERM.
        os.killpg(pgid, signal.SIGKILL)


def _read_state(root: Path) -> dict | None:
    path = root / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _is_our_server(pid: int) -> bool:
    """True when ``pid`` is alive and runs ``mlflow server`` (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlflow" in cmdline and b"server" in cmdline


def client_uri(host: str, port: int) -> str:
    """The tracking URI to give jobs for a server bound to ``host``: this machine's name when it listens on every
    interface (``0.0.0.0``, ``::``), an address a job on another node would take for its own machine."""
    return f"http://{socket.gethostname() if host in ('0.0.0.0', '::') else host}:{port}"


def _cli_start(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    state = _read_state(root)
    if state and _is_our_server(state["pid"]):
        print(f"mlflow server already running: {state['url']} (pid {state['pid']})")
        return 0
    server = MlflowServer(root, port=args.port, host=args.host, workers=args.workers)
    server.start()
    # The server outlives this command: it runs in its own session and server.json records it for `stop`.
    print(f"mlflow server running: {server.uri} (pid {server._process.pid}, folder {root}, log {server.log_path})")
    uri = client_uri(args.host, server.port)
    print(f"log to it with: tracking.uri={uri}   or   export MLFLOW_TRACKING_URI={uri}")
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    state = _read_state(root)
    if not state or not _is_our_server(state["pid"]):
        print(f"no mlflow server running from {root}")
        (root / STATE_FILE).unlink(missing_ok=True)
        return 0
    _stop_group(state["pgid"], 15.0, is_alive=lambda: _is_our_server(state["pid"]))
    (root / STATE_FILE).unlink(missing_ok=True)
    print(f"stopped mlflow server {state['url']} (pid {state['pid']})")
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    state = _read_state(root)
    if not state or not _is_our_server(state["pid"]):
        print(f"no mlflow server running from {root}")
        return 1
    server = MlflowServer(root, port=state["port"], host=args.host)
    health = "healthy" if server.is_healthy() else "NOT answering /health"
    print(f"mlflow server {state['url']} (pid {state['pid']}): {health}")
    return 0 if health == "healthy" else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``start``, ``stop`` or ``status`` of the server whose folder is ``--dir``."""
    parser = argparse.ArgumentParser(prog="python -m stereo_exp.tracking.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument(
        "--dir", default="outputs/mlflow_server", help="folder for mlflow.db, artifacts/ and the log (git-ignored)"
    )
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default 5000)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    args = parser.parse_args(argv)
    action = {"start": _cli_start, "stop": _cli_stop, "status": _cli_status}[args.action]
    return action(args)


if __name__ == "__main__":
    sys.exit(main())
