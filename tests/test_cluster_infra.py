"""The cluster infrastructure itself: the Hydra launcher configs in conf/hydra/launcher/, the single-node SLURM
cluster of launch/slurm_cluster.sh, and the MLflow server of stereo_exp/tracking/server.py. Training through them is
tested elsewhere (test_slurm_training.py, test_readme.py: the README's SLURM sweep, test_mlflow_server.py).

A test here that exercises SLURM, submitit or MLflow themselves stays only where it pins a behaviour of theirs that
the package or the tests rely on; its docstring says which and who relies on it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from tests.conftest import CONF_DIR

if TYPE_CHECKING:
    from tests.cluster_fixtures import SlurmCluster

# Loaded as a plugin (not imported above) so that pytest registers its fixtures and rewrites its asserts.
pytest_plugins = ["tests.cluster_fixtures"]


# --- the launcher configs (no cluster needed) -----------------------------------------------------------------


def _launcher_cfg(tmp_path: Path, overrides: list[str]):
    """Compose a throwaway primary config with the repository's conf/ on the search path, as a training run does."""
    (tmp_path / "primary.yaml").write_text(f"hydra:\n  searchpath:\n    - file://{CONF_DIR}\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return compose("primary", overrides=overrides, return_hydra_config=True).hydra.launcher


def test_the_slurm_launcher_config_asks_for_one_task_per_gpu_and_requeues(tmp_path, monkeypatch):
    for name in ("STEREO_SLURM_PARTITION", "STEREO_SLURM_ACCOUNT", "STEREO_SLURM_QOS", "STEREO_SLURM_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    launcher = _launcher_cfg(tmp_path, ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"])
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4  # follows gpus_per_node: one DDP rank per GPU
    assert launcher.partition is None  # no STEREO_SLURM_PARTITION: the cluster's default partition
    assert launcher.max_num_timeout == 3
    assert launcher.additional_parameters == {"requeue": True}  # written as "#SBATCH --requeue"


def test_site_settings_of_the_slurm_launcher_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STEREO_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("STEREO_SLURM_ACCOUNT", "vision")
    launcher = _launcher_cfg(tmp_path, ["hydra/launcher=slurm"])
    assert (launcher.partition, launcher.account) == ("gpu-long", "vision")


def test_the_local_launcher_config_does_not_kill_runs_after_the_plugins_hour(tmp_path):
    launcher = _launcher_cfg(tmp_path, ["hydra/launcher=local"])
    assert launcher._target_.endswith("LocalLauncher")
    assert launcher.timeout_min == 10080  # a week, not the plugin's 60 minutes
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (0, 1)


# --- the SLURM cluster ------------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_an_sbatch_job_runs_and_sacct_reports_it_completed(slurm_cluster: SlurmCluster, tmp_path):
    """Pins sacct's COMPLETED and ExitCode 0:0 for a job that ended well (the sweep summary of launcher.py and the
    fixtures' ``wait`` read them) and our cluster's task prolog (OMP_WAIT_POLICY=PASSIVE, launch/slurm_cluster.sh)."""
    job_id = slurm_cluster.sbatch(
        '#!/bin/bash\necho "job $SLURM_JOB_ID ran on $SLURM_JOB_NUM_NODES node: $SLURM_JOB_NODELIST" > out.txt\n'
        'echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY" >> out.txt\n',
        workdir=tmp_path,
    )
    assert slurm_cluster.wait(job_id, timeout_s=60) == "COMPLETED"
    assert slurm_cluster.exit_code(job_id) == "0:0"
    # Jobs share cores on the test cluster: its task prolog makes OpenMP threads sleep while they wait.
    assert (tmp_path / "out.txt").read_text() == f"job {job_id} ran on 1 node: localhost\nOMP_WAIT_POLICY=PASSIVE\n"


@pytest.mark.cluster
def test_a_failing_job_is_reported_failed_with_its_exit_code(slurm_cluster: SlurmCluster, tmp_path):
    """Pins sacct's FAILED and ExitCode for a job that failed: what the sweep summary of launcher.py reports for a
    failed job (the last round's sweep reported success while its jobs had failed)."""
    job_id = slurm_cluster.sbatch("#!/bin/bash\nexit 3\n", workdir=tmp_path, name="fails")
    assert slurm_cluster.wait(job_id, timeout_s=60) == "FAILED"
    assert slurm_cluster.exit_code(job_id) == "3:0"


@pytest.mark.cluster
def test_a_requeued_job_runs_again_with_the_same_id_and_a_restart_count(slurm_cluster: SlurmCluster, tmp_path):
    """Pins what preemption does on this cluster (``scontrol requeue``): SIGTERM to the job, then the same job id
    runs again with SLURM_RESTART_COUNT. Resuming a requeued training job relies on it (test_slurm_training.py)."""
    script = textwrap.dedent(
        """\
        #!/bin/bash
        echo "start restart=${SLURM_RESTART_COUNT:-none}" >> attempts.txt
        if [[ -z ${SLURM_RESTART_COUNT:-} ]]; then
            trap 'echo "SIGTERM" >> attempts.txt; exit 0' TERM
            touch running.flag
            sleep 300 &
            wait
        fi
        """
    )
    job_id = slurm_cluster.sbatch(script, workdir=tmp_path, name="requeue")
    deadline = time.monotonic() + 60
    while not (tmp_path / "running.flag").exists():
        assert time.monotonic() < deadline, f"job {job_id} did not start: {slurm_cluster.state(job_id)}"
        time.sleep(0.2)
    slurm_cluster.requeue(job_id)
    # KillWait does not matter (the job exits on SIGTERM); the restart waits cred_expire + a scheduling pass.
    assert slurm_cluster.wait(job_id, timeout_s=90) == "COMPLETED"
    assert (tmp_path / "attempts.txt").read_text() == "start restart=none\nSIGTERM\nstart restart=1\n"


@pytest.mark.cluster
@pytest.mark.slow
def test_a_start_after_an_end_without_stop_cancels_the_jobs_whose_processes_are_gone(tmp_path):
    """launch/slurm_cluster.sh's own behaviour (ours, not SLURM's)."""
    # CI once ran on an image of a machine whose cluster folder held four jobs that were running when the image was
    # taken. Recovered as RUNNING, they held the node for 32 minutes and failed the cluster tests; `start` now
    # cancels them. A cluster of its own (folder, name, ports), so that the shared test cluster is not touched.
    from tests.cluster_fixtures import CLUSTER_SCRIPT, SlurmCluster, start_cluster

    folder = Path(tempfile.mkdtemp(prefix="slurm-leftover-", dir="/tmp"))  # short: MariaDB's socket path
    folder.chmod(0o755)  # MariaDB runs as its own user
    settings = {"SLURM_CLUSTER_DIR": str(folder), "SLURM_CLUSTER_NAME": "leftover", "SLURM_CLUSTER_PORT": "6937"}
    conf = folder / "etc" / "slurm.conf"
    env = {**os.environ, **settings, "SLURM_CONF": str(conf)}
    prefix = ("env", f"SLURM_CONF={conf}")
    cluster = SlurmCluster(conf=conf, partition="debug", cpus=0, started_here=True, client_prefix=prefix)

    def start() -> str:
        done = subprocess.run([str(CLUSTER_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        start_cluster(["start"], env, lambda: True, f"run `sudo {CLUSTER_SCRIPT} start`")
        job_id = cluster.run("sbatch", "--parsable", "--time=1-0", f"--chdir={tmp_path}", "--wrap", "sleep 300")
        deadline = time.monotonic() + 60
        while cluster.state(job_id) != "RUNNING":
            assert time.monotonic() < deadline, f"job {job_id} did not start: {cluster.state(job_id)}"
            time.sleep(0.5)
        # Everything of this cluster ends at once, as in a machine image: its daemons, MariaDB, the job's step and
        # processes (munged serves every cluster of the machine and stays).
        names = ("slurmctld", "slurmd", "slurmdbd", "mariadb")
        daemons = [int((folder / "run" / f"{name}.pid").read_text()) for name in names]
        for pid in [*daemons, *_processes_with(f"SLURM_CONF={conf}")]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        started = time.monotonic()
        assert f"cancelling jobs left from before the last start (their processes are gone): {job_id}" in start()
        assert cluster.state(job_id) == "CANCELLED"
        second = cluster.sbatch("#!/bin/bash\ntrue\n", workdir=tmp_path, name="after")
        assert cluster.wait(second, timeout_s=60) == "COMPLETED"  # the node is free at once, not after half an hour
        assert time.monotonic() - started < 90
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "purge"], env=env, capture_output=True, timeout=300)


def _processes_with(variable: str) -> list[int]:
    """Pids of the processes whose environment holds ``variable`` (NAME=VALUE): a cluster's job steps and jobs."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                if variable.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
    return pids


def _all_reduce_rank_plus_one() -> dict[str, float | int]:
    """Runs inside each SLURM task: join the gloo group that submitit's environment describes and sum rank + 1."""
    import submitit
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    dist.init_process_group("gloo")
    try:
        total = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(total)
    finally:
        dist.destroy_process_group()
    return {"rank": env.rank, "world_size": env.world_size, "local_rank": env.local_rank, "sum": total.item()}


@pytest.mark.cluster
def test_the_two_tasks_of_a_job_see_each_other_through_gloo(slurm_cluster: SlurmCluster, tmp_path):
    """Pins submitit's ``helpers.TorchDistributedEnvironment`` on SLURM tasks: rank, world size and local rank per
    task, and a rendezvous that a gloo process group can join. The SLURM set-up of stereo_exp/distributed.py relies on
    it (issue 15 moves that set-up onto this helper)."""
    executor = slurm_cluster.executor(tmp_path / "submitit", tasks_per_node=2)
    job = executor.submit(_all_reduce_rank_plus_one)
    results = job.results()  # one result per task, rank order
    assert results == [
        {"rank": 0, "world_size": 2, "local_rank": 0, "sum": 3.0},  # 1 + 2 summed across both ranks
        {"rank": 1, "world_size": 2, "local_rank": 1, "sum": 3.0},
    ]
    assert slurm_cluster.wait(job.job_id, timeout_s=60) == "COMPLETED"


# --- the MLflow server ------------------------------------------------------------------------------------------


@pytest.mark.network
def test_the_mlflow_server_accepts_a_run_and_the_client_reads_it_back(shared_mlflow_server, tmp_path):
    """Our server (tracking/server.py) with MLflow's client: params as strings, metric histories, and artifacts
    stored through the server in its own folder. Jobs on other machines than the server's rely on the last."""
    assert shared_mlflow_server.uri.startswith("http://127.0.0.1:")
    client = MlflowClient(tracking_uri=shared_mlflow_server.uri)
    experiment_id = client.create_experiment("infra")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "schedule.decay_after_steps", 30000)
    for step, mae in [(0, 4.0), (10, 2.5)]:
        client.log_metric(run_id, "val/mae", mae, step=step)
    picture = tmp_path / "picture.txt"
    picture.write_text("not really a picture")
    client.log_artifact(run_id, str(picture))
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.data.params == {"schedule.decay_after_steps": "30000"}  # MLflow stores params as strings
    history = client.get_metric_history(run_id, "val/mae")
    assert [(m.step, m.value) for m in history] == [(0, 4.0), (10, 2.5)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["picture.txt"]
    # Artifacts went through the server into its own folder, not into this process's working directory.
    assert (shared_mlflow_server.root / "artifacts" / experiment_id / run_id / "artifacts" / "picture.txt").exists()
    assert run.info.status == "FINISHED"


@pytest.mark.network
def test_the_mlflow_server_comes_back_on_the_same_port_with_its_runs_after_a_stop(mlflow_server):
    """Our server (tracking/server.py) restarts on its URI with its runs: the runs and spools that log to it rely on
    it."""
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("restart")).info.run_id
    client.log_metric(run_id, "loss", 1.5, step=1)
    uri = mlflow_server.uri

    mlflow_server.stop()
    assert not mlflow_server.is_healthy()
    mlflow_server.start()

    assert mlflow_server.uri == uri
    client.log_metric(run_id, "loss", 0.5, step=2)  # the same run keeps going after the restart
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 0.5)]
