"""Addresses of MLflow stores and of the MLflow UI: pure functions of a tracking URI (nothing is contacted)."""

from __future__ import annotations

from pathlib import Path

# Where `mlflow ui` serves by default: the address printed for a SQLite store.
DEFAULT_UI_ADDRESS = "http://127.0.0.1:5000"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URI (relative to the working directory), None for other URIs."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def resolve_uri(uri: str) -> str:
    """The URI with a relative SQLite file made absolute (``sqlite:///mlflow.db`` -> ``sqlite:////work/mlflow.db``),
    so that it means the same store from any working directory; other URIs unchanged."""
    path = sqlite_path(uri)
    return uri if path is None or path.is_absolute() else f"sqlite:///{path.resolve()}"


def ui_address(uri: str) -> str:
    """The address of the MLflow UI for ``uri``: the server itself, or where ``mlflow ui`` serves a local store."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI_ADDRESS


def ui_hint(uri: str) -> str:
    """How to open the UI of ``uri``: nothing to start for a server; the ``mlflow ui`` command for a local store."""
    if uri.startswith(("http://", "https://")):
        return ""
    return f"start the UI with: mlflow ui --backend-store-uri {resolve_uri(uri)}"


def experiment_url(uri: str, experiment_id: str, *, view: str | None = None) -> str:
    """The experiment's training runs in the MLflow UI; ``view`` names a shared view (tracking/sweep.py)."""
    url = f"{ui_address(uri)}/#/experiments/{experiment_id}/runs"
    return f"{url}?viewStateShareKey={view}" if view else url


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI."""
    return f"{ui_address(uri)}/#/experiments/{experiment_id}/runs/{run_id}"
