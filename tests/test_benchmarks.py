"""benchmarks/ runs from a checkout without tests/: its data and weights come from ``stereo_exp.testing``."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_benchmark_imports_the_tests_package():
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            assert not [m for m in modules if m.split(".")[0] == "tests"], f"{path.name}:{node.lineno} imports tests"


def test_the_benchmark_command_and_the_data_benchmark_run_in_a_checkout_without_tests(tmp_path):
    checkout = tmp_path / "checkout"
    for folder in ("benchmarks", "stereo_exp", "conf"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # the copy, not this worktree, is imported
    run = {"cwd": checkout, "env": env, "capture_output": True, "text": True, "timeout": 300}

    help_ = subprocess.run([sys.executable, "-m", "benchmarks.run", "--help"], **run)
    assert help_.returncode == 0 and "python -m benchmarks.run all" in help_.stdout, help_.stderr

    out = tmp_path / "data.json"
    command = [sys.executable, "-m", "benchmarks.run", "data", "--device", "cpu", "--threads", "1", "--warmup", "0"]
    command += ["--repeats", "1", "--workers", "0", "--frame", "48x64", "--crop", "32x48", "--samples", "2"]
    data = subprocess.run([*command, "--out", str(out)], **run)
    assert data.returncode == 0, data.stdout + data.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["workers"] == 0 and row["samples"] == 2
