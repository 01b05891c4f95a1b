"""``hydra/launcher=slurm`` and ``hydra/launcher=local`` (conf/hydra/launcher/): hydra-submitit-launcher's launchers
with stereo_exp's additions (stereo_exp/launcher.py: checks before submitting, the MLflow parent run made once,
failed jobs that fail, a summary of every job). Hydra imports this module whenever it starts: keep it light."""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from stereo_exp.launcher import SlurmSweepLauncher, SweepLauncher


class SlurmLauncher(SlurmSweepLauncher, submitit_launcher.SlurmLauncher):
    """Every point of a multirun is one SLURM job (one job array per sweep)."""


class LocalLauncher(SweepLauncher, submitit_launcher.LocalLauncher):
    """Every point of a multirun is a process of this machine, run at the same time as the others."""
