"""The learning rate at boundary steps, value by value (the semantics in stereo_exp/engine/schedule.py)."""

import pytest
import torch
from omegaconf import OmegaConf

from stereo_exp.engine.schedule import Decay, ScheduleConfig, build_scheduler, lr_at

TOTAL = 300_000  # the published stage-1 length: 264000 + 18000 + 18000 dataset steps


def schedule(name: str) -> ScheduleConfig:
    """The option file conf/schedule/<name>.yaml as the dataclass the trainer sees."""
    yaml = OmegaConf.load(f"conf/schedule/{name}.yaml")
    del yaml["defaults"]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ScheduleConfig), yaml))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 8.0e-6),  # warmup_factor * lr = 0.02 * 4e-4
        (3000, 2.04e-4),  # half-way up the ramp: (0.02 + 0.98 * 0.5) * 4e-4
        (5999, 4e-4 * (0.02 + 0.98 * 5999 / 6000)),
        (6000, 4e-4),  # warm-up done
        (29_999, 4e-4),  # held until decay_after_steps
        (30_000, 4e-4),  # decay starts at its peak
        (TOTAL - 1, 2e-5),  # min_lr exactly at the last step
    ],
)
def test_early_cosine_at_boundary_steps(step, expected):
    assert lr_at(step, schedule("early_cosine"), TOTAL) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (6000, 4e-4),
        (179_999, 4e-4),  # still holding
        (180_000, 4e-4),
        (TOTAL - 1, 2e-5),
    ],
)
def test_late_cosine_at_boundary_steps(step, expected):
    assert lr_at(step, schedule("late_cosine"), TOTAL) == pytest.approx(expected, rel=1e-6)


def test_cosine_passes_the_mean_of_lr_and_min_lr_half_way():
    # 300001 steps: decay from step 180000 to the last step 300000, half-way at 240000
    assert lr_at(240_000, schedule("late_cosine"), 300_001) == pytest.approx((4e-4 + 2e-5) / 2, rel=1e-12)


def test_finetune_schedule_decays_from_the_first_step():
    cfg = schedule("finetune_cosine")
    assert lr_at(0, cfg, 108_000) == pytest.approx(4e-4)  # no warm-up: full lr at once
    assert lr_at(1, cfg, 108_000) < 4e-4
    assert lr_at(107_999, cfg, 108_000) == pytest.approx(2e-5)


def test_decay_requested_before_the_end_of_warmup_starts_after_it():
    cfg = ScheduleConfig(
        lr=1.0, min_lr=0.0, warmup_steps=10, warmup_factor=0.5, decay_after_steps=0, decay=Decay.linear
    )
    assert lr_at(9, cfg, 21) == pytest.approx(0.5 + 0.5 * 9 / 10)  # still ramping
    assert lr_at(10, cfg, 21) == pytest.approx(1.0)  # decay starts at the peak
    assert lr_at(15, cfg, 21) == pytest.approx(0.5)  # half-way from step 10 to the last step 20
    assert lr_at(20, cfg, 21) == pytest.approx(0.0)


def test_exponential_decay_has_a_constant_ratio_per_step():
    cfg = ScheduleConfig(lr=1.0, min_lr=1e-2, warmup_steps=0, decay_after_steps=0, decay=Decay.exponential)
    values = [lr_at(s, cfg, 3) for s in range(3)]
    assert values == pytest.approx([1.0, 0.1, 0.01])  # 1 -> 0.01 over two steps: ratio 0.1


def test_scheduler_sets_the_optimizer_lr_of_each_step():
    cfg = schedule("early_cosine")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=123.0)  # build_scheduler replaces the base lr with schedule.lr
    scheduler = build_scheduler(optimizer, cfg, TOTAL)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, cfg, TOTAL) for s in range(3)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 1e-4, "min_lr": 1e-3}, "schedule.min_lr"),
        ({"decay": Decay.exponential, "min_lr": 0.0}, "exponential"),
        ({"warmup_factor": 0.0}, "warmup_factor"),
    ],
)
def test_inconsistent_schedules_are_rejected_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)
