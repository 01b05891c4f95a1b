"""The README's two newcomer commands stay runnable: CI runs the test command verbatim, the code stays ruff clean."""

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def readme_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick_start)


def test_readme_has_exactly_two_commands_setup_and_run_then_setup_and_test():
    run, test = readme_commands()
    assert run.endswith("python -m stereo_exp")
    assert test.endswith("pytest")
    assert run.split("&&")[:2] == test.split("&&")[:2]  # the same virtual environment set-up


def test_ci_runs_the_readme_test_command_verbatim():
    _, test = readme_commands()
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines


def test_the_code_is_ruff_clean():
    for command in (["check", "."], ["format", "--check", "."]):
        command = [sys.executable, "-m", "ruff", *command]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
