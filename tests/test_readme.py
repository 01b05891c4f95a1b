"""README.md as a new user reads it: every command of it, verbatim, in one scratch folder with the default settings.

Each command that can run here runs, changed only by the overrides COMMANDS appends to it (smaller crops, fewer
steps, a smaller validation); each other one (real datasets, 8 GPUs, weights you trained) stops at once with one
clear line saying what to change, and no traceback. The sweep runs on the single-node SLURM cluster with the default
tracking (a SQLite file): four jobs at once, all four runs in MLflow named by their swept values, and the MLflow UI,
in headless Chromium, shows them. Adding a command to the README means adding one row to COMMANDS.

Also here: the two newcomer commands, CI runs the test command verbatim, the code stays ruff clean.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from stereo_exp.tracking.server import free_port
from tests.browser import HeadlessChromium, chromium_binary
from tests.conftest import REPO_ROOT, TINY_RUN, subprocess_env

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest_plugins = ["tests.cluster_fixtures"]

# Appended to the training commands to make them seconds long: TINY_RUN's small crops, synthetic pairs and
# validation, but the default tracking (the point of running them as a user would) and the default schedule, cut
# short by train.max_steps (the schedule still spans the mix's 3600 steps, so the README's sweep values stay valid).
SHORT = (*[o for o in TINY_RUN if not o.startswith(("tracking=", "mix.dataset_steps="))], "train.max_steps=6")
DATA = r"paths\.data='(/datasets|data)'"  # where the dataset errors point
SWEEP = "python -m stereo_exp -m hydra/launcher=slurm schedule.decay_after_steps=0,1500 optim.clip_grad_norm=null,1.0"


@dataclass(frozen=True)
class Command:
    readme: str  # exactly as README.md shows it, without its comment
    appended: tuple[str, ...] = ()  # what the test appends: shortening overrides (a free port for a server)
    stops_with: str | None = None  # regex of the one line it stops with; None: it runs and exits 0
    needs: str = ""  # "slurm": runs only where the test cluster answers
    server: bool = False  # it serves until stopped (the test waits for GET /health)


COMMANDS = [
    Command("python -m stereo_exp", SHORT),
    Command(
        "python -m stereo_exp mix=cre_eth_mbl schedule=early_cosine optim.clip_grad_norm=1.0 paths.data=/datasets",
        stops_with=rf"^error: mix\.datasets: 3 of 3 datasets cannot be used \({DATA} is not a folder\):$",
    ),
    Command(
        "python -m stereo_exp experiment=crestereo_eth_mbl paths.data=/datasets",
        stops_with=rf"^error: mix\.datasets: 3 of 3 datasets cannot be used \({DATA} is not a folder\):$",
    ),
    Command("python -m stereo_exp --cfg job mix=multiset"),
    Command(
        "python -m stereo_exp mix=cre_eth_mbl schedule=early_cosine paths.data=/datasets",
        stops_with=rf"^error: mix\.datasets: 3 of 3 datasets cannot be used \({DATA} is not a folder\):$",
    ),
    Command(
        "python -m stereo_exp experiment=crestereo_multiset_finetune init_from=STAGE1.pth paths.data=/datasets",
        stops_with=r"^error: init_from=STAGE1\.pth: no such file",
    ),
    Command("python -m stereo_exp hydra.run.dir=outputs/my_run", SHORT),
    Command(
        "torchrun --nproc_per_node 8 -m stereo_exp mix=cre_eth_mbl",
        stops_with=rf"^error: mix\.datasets: 3 of 3 datasets cannot be used \({DATA} is not a folder\):$",
    ),
    Command(SWEEP, SHORT, needs="slurm"),
    Command("python -m stereo_exp.compare --sweep multirun", needs="slurm"),
    Command("mlflow ui --backend-store-uri sqlite:///mlflow.db", ("--port", "{port}"), server=True),
    Command(
        "python -m stereo_exp.evaluate weights=MEGVII_V1 model=crestereo_base dataset=middlebury2014-train",
        stops_with=rf"^error: Dataset 'middlebury2014-train' is missing or incomplete under {DATA}",
    ),
    Command("python -m stereo_exp.predict left.png right.png -o disparity.pfm"),
    Command(
        "python -m stereo_exp.eda mix=multiset augmentation=multiset",
        stops_with=rf"^error: mix\.datasets: 9 of 9 datasets cannot be used \({DATA} is not a folder\):$",
    ),
    Command(
        "python -m stereo_exp.compare --metric val/middlebury2014-train/mae",
        stops_with=r"^error: none of the \d+ runs logged 'val/middlebury2014-train/mae'",
    ),
]


def readme_commands() -> list[str]:
    """Every command of README.md's bash blocks but the quick start's set-up lines, without comments."""
    readme = (REPO_ROOT / "README.md").read_text()
    after_quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[1]
    blocks = re.findall(r"```bash\n(.+?)\n```", after_quick_start, flags=re.S)
    lines = [line.split(" #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def quick_start_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick_start)


@dataclass
class Outcome:
    returncode: int | None  # None: a server, still serving
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Workspace:
    folder: Path
    outcomes: dict[str, Outcome]
    ui_address: str | None  # where `mlflow ui` serves


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Workspace]:
    """A scratch folder in which every command of COMMANDS ran, in order (later commands use what earlier ones
    made: the sweep's store and folder)."""
    folder = tmp_path_factory.mktemp("readme")
    # predict's two images: the left one, and the right one shifted by 4 pixels (a pair of constant disparity).
    left = np.random.default_rng(0).integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    Image.fromarray(left).save(folder / "left.png")
    Image.fromarray(np.roll(left, -4, axis=1)).save(folder / "right.png")
    try:
        request.getfixturevalue("slurm_cluster")  # sets SLURM_CONF for the session
        have = {"slurm"}
    except pytest.skip.Exception:
        have = set()
    env = subprocess_env()
    outcomes, servers, ui_address = {}, [], None
    try:
        for command in COMMANDS:
            if command.needs and command.needs not in have:
                continue
            port = free_port()
            argv = shlex.split(command.readme) + [part.format(port=port) for part in command.appended]
            started = time.monotonic()
            if command.server:
                log = open(folder / f"server-{port}.log", "w")  # noqa: SIM115 (closed with the server)
                server = subprocess.Popen(
                    argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                servers.append((server, log))
                ui_address = f"http://127.0.0.1:{port}"
                outcomes[command.readme] = Outcome(None, _wait_healthy(ui_address, servers[-1][0]), "", 0.0)
                continue
            done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
            outcomes[command.readme] = Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        for readme, outcome in outcomes.items():  # pytest -s shows what each command cost
            print(f"{outcome.seconds:6.1f} s  exit {outcome.returncode}  {readme}")
        yield Workspace(folder, outcomes, ui_address)
    finally:
        for process, log in servers:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
            log.close()


def _wait_healthy(address: str, process: subprocess.Popen, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=2) as answer:
                if answer.status == 200:
                    return "healthy"
        except OSError:
            time.sleep(0.5)
    return f"not healthy (exit code {process.poll()})"


def test_every_readme_command_has_a_row_and_every_row_is_in_the_readme():
    assert sorted(readme_commands()) == sorted(command.readme for command in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c.readme.removeprefix("python -m ")[:60] for c in COMMANDS])
def test_a_readme_command_runs_or_stops_at_once_with_one_clear_line(workspace: Workspace, command: Command):
    if command.readme not in workspace.outcomes:
        pytest.skip(f"needs the {command.needs} test cluster")
    outcome = workspace.outcomes[command.readme]
    if command.server:
        assert outcome.stdout == "healthy"
        return
    if command.stops_with is None:
        assert outcome.returncode == 0, outcome.output[-3000:]
        return
    assert outcome.returncode not in (0, None), outcome.output[-3000:]
    # No traceback of ours (torchrun's agent prints its own ChildFailedError after the ranks ended).
    tracebacks = re.findall(r"Traceback \(most recent call last\):\n  File \"([^\"]+)\"", outcome.output)
    assert all(path.endswith("/torchrun") for path in tracebacks), outcome.output[-3000:]
    # One line says what to change (under torchrun each rank says it); indented or plain lines may follow with
    # details, such as the folder layout a dataset needs.
    errors = {line for line in outcome.output.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1, outcome.output[-3000:]
    assert re.search(command.stops_with, errors.pop())


def test_the_readme_has_exactly_two_newcomer_commands_setup_and_run_then_setup_and_test():
    run, test = quick_start_commands()
    assert run.endswith("python -m stereo_exp")
    assert test.endswith("pytest")
    assert run.split("&&")[:2] == test.split("&&")[:2]  # the same virtual environment set-up


def test_ci_runs_the_readme_test_command_verbatim():
    _, test = quick_start_commands()
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines


def test_the_code_is_ruff_clean():
    for command in (["check", "."], ["format", "--check", "."]):
        command = [sys.executable, "-m", "ruff", *command]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


# ---- the README's sweep, with the default tracking, and what the MLflow UI shows of it ----------------------------

POINTS = [("0", "null"), ("0", "1.0"), ("1500", "null"), ("1500", "1.0")]  # Hydra's order of the 2x2 sweep
NAMES = [f"decay_after_steps={decay} clip_grad_norm={clip}" for decay, clip in POINTS]


@pytest.fixture(scope="module")
def sweep(workspace: Workspace) -> Path:
    if SWEEP not in workspace.outcomes:
        pytest.skip("needs the SLURM test cluster")
    (folder,) = (workspace.folder / "multirun").glob("*/*")
    return folder


@pytest.mark.cluster
@pytest.mark.slow
def test_the_readme_sweep_starts_four_jobs_at_once_and_all_four_runs_land_in_the_default_sqlite_store(
    workspace: Workspace, sweep: Path, slurm_cluster
):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace.folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stereo_exp")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`stereo_exp.sweep_dir` = '{sweep}'")
    (parent,) = [run for run in runs if run.data.tags.get("stereo_exp.role") == "sweep"]
    jobs = {int(run.data.tags["stereo_exp.job_num"]): run for run in runs if run is not parent}
    assert sorted(jobs) == [0, 1, 2, 3]
    for num, ((decay, clip), name) in enumerate(zip(POINTS, NAMES, strict=True)):
        run = jobs[num]
        assert (run.info.run_name, run.info.status) == (name, "FINISHED")
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["stereo_exp.overrides"].startswith(
            f"schedule.decay_after_steps={decay} optim.clip_grad_norm={clip} "
        )
        assert run.data.params["schedule.decay_after_steps"] == decay
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/synthetic-val/mae")] == [0, 3, 6]
    # The parent summarises the sweep: what is swept, the ranked table and the plot of the held-out mae.
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {"schedule.decay_after_steps": "0,1500", "optim.clip_grad_norm": "null,1.0"}
    summary = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "sweep_summary"))
    assert summary == [f"sweep_summary/val_synthetic-val_mae.{ext}" for ext in ("csv", "md", "png")]
    assert all(name in parent.data.tags["mlflow.note.content"] for name in NAMES)

    # SLURM: four array tasks named after what they run, all started before the first one ended, all COMPLETED.
    array = slurm_cluster.multirun_job_ids(sweep)[0].split("_")[0]
    listed = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,JobName,State,Start,End"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tasks = sorted(line.split("|") for line in listed.splitlines())
    assert [(job, name, state) for job, name, state, _, _ in tasks] == [
        (f"{array}_{num}", f"stereo_exp:crestereo_tiny #{num} {name}", "COMPLETED") for num, name in enumerate(NAMES)
    ]
    assert max(start for *_, start, _ in tasks) < min(end for *_, end in tasks)

    # The submitter's last lines: every job, the sweep id, the MLflow link and what to run next.
    output = workspace.outcomes[SWEEP].stdout.splitlines()
    sweep_id = jobs[0].data.tags["stereo_exp.sweep_id"]
    relative = sweep.relative_to(workspace.folder)
    assert output[-8] == f"Sweep {relative} (id {sweep_id}): 4 of 4 jobs completed"
    for line, (num, name) in zip(output[-6:-2], enumerate(NAMES), strict=True):
        assert re.fullmatch(rf"  #{num} +{array}_{num} +COMPLETED +FINISHED +\d+\.\d{{4}} +{re.escape(name)}", line)
    view = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey=sweep-{sweep_id}"
    assert output[-2].startswith(f"MLflow experiment stereo_exp: {view}  (start the UI with: mlflow ui ")
    assert output[-1] == f"Next: python -m stereo_exp.compare --sweep {relative}"

    # compare --sweep multirun: the newest sweep, from the store its folder records, ranked by the held-out mae.
    compared = workspace.outcomes["python -m stereo_exp.compare --sweep multirun"].output
    assert f"val/synthetic-val/mae of 4 runs (sqlite:///{workspace.folder / 'mlflow.db'}" in compared
    assert sorted(re.findall(r"^\| (decay_after_steps=\S+ clip_grad_norm=\S+) \|", compared, re.M)) == sorted(NAMES)


@pytest.mark.cluster
@pytest.mark.slow
def test_the_mlflow_ui_in_a_browser_shows_the_sweeps_four_runs_by_their_swept_values(
    workspace: Workspace, sweep: Path, tmp_path: Path
):
    if chromium_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium missing in CI (.ci/run installs it)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    link = next(line for line in workspace.outcomes[SWEEP].stdout.splitlines() if line.startswith("MLflow experiment"))
    url = link.split(": ", 1)[1].split("  ", 1)[0].replace("http://127.0.0.1:5000", workspace.ui_address)
    screenshots = Path(os.environ.get("STEREO_SCREENSHOTS", tmp_path))
    with HeadlessChromium(width=1700, height=700) as browser:
        browser.open(url)  # the runs of the sweep: its swept keys and validation errors as columns
        text = browser.wait_for_text([*NAMES, "4 matching runs"], timeout_s=120)
        for column in ("schedule.decay_after_steps", "optim.clip_grad_norm", "val/synthetic-val/mae"):
            assert column in text
        assert "Training runs" in text  # the runs page, not the GenAI overview of an MLflow 3 experiment
        browser.click_text("Close")  # the assistant's side panel, for the picture
        browser.screenshot(screenshots / "mlflow_sweep_runs.png")
        browser.open(f"{url}&compareRunsMode=CHART")  # their curves, labelled by run name
        browser.wait_for_text([*NAMES, "val/synthetic-val/mae"], timeout_s=120)
        time.sleep(3)  # the charts draw after the text
        browser.screenshot(screenshots / "mlflow_sweep_charts.png")
    assert (screenshots / "mlflow_sweep_runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
