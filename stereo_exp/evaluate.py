"""Cascade evaluation: ``python -m stereo_exp.evaluate [weights=...] [dataset=NAME | eval=OPTION] [key=value ...]``.

Evaluates one model over the grid ``eval.n_cascades`` x ``eval.n_iterations`` on each dataset and writes, in
``paths.output``: ``eval.log`` (the table in the published log layout, also printed), ``eval.json`` (the same at full
precision, with image counts and the model's source) and ``pictures/`` (with ``eval.save_images``); the MLflow run
(``tracking``) gets the metrics as ``eval/<dataset>/c<cascades>_i<iterations>/<metric>`` at the checkpoint's step,
the table, the JSON and the pictures. ``conf/evaluate.yaml`` lists examples; ``model_source.py`` how ``weights``
is resolved. Under torchrun every process takes its own share of the images.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
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
    from stereo_exp.distributed import DistEnv
    from stereo_exp.evaluation.config import EvalConfig, EvaluateConfig
    from stereo_exp.tracking import MlflowTracker

log = logging.getLogger("stereo_exp.evaluate")

# Hydra composes the config when main() is called; the schemas must be in the ConfigStore before that.
register_configs("evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as the composed ``cfg`` (conf/evaluate.yaml) says; returns ``{dataset: GridResult}`` (on every rank)."""
    from stereo_exp.distributed import DistEnv
    from stereo_exp.tracking import MlflowTracker

    config: EvaluateConfig = typed(cfg)  # typed once: every schema's checks
    eval_cfg = eval_config(config)
    dist = DistEnv.from_environment(config.device)
    dist.init_process_group()
    tracker = MlflowTracker(config.tracking, dist)
    try:
        with interruptible_run(tracker):  # SIGTERM (scancel, timeout) or a hang-up: KILLED, as after Ctrl-C
            return _run(config, eval_cfg, dist, tracker)
    finally:
        dist.destroy()


def check_evaluation(cfg: EvaluateConfig) -> None:
    """Raise (``RunRefused``, ``FileNotFoundError``) naming the key at fault when an evaluation cannot start: a dataset
    missing under ``paths.data``, a weights file that is not there. Reads no weights: a sweep checks its jobs with it
    before any starts."""
    from stereo_exp.data.catalog import check_dataset_root
    from stereo_exp.engine.preflight import refusing
    from stereo_exp.evaluation.model_source import check_weights_file

    for name in eval_config(cfg).datasets:
        with refusing():  # an unknown name: one line, no traceback (stereo_exp.cli.user_errors)
            check_dataset_root(name, cfg.paths.data, cfg.datasets)
    check_weights_file(cfg.weights)


def eval_config(cfg: EvaluateConfig) -> EvalConfig:
    """``cfg.eval`` with the ``dataset`` shortcut applied, checked."""
    if cfg.dataset is None:
        return cfg.eval
    names = [cfg.dataset] if isinstance(cfg.dataset, str) else list(cfg.dataset)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"dataset must be a catalog name or a list of names; got {cfg.dataset!r}.")
    return dataclasses.replace(cfg.eval, datasets=names)  # EvalConfig's checks run again


def _run(cfg: EvaluateConfig, eval_cfg: EvalConfig, dist: DistEnv, tracker: MlflowTracker) -> dict[str, Any]:
    import torch

    from stereo_exp.data.transforms import GtResize
    from stereo_exp.engine.preflight import refusing
    from stereo_exp.evaluation.cascade import evaluate_datasets, save_figures
    from stereo_exp.evaluation.model_source import load_model
    from stereo_exp.evaluation.table import format_protocol, format_tables, results_to_json
    from stereo_exp.schemas import amp_dtype, emulated_precision_warning
    from stereo_exp.tracking.mlflow_tracker import KEY_METRIC_TAG, TASK_TAG
    from stereo_exp.tracking.sweep import SweepInfo, command_run_name

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)  # only matters for a model without weights
    check_evaluation(cfg)  # a missing dataset stops the run before weights are downloaded or loaded
    refuse_another_commands_folder()  # hydra.run.dir= of a training run: its records stay its own
    with refusing():  # weights of another model, a file as checkpoints: one line saying what to pass instead
        loaded = load_model(cfg.weights, cfg.model, checkpoints=cfg.checkpoints, tracking_uri=cfg.tracking.uri)
    log.info("Model: %s", loaded.source)
    log.info("Evaluating on %d process(es), device %s", dist.world_size, dist.device)
    model = loaded.model.to(dist.device)

    resolved = to_plain(cfg)
    resolved["model"] = loaded.model_cfg  # what was evaluated (a checkpoint's config replaces the model group)
    resolved["eval"] = to_plain(eval_cfg)
    sweep = SweepInfo.from_hydra()  # a job of a multirun (weights=a,b): tagged and nested under the sweep's run
    named = f"eval {loaded.model_cfg['name']} {'+'.join(eval_cfg.datasets)}"
    with uninterrupted():  # a stop waits for the tracker to know its run: it then ends it KILLED
        tracker.start(
            params=resolved,
            default_name=command_run_name(named, sweep),
            tags={TASK_TAG: "evaluate", **loaded.tags},
            sweep=sweep,
        )

    if dist.is_main and (slow := emulated_precision_warning("precision", cfg.precision, dist.device)):
        log.warning(slow)
    grids, figures = evaluate_datasets(
        model,
        eval_cfg,
        data_root=cfg.paths.data,
        dataset_options=cfg.datasets,
        num_iters=loaded.eval_iters,
        dist=dist,
        device=dist.device,
        amp_dtype=amp_dtype(cfg.precision),
        progress=cfg.progress,
    )

    if dist.is_main:
        size = eval_cfg.size
        table = format_protocol(size, eval_cfg.gt_resize) + format_tables(grids, size)
        counts = {name: {"images": g.num_images, "skipped_images": g.num_skipped} for name, g in grids.items()}
        extra = {"gt_resize": GtResize(eval_cfg.gt_resize).value, "weights": loaded.source, "step": loaded.step}
        document = results_to_json(grids, size, extra={**extra, "model": loaded.model_cfg, "counts": counts})
        output = Path(cfg.paths.output)
        output.mkdir(parents=True, exist_ok=True)
        save_hydra_records(cfg, replace=True)
        (output / "eval.log").write_text(table)
        (output / "eval.json").write_text(document)
        pictures = save_figures(figures, output / "pictures")
        for name, count in counts.items():
            skipped = (
                f" ({count['skipped_images']} without any valid pixel, left out)" if count["skipped_images"] else ""
            )
            log.info("%s: %d images averaged%s", name, count["images"], skipped)
        print(f"Model: {loaded.source}")
        print(table, end="")
        in_pictures = f" and {len(pictures)} pictures in {output / 'pictures'}" if pictures else ""
        log.info("Wrote %s and %s%s", output / "eval.log", output / "eval.json", in_pictures)

        with uninterrupted():  # the results reach MLflow whole (a stop then ends the run KILLED)
            tracker.log_metrics(flat_metrics(grids), step=loaded.step or 0)
            tracker.set_tags({KEY_METRIC_TAG: key_metric(grids)})  # what a sweep's summary and compare show
            tracker.log_artifact(output / "eval.log")
            tracker.log_artifact(output / "eval.json")
            for name, figure in figures.items():
                tracker.log_figure(figure, f"pictures/{name}.png")
            url = tracker.where()
        if url:
            log.info("MLflow: %s", url)
    return grids


def key_metric(grids: dict[str, Any]) -> str:
    """The metric an evaluation is ranked by (a ``flat_metrics`` name): the mae of the first dataset's first cell."""
    name, grid = next(iter(grids.items()))
    n_casc = next(iter(grid))
    n_iters = next(iter(grid[n_casc]))
    return f"eval/{name}/c{n_casc}_i{n_iters}/mae"


def flat_metrics(grids: dict[str, Any]) -> dict[str, float]:
    """``{"eval/<dataset>/c<cascades>_i<iterations>/<metric>": value}`` for MLflow."""
    return {
        f"eval/{name}/c{n_casc}_i{n_iters}/{metric}": value
        for name, grid in grids.items()
        for n_casc, by_iters in grid.items()
        for n_iters, values in by_iters.items()
        for metric, value in values.items()
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """Evaluate; returns the mae of the first dataset's first grid cell (the objective of a sweep over weights)."""
    with clean_errors(cfg, what="Evaluation"):  # a wrong value or missing data: one line saying what to change
        grids = evaluate(cfg)
    return flat_metrics(grids)[key_metric(grids)]


if __name__ == "__main__":
    refuse_unknown_keys("evaluate", sys.argv[1:])  # before Hydra, whose advice for a misspelt key adds it
    try:
        main()
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, a hang-up: the MLflow run ended KILLED
        exit_interrupted(stop, "Evaluation")
    ignore_stops_while_exiting()
