"""Disparity distribution of training crops: ``python -m stereo_exp.eda [mix=...] [augmentation=...] [key=value ...]``.

Draws ``eda.num_crops`` crops from every dataset of the mix through the real training pipeline (catalog reader,
the mix's per-dataset shuffle, the full augmentation at the training crop size and scale range) and reports, per
dataset and for the mix weighted by its dataset steps, the distribution of valid disparities: quantiles, mean, max,
share of valid pixels, share at or above ``eda.thresholds`` and above ``augmentation.max_disparity`` (the pixels
training leaves out; the statistics themselves are taken before that cap). This is the check the published
reference recommends before spending compute: a model learns the disparity scale of its crops.

Writes to ``paths.output``: ``eda.txt`` (the table, also printed), ``eda.json`` (everything, with histograms) and
``eda_histograms.png``; the MLflow run (``tracking``) gets the summary metrics as ``eda/<dataset>/<stat>`` and the
three files.

    python -m stereo_exp.eda                                              # the embedded default (synthetic)
    python -m stereo_exp.eda mix=cre_eth_mbl augmentation=crestereo paths.data=/datasets
    python -m stereo_exp.eda mix=multiset augmentation=multiset eda.num_crops=256 loader.num_workers=8
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from stereo_exp.cli import (
    clean_errors,
    exit_interrupted,
    ignore_stops_while_exiting,
    interruptible_run,
    refuse_another_commands_folder,
    refuse_unknown_keys,
    save_hydra_records,
    uninterrupted,
)
from stereo_exp.config import register_configs, to_plain, typed

if TYPE_CHECKING:
    from stereo_exp.data.config import EdaAppConfig

log = logging.getLogger("stereo_exp.eda")

# Hydra composes the config when main() is called; the schemas must be in the ConfigStore before that.
register_configs("eda")

MIX_ROW = "mix"  # name of the weighted row of the report


def run_eda(cfg: DictConfig) -> dict[str, Any]:
    """Analyse as the composed ``cfg`` (conf/eda.yaml) says; returns the report (the content of ``eda.json``)."""
    from stereo_exp.engine.preflight import check_mix_datasets, refusing
    from stereo_exp.tracking import MlflowTracker

    config: EdaAppConfig = typed(cfg)  # typed once: every schema's checks
    with refusing():  # before the MLflow store or run exists
        check_mix_datasets(config.mix, data_root=config.paths.data, options=config.datasets)
    refuse_another_commands_folder()  # hydra.run.dir= of a training run: its records stay its own
    tracker = MlflowTracker(config.tracking)
    with interruptible_run(tracker):  # SIGTERM (scancel, timeout) or a hang-up: KILLED, as after Ctrl-C
        return _run(config, tracker)


def _run(cfg: EdaAppConfig, tracker: Any) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from stereo_exp.data.disparity_stats import DisparityStats, format_table, histogram_figure
    from stereo_exp.data.loader import MixDataset, build_mix_datasets, seed_worker
    from stereo_exp.data.mix import Draw, MixSampler
    from stereo_exp.data.transforms import TrainTransform
    from stereo_exp.tracking.mlflow_tracker import TASK_TAG
    from stereo_exp.tracking.sweep import SweepInfo, command_run_name

    mix, aug, eda, loader_cfg = cfg.mix, cfg.augmentation, cfg.eda, cfg.loader
    sweep = SweepInfo.from_hydra()  # a job of a multirun (augmentation=a,b): tagged and nested under the sweep's run
    default_name = command_run_name(f"eda {'+'.join(mix.datasets)}", sweep)
    with uninterrupted():  # a stop waits for the tracker to know its run: it then ends it KILLED
        tracker.start(params=to_plain(cfg), default_name=default_name, tags={TASK_TAG: "eda"}, sweep=sweep)

    datasets = build_mix_datasets(mix, data_root=cfg.paths.data, dataset_options=cfg.datasets)
    active = [i for i, steps in enumerate(mix.dataset_steps) if steps > 0]
    # The mix's per-dataset order (pass permutations) does not depend on the batch size: these are the first
    # num_crops samples each dataset contributes to a training run with this seed.
    order = MixSampler([len(d) for d in datasets], mix.dataset_steps, global_batch_size=1, seed=cfg.seed)
    draws = [
        Draw(dataset=i, index=order.dataset_index(i, k), number=i * eda.num_crops + k)
        for i in active
        for k in range(eda.num_crops)
    ]
    # Statistics before the max-disparity cap; the share above it is reported instead.
    transform = TrainTransform(dataclasses.replace(aug, max_disparity=None))
    workers = loader_cfg.num_workers
    loader = DataLoader(
        MixDataset(datasets, transform, cfg.seed),
        sampler=draws,
        batch_size=None,  # one crop at a time: no collation needed
        num_workers=workers,
        prefetch_factor=loader_cfg.prefetch_factor if workers > 0 else None,
        worker_init_fn=partial(seed_worker, seed=cfg.seed, rank=0),
    )
    stats = {i: DisparityStats(resolution=eda.resolution, hist_max=eda.hist_max) for i in active}
    for sample in tqdm(loader, total=len(draws), desc="eda", unit="crop", dynamic_ncols=True):
        stats[sample["dataset"]].add(sample["disparity"], sample["valid"])

    total_steps = sum(mix.dataset_steps)
    stats_by_name = {mix.datasets[i]: stats[i] for i in active}
    if len(active) > 1:
        shares = [(stats[i], mix.dataset_steps[i] / total_steps) for i in active]
        stats_by_name[MIX_ROW] = DisparityStats.weighted(shares)
    options = {"quantiles": eda.quantiles, "thresholds": eda.thresholds, "max_disparity": aug.max_disparity}
    rows = {name: s.summary(**options, bins=eda.bins) for name, s in stats_by_name.items()}
    report = {
        "setup": {
            "datasets": list(mix.datasets),
            "dataset_steps": list(mix.dataset_steps),
            "crop_size": list(aug.crop_size),
            "scale_range": list(aug.scale_range),
            "scaling_type": aug.scaling_type,
            "max_disparity": aug.max_disparity,
            "num_crops_per_dataset": eda.num_crops,
            "seed": cfg.seed,
            "note": f"'{MIX_ROW}' (when the mix has several datasets) weights each by its share of dataset_steps",
        },
        "datasets": rows,
    }

    output = Path(cfg.paths.output)
    output.mkdir(parents=True, exist_ok=True)
    save_hydra_records(cfg, replace=True)
    table = format_table(rows)
    setup = (
        f"crop {aug.crop_size[0]}x{aug.crop_size[1]}, scale {aug.scale_range[0]:g}-{aug.scale_range[1]:g} "
        f"({aug.scaling_type}), {eda.num_crops} crops per dataset, disparities in px at the crop scale"
    )
    (output / "eda.txt").write_text(f"{setup}\n{table}\n")
    (output / "eda.json").write_text(json.dumps(_finite(report), indent=2))
    figure = histogram_figure(rows, title=setup, log_scale=eda.log_scale, max_disparity=aug.max_disparity)
    figure.savefig(output / "eda_histograms.png", dpi=100)
    print(setup)
    print(table)
    log.info("Wrote %s, %s and %s", output / "eda.txt", output / "eda.json", output / "eda_histograms.png")

    with uninterrupted():  # the results reach MLflow whole (a stop then ends the run KILLED)
        tracker.log_metrics(_flat_metrics(rows), step=0)
        for name in ("eda.txt", "eda.json", "eda_histograms.png"):
            tracker.log_artifact(output / name)
        url = tracker.where()
    if url:
        log.info("MLflow: %s", url)
    return report


def _flat_metrics(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``eda/<dataset>/<stat>`` scalars for MLflow (nan where a dataset had no valid pixel is left out)."""
    metrics = {}
    for name, row in rows.items():
        values = {"valid_share": row["valid_share"], "mean": row["mean"], "max": row["max"], **row["quantiles"]}
        values.update({f"share_ge_{k}": v for k, v in row["share_at_or_above"].items()})
        if row["share_above_max_disparity"] is not None:
            values["share_above_max_disparity"] = row["share_above_max_disparity"]
        metrics.update({f"eda/{name}/{k}": v for k, v in values.items() if not math.isnan(v)})
    return metrics


def _finite(value: Any) -> Any:
    """JSON has no nan: nan -> null (a dataset without any valid pixel)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@hydra.main(version_base="1.3", config_path="../conf", config_name="eda")
def main(cfg: DictConfig) -> None:
    with clean_errors(cfg, what="EDA"):  # a wrong value or missing data: one line saying what to change
        run_eda(cfg)


if __name__ == "__main__":
    refuse_unknown_keys("eda", sys.argv[1:])  # before Hydra, whose advice for a misspelt key adds it
    try:
        main()
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, a hang-up: the MLflow run ended KILLED
        exit_interrupted(stop, "EDA")
    ignore_stops_while_exiting()
