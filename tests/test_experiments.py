"""The experiment files (conf/experiment/*.yaml): the published recipes compose to their published values, and
every experiment file trains for two steps on tiny settings over replicas of its real data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from omegaconf.errors import InterpolationResolutionError

from stereo_exp.config import register_configs
from stereo_exp.engine import checkpoint as ckpt
from stereo_exp.engine.trainer import train
from stereo_exp.testing.dataset_replicas import write_replica
from tests.conftest import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
STAGE_1 = "crestereo_eth_mbl"
# Two steps of the tiny CREStereo on small crops; the experiment's mix, schedule, optimizer and augmentation stay.
TINY = [
    "model=crestereo_tiny",
    "augmentation.crop_size=[48,64]",
    "train.max_steps=2",
    "train.log_every=1",
    "train.num_threads=1",
    "loader.num_workers=0",
    "eval.datasets=[synthetic-val]",
    "eval.max_samples=2",
    "eval.save_images=0",
    "datasets.synthetic.height=64",
    "datasets.synthetic.width=80",
    "tracking=none",
]


def compose_experiment(name: str, *overrides: str, hydra: bool = False) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=[f"experiment={name}", *overrides], return_hydra_config=hydra)
    if not hydra:
        with open_dict(cfg):
            cfg.pop("hydra", None)
    return cfg


def test_the_stage_1_recipe_composes_to_the_published_hyper_parameters():
    cfg = compose_experiment("crestereo_eth_mbl")
    assert cfg.model.name == "crestereo_base"
    assert list(cfg.mix.datasets) == ["crestereo", "eth3d-train", "middlebury2014-other"]
    assert list(cfg.mix.dataset_steps) == [264000, 18000, 18000]  # 300,000 steps, 88 / 6 / 6 %
    assert list(cfg.augmentation.crop_size) == [384, 512] and list(cfg.augmentation.scale_range) == [0.6, 1.0]
    s = cfg.schedule
    assert (s.lr, s.min_lr, s.warmup_steps, s.decay_after_steps, s.decay) == (4e-4, 2e-5, 6000, 30000, "cosine")
    assert (cfg.optim.name, cfg.optim.clip_grad_norm, cfg.train.batch_size) == ("adam", 1.0, 2)
    assert cfg.init_from is None
    # the reference's loss (docs/REFERENCE.md): all-pixel mean, vertical flow supervised, no max-disparity cap
    loss = cfg.loss
    assert (loss.normalization, loss.vertical, loss.max_disparity, loss.gamma) == ("all", True, None, 0.8)
    assert cfg.augmentation.max_disparity is None


def test_the_multiset_fine_tuning_starts_from_the_stage_1_weights_it_is_given(monkeypatch):
    monkeypatch.setenv("STEREO_STAGE1_CHECKPOINT", "/runs/stage1/checkpoints/step_0300000.pth")
    cfg = compose_experiment("crestereo_multiset_finetune")
    assert cfg.init_from == "/runs/stage1/checkpoints/step_0300000.pth"
    assert compose_experiment("crestereo_multiset_finetune", "init_from=/elsewhere.pth").init_from == "/elsewhere.pth"
    assert list(cfg.mix.dataset_steps) == [12000] * 9  # nine sets, 108,000 steps
    assert list(cfg.augmentation.scale_range) == [0.2, 0.8]
    s = cfg.schedule
    assert (s.lr, s.min_lr, s.warmup_steps, s.decay_after_steps, s.decay) == (4e-4, 2e-5, 0, 0, "cosine")
    assert (cfg.model.name, cfg.optim.clip_grad_norm, cfg.train.batch_size) == ("crestereo_base", None, 2)
    assert (cfg.loss.normalization, cfg.loss.vertical) == ("all", True)


def test_the_multiset_fine_tuning_without_stage_1_weights_names_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("STEREO_STAGE1_CHECKPOINT", raising=False)
    cfg = compose_experiment("crestereo_multiset_finetune", f"paths.output={tmp_path}")
    with pytest.raises(InterpolationResolutionError, match="STEREO_STAGE1_CHECKPOINT"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # stopped before any work


def test_the_schedule_sweep_preset_sweeps_decay_start_and_clipping_over_the_stage_1_recipe():
    cfg = compose_experiment("schedule_sweep", hydra=True)
    assert dict(cfg.hydra.sweeper.params) == {
        "schedule.decay_after_steps": "0,30000,180000",  # six jobs: 3 decay starts x clip on/off
        "optim.clip_grad_norm": "null,1.0",
    }
    assert cfg.mix.datasets == compose_experiment(STAGE_1).mix.datasets  # everything else is stage 1
    assert cfg.hydra.launcher._target_.endswith(
        "SequentialLauncher"
    )  # the default: the launcher is chosen on the command line


@pytest.fixture(scope="module")
def replica_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replicas (real on-disk formats, tiny images) of every data set any experiment trains on."""
    root = tmp_path_factory.mktemp("datasets")
    names = {n for e in EXPERIMENTS for n in compose_experiment(e, "init_from=unused").mix.datasets}
    for name in sorted(names):
        write_replica(name, root)
    return root


@pytest.fixture(scope="module")
def stage_1_checkpoint(replica_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp(STAGE_1)
    return train(compose_experiment(STAGE_1, *TINY, f"paths.data={replica_root}", f"paths.output={output}")).checkpoint


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains_two_steps_on_tiny_settings(
    experiment, replica_root, stage_1_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setenv("STEREO_STAGE1_CHECKPOINT", str(stage_1_checkpoint))  # for the fine-tuning stage
    cfg = compose_experiment(experiment, *TINY, f"paths.data={replica_root}", f"paths.output={tmp_path}")
    result = train(cfg)
    state = ckpt.load_checkpoint(result.checkpoint)
    assert state["step"] == 2
    assert state["config"]["mix"] == compose_experiment(experiment, "init_from=x").mix  # the experiment's own mix
    assert set(result.metrics) >= {"val/synthetic-val/mae"}
    if experiment == "crestereo_multiset_finetune":
        assert state["config"]["init_from"] == str(stage_1_checkpoint)
