"""The entry points' endings: a failed run ends (its loader workers let go), a user mistake ends in one line."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import TINY_RUN, subprocess_env


def test_a_run_that_fails_with_loader_workers_running_ends_with_its_error(tmp_path):
    # The traceback's frames held the run's DataLoader, whose worker processes ignore SIGTERM (they leave it to the
    # training process): Python waited for them at exit, and the failed run never ended.
    command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, f"hydra.run.dir={tmp_path}/run", "loader.num_workers=2",
               "schedule.warmup_steps=0", "schedule.lr=1e30", "train.max_nonfinite_steps=1"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "NonFiniteLossError: 1 consecutive steps" in done.stderr


def test_a_wrong_value_ends_a_single_run_in_one_line_before_anything_is_written(tmp_path):
    command = [sys.executable, "-m", "stereo_exp", *TINY_RUN, f"hydra.run.dir={tmp_path}/run", "schedule.min_lr=1"]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: schedule.min_lr (1.0) must lie in [0, schedule.lr (0.0004)]."
    assert not (tmp_path / "run" / "config.yaml").exists()
