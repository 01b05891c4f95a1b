"""The disparity EDA: statistics with known answers, and the command on the embedded data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from stereo_exp.data.disparity_stats import DisparityStats

CONF = Path(__file__).resolve().parents[1] / "conf"
REPO = CONF.parent


def test_quantiles_and_shares_come_out_right_on_known_values():
    stats = DisparityStats(resolution=0.25, hist_max=512.0)
    disparity = torch.arange(1, 101, dtype=torch.float32).view(1, 10, 10)  # 1, 2, ..., 100 px
    valid = torch.ones(1, 10, 10, dtype=torch.bool)
    valid[0, 0, :2] = False  # 1 and 2 px are not ground truth
    stats.add(disparity, valid)
    summary = stats.summary(quantiles=[0.0, 0.5, 1.0], thresholds=[64.0], max_disparity=90.0, bins=7)
    assert summary["valid_share"] == pytest.approx(0.98)
    assert summary["min"] == 3.0 and summary["max"] == 100.0
    assert summary["mean"] == pytest.approx(sum(range(3, 101)) / 98)
    assert summary["quantiles"]["p50"] == pytest.approx(51.5, abs=0.25)  # median of 3..100, to one fine bin
    assert summary["quantiles"]["p0"] == 3.0 and summary["quantiles"]["p100"] == 100.0
    assert summary["share_at_or_above"]["64"] == pytest.approx(37 / 98)  # 64..100
    assert summary["share_above_max_disparity"] == pytest.approx(11 / 98)  # 90..100
    assert sum(summary["histogram"]["counts"]) == 98


def test_values_beyond_the_histogram_are_counted_as_overflow():
    stats = DisparityStats(resolution=1.0, hist_max=100.0)
    stats.add(torch.tensor([[[50.0, 150.0, 300.0, 20.0]]]), torch.ones(1, 1, 4, dtype=torch.bool))
    summary = stats.summary(quantiles=[0.99], thresholds=[100.0], max_disparity=None, bins=4)
    assert summary["overflow"] == 2
    assert summary["share_at_or_above"]["100"] == 0.5
    assert summary["max"] == 300.0 and summary["share_above_max_disparity"] is None


def test_the_mix_row_weights_datasets_by_their_share_of_steps():
    near, far = DisparityStats(resolution=1.0, hist_max=256.0), DisparityStats(resolution=1.0, hist_max=256.0)
    for _ in range(3):  # different numbers of crops per dataset must not matter
        near.add(torch.full((1, 4, 4), 100.0), torch.ones(1, 4, 4, dtype=torch.bool))
    far.add(torch.full((1, 4, 4), 10.0), torch.ones(1, 4, 4, dtype=torch.bool))
    mix = DisparityStats.weighted([(near, 0.12), (far, 0.88)])
    assert mix.share_at_or_above(50.0) == pytest.approx(0.12)
    assert mix.quantile(0.5) == pytest.approx(10.0, abs=1.0)


def test_the_eda_command_on_the_embedded_data_writes_its_report(tmp_path):
    out = tmp_path / "report"
    command = [
        sys.executable,
        "-m",
        "stereo_exp.eda",
        "tracking=none",
        "eda.num_crops=6",
        "loader.num_workers=0",
        f"paths.output={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synthetic" in result.stdout and "p50" in result.stdout  # the printed table
    report = json.loads((out / "eda.json").read_text())
    row = report["datasets"]["synthetic"]
    assert row["crops"] == 6 and row["valid_share"] == 1.0  # dense procedural ground truth
    # datasets.synthetic draws surfaces in 2-40 px; the embedded crops rescale by 0.8-1.5
    assert row["min"] >= 2.0 * 0.8 - 0.5 and row["max"] <= 40.0 * 1.5 + 0.5
    assert row["quantiles"]["p5"] < row["quantiles"]["p50"] < row["quantiles"]["p95"]
    assert report["setup"]["crop_size"] == [128, 160]
    assert (out / "eda_histograms.png").stat().st_size > 10_000
    assert (out / "eda.txt").read_text().startswith("crop 128x160")


def test_the_eda_logs_its_report_to_mlflow(tmp_path, monkeypatch):
    from stereo_exp.eda import run_eda

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns of the working directory
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        *("eda.num_crops=3", "loader.num_workers=0", f"paths.output={tmp_path / 'out'}"),
        *(f"tracking.uri={uri}", "tracking.experiment=eda-test", "augmentation.max_disparity=20"),
        *("mix.datasets=[synthetic,synthetic-val]", "mix.dataset_steps=[3,1]", "augmentation.crop_size=[32,48]"),
        *("datasets.synthetic.height=48", "datasets.synthetic.width=64"),
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="test"):
        cfg = compose("eda", overrides=overrides)
    report = run_eda(cfg)
    assert set(report["datasets"]) == {"synthetic", "synthetic-val", "mix"}
    share = report["datasets"]["synthetic"]["share_above_max_disparity"]
    assert 0.0 < share < 1.0  # surfaces up to 40 px, cap at 20 px
    # the mix row: 3/4 synthetic, 1/4 synthetic-val, counted per training crop
    rows = report["datasets"]
    expected = 0.75 * rows["synthetic"]["mean"] + 0.25 * rows["synthetic-val"]["mean"]
    assert math.isclose(rows["mix"]["mean"], expected, rel_tol=0.02)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("eda-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eda/synthetic/share_above_max_disparity"] == pytest.approx(share)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"eda.txt", "eda.json", "eda_histograms.png"}
