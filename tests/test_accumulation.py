"""Gradient accumulation is exact for a GroupNorm model: BS x ACCUM steps like one batch of BS x ACCUM."""
from __future__ import annotations

import math

import pytest
import torch

from digitrec import config, engine
from digitrec.models import model_from_config


def _one_step(cfg: config.Config, images: torch.Tensor, labels: torch.Tensor, window: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = model_from_config(cfg)
    schedule = engine.Schedule(len(window), cfg)
    optimizer, _ = engine.make_optimizer(model, cfg, schedule)
    data = engine.FoldData(images, labels, window, window[:0], images[:0])
    engine.train_step(model, optimizer, window, data, cfg, torch.device("cpu"), augment=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("window_size", [128, 100])  # a full window, and a partial one (32+32+32+4)
def test_accumulated_step_equals_one_big_batch(window_size: int) -> None:
    # dropout off and augmentation off: both draw random numbers per micro-batch; plain SGD so the
    # parameter difference is exactly lr x the gradient difference. lr_scaling none keeps the same lr.
    # fp32 (amp off): the claim is about the accumulation maths, not bf16 rounding of two batch shapes.
    common = dict(model="gn_cnn", width=8, dropout=0.0, optimizer="sgd", lr=0.5, lr_scaling="none", amp=False,
                  weight_decay=0.0, label_smoothing=0.1, channels_last=False, warmup_epochs=0.0, epochs=1)
    accumulated = config.load(None, dict(common, batch_size=32, accum=4))
    single = config.load(None, dict(common, batch_size=128, accum=1))
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (window_size, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (window_size,), generator=generator)
    window = torch.randperm(window_size, generator=generator)

    before = model_from_config(single)
    after_accumulated = _one_step(accumulated, images, labels, window)
    after_single = _one_step(single, images, labels, window)
    moved = 0.0
    for name, value in after_single.items():
        torch.testing.assert_close(after_accumulated[name], value, rtol=0, atol=1e-6)
        moved = max(moved, (value - before.state_dict()[name]).abs().max().item())
    assert moved > 1e-3, "the step must actually change the parameters for the comparison to mean anything"


def test_schedule_counts_optimizer_steps_including_the_partial_window() -> None:
    cfg = config.load(None, dict(batch_size=32, accum=4, epochs=3, warmup_epochs=1.0))
    schedule = engine.Schedule(1000, cfg)
    assert schedule.window == 128
    assert schedule.steps_per_epoch == math.ceil(1000 / 128) == 8
    assert schedule.total_steps == 24 and schedule.warmup_steps == 8


@pytest.mark.parametrize("epochs, warmup_epochs, warmup_steps", [(3, 0.5, 4), (1, 1.0, 3)])
def test_lr_warms_up_then_follows_a_cosine_per_optimizer_step(epochs: int, warmup_epochs: float,
                                                              warmup_steps: int) -> None:
    # 7 steps an epoch: 0.5 epoch of warm-up rounds to 4 steps; a 1-epoch run keeps half of its 7 steps out of it
    cfg = config.load(None, dict(batch_size=16, accum=8, epochs=epochs, warmup_epochs=warmup_epochs, width=8))
    schedule = engine.Schedule(7 * cfg.effective_batch, cfg)
    optimizer, scheduler = engine.make_optimizer(torch.nn.Linear(2, 2), cfg, schedule)
    lrs = [optimizer.param_groups[0]["lr"]]
    for step in range(1, schedule.total_steps + 1):
        scheduler.step_update(num_updates=step)
        lrs.append(optimizer.param_groups[0]["lr"])
    lr, low, w, total = cfg.scaled_lr, cfg.scaled_lr * cfg.min_lr_ratio, schedule.warmup_steps, schedule.total_steps
    assert w == warmup_steps and total == 7 * epochs
    expected = [lr * 0.01 + (lr - lr * 0.01) * t / w for t in range(w)]  # from lr / 100, linearly
    expected += [low + (lr - low) * (1 + math.cos(math.pi * (t - w) / (total - w))) / 2 for t in range(w, total + 1)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_lr_rule_follows_the_effective_batch() -> None:
    base = dict(lr=0.004, lr_ref_batch=128)
    assert config.load(None, dict(base, batch_size=128, accum=8)).scaled_lr == pytest.approx(0.004 * math.sqrt(8))
    assert config.load(None, dict(base, batch_size=128, accum=8, lr_scaling="linear")).scaled_lr == pytest.approx(0.032)
    assert config.load(None, dict(base, batch_size=512, lr_scaling="none")).scaled_lr == pytest.approx(0.004)


def test_default_model_has_no_batchnorm() -> None:
    model = model_from_config(config.load(None))
    kinds = {type(m).__name__ for m in model.modules()}
    assert not any("BatchNorm" in k for k in kinds)
    assert any("GroupNorm" in k for k in kinds)
