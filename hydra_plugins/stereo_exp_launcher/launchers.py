"""``hydra/launcher=slurm``, ``local`` and ``sequential`` (conf/hydra/launcher/): hydra-submitit-launcher's launchers
and Hydra's basic one with stereo_exp's additions (stereo_exp/launcher.py: checks before any job starts, the MLflow
parent run made once, failed jobs that fail, Ctrl-C, a summary of every job). Hydra imports this module whenever it
starts: keep it light."""

from hydra._internal.core_plugins import basic_launcher
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from stereo_exp.launcher import SequentialSweepLauncher, SlurmSweepLauncher, SubmititSweepLauncher


class SlurmLauncher(SlurmSweepLauncher, submitit_launcher.SlurmLauncher):
    """Every point of a multirun is one SLURM job (one job array per sweep)."""


class LocalLauncher(SubmititSweepLauncher, submitit_launcher.LocalLauncher):
    """Every point of a multirun is a process of this machine, run at the same time as the others."""


class SequentialLauncher(SequentialSweepLauncher, basic_launcher.BasicLauncher):
    """Every point of a multirun runs in this process, one after another (the default of ``-m``)."""
