"""Precision follows the hardware (issue 22): bf16 where native, fp16 with a GradScaler on GPUs without it,
fp32 elsewhere, in one rule; a GPU this torch was not built for stops with one line (device=cuda) or is
passed over for the CPU (device=auto); fp16 trains on the CPU and a resumed net keeps its loss scale."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from digitrec import config, engine, fileio, hardware
from digitrec.errors import UserError

CPU = torch.device("cpu")


def test_the_precision_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = torch.device("cuda")
    hardware.native_bf16.cache_clear()
    monkeypatch.setattr(hardware, "native_bf16", lambda device: device.type == "cuda" and bf16_gpu)
    bf16_gpu = True
    assert hardware.precision(gpu, True) == "bf16"  # Ampere and later
    bf16_gpu = False
    assert hardware.precision(gpu, True) == "fp16"  # a T4: fp16 with the GradScaler
    assert hardware.precision(CPU, True) == "fp32"  # a CPU without native bf16
    assert hardware.precision(gpu, False) == "fp32" and hardware.precision(CPU, "fp16") == "fp16"
    assert hardware.precision(CPU, "bf16") == "bf16"


def test_amp_takes_true_false_bf16_or_fp16() -> None:
    assert config.load(None, ["amp=fp16"]).amp == "fp16" and config.load(None, ["amp=off"]).amp is False
    with pytest.raises(UserError, match="^amp must be true, false, bf16 or fp16, got 'fp8'$"):
        config.load(None, ["amp=fp8"])


@pytest.fixture
def p100(monkeypatch: pytest.MonkeyPatch) -> None:
    """A P100 under a torch built for sm_75 and newer, as Kaggle's image has it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_120"])


def test_an_unsupported_gpu_is_one_line_for_device_cuda(p100) -> None:
    with pytest.raises(UserError) as info:
        hardware.select_device("cuda")
    message = str(info.value)
    assert "\n" not in message and message.startswith("device=cuda: GPU Tesla P100-PCIE-16GB (compute capability 6.0, sm_60)")
    assert f"torch {torch.__version__}" in message and "ACCEL=NvidiaTeslaT4" in message


def test_device_auto_falls_back_to_the_cpu(p100, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="digitrec.hardware"):
        assert hardware.select_device("auto") == CPU
    assert "sm_60" in caplog.text and "device=auto trains on the CPU instead" in caplog.text


@pytest.mark.parametrize("capability, arch_list, runs", [
    ((7, 5), ["sm_75", "sm_80"], True),
    ((8, 6), ["sm_80", "sm_90"], True),  # an sm_80 cubin runs on sm_86
    ((8, 9), ["sm_75", "compute_80"], True),  # PTX compiled by the driver
    ((6, 0), ["sm_75", "sm_80", "compute_90"], False),
    ((9, 0), ["sm_80", "sm_86"], False),
])
def test_runs_on(capability, arch_list, runs) -> None:
    assert hardware.runs_on(capability, arch_list) is runs


def _fp16(**more) -> config.Config:
    return config.load(None, {"amp": "fp16", "width": 8, "batch_size": 8, "epochs": 1, "progress": False,
                              "tta": False, **more})


def test_fp16_steps_a_net_on_the_cpu_with_the_grad_scaler() -> None:
    cfg = _fp16()
    torch.manual_seed(0)
    trainer = engine.make_trainer(cfg, CPU, 16)
    assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.scaler.get_scale() == 65536.0
    images = torch.randint(0, 255, (16, 28, 28), dtype=torch.uint8)
    data = engine.FoldData(images, torch.arange(16) % 10, torch.arange(16), torch.arange(0), images[:0])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    calls = []
    with pytest.MonkeyPatch.context() as patch:  # every forward pass under fp16 autocast
        original = torch.nn.Linear.forward
        patch.setattr(torch.nn.Linear, "forward", lambda self, x: calls.append(torch.get_autocast_dtype("cpu"))
                      or original(self, x))
        for window in trainer.start_epoch(data.train_idx, torch.Generator().manual_seed(0)):
            loss, _ = trainer.update(window, data)
    assert calls and set(calls) == {torch.float16} and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert engine.make_trainer(config.load(None, {"amp": False, "width": 8}), CPU, 16).scaler is None


def test_a_resumed_net_restores_the_loss_scale(demo_dir: Path, tmp_path: Path) -> None:
    images = torch.randint(0, 255, (32, 28, 28), dtype=torch.uint8)
    data = engine.FoldData(images, torch.arange(32) % 10, torch.arange(24), torch.arange(24, 32), images[:4])
    unit = tmp_path / "fold0" / "m0"
    engine.train_net(_fp16(), data, 1, "fold 0", unit, CPU)
    state = fileio.read_torch(unit / "resume.pt")
    assert state["scaler"]["scale"] > 1024.0  # 65536, halved on a step whose fp16 gradients overflowed
    state["scaler"]["scale"] = 1024.0  # as if it had overflowed and backed off
    fileio.write_torch(unit / "resume.pt", state)
    engine.train_net(_fp16(epochs=2), data, 1, "fold 0", unit, CPU)  # resumes after epoch 1
    resumed = fileio.read_torch(unit / "resume.pt")
    assert resumed["epoch"] == 2 and resumed["scaler"]["scale"] <= 1024.0


class _ScaledLinear(torch.nn.Module):
    """One linear layer whose logits are multiplied by `gain` in the autocast dtype, so the gradients that
    reach its weights are `gain` times the loss's: with gain 1e-7 they are ~1e-9 in fp16, below its smallest
    subnormal (6e-8), unless the loss is scaled up first; with gain 1e4 the scaled ones overflow fp16."""

    def __init__(self, gain: float):
        super().__init__()
        self.linear, self.gain = torch.nn.Linear(784, 10), gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * self.gain


def _fp16_step(gain: float) -> tuple[torch.nn.Module, list[torch.Tensor], torch.amp.GradScaler]:
    """One engine.train_step in fp16 with a GradScaler, on the CPU; weight decay 0, so only gradients move
    the weights. Returns the model, its weights before, and the scaler."""
    cfg = _fp16(label_smoothing=0.0)
    torch.manual_seed(0)
    model = _ScaledLinear(gain)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu")
    images = torch.randint(0, 255, (16, 28, 28), dtype=torch.uint8)
    data = engine.FoldData(images, torch.arange(16) % 10, torch.arange(16), torch.arange(0), images[:0])
    before = [p.detach().clone() for p in model.parameters()]
    engine.train_step(model, optimizer, torch.arange(16), data, cfg, CPU, augment=False, scaler=scaler)
    return model, before, scaler


def test_fp16_gradients_that_would_underflow_still_move_the_weights() -> None:
    """Without the GradScaler these gradients are exactly zero in fp16, and Adam would not move a weight."""
    model, before, scaler = _fp16_step(gain=1e-7)
    after = list(model.parameters())
    assert not torch.equal(before[0], after[0]) and all(torch.isfinite(p).all() for p in after)
    assert scaler.get_scale() == 65536.0  # no overflow: the scale stays


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_cut() -> None:
    model, before, scaler = _fp16_step(gain=1e4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the step was skipped
    assert scaler.get_scale() == 32768.0  # and the loss scale halved
