"""Many nets per step (stacked.py): each stacked net's gradient, optimizer step, EMA and resume point are its own
(no cross-talk, unequal windows exact), the pipeline groups the nets that may stack, and a stacked run writes what an
unstacked one writes and resumes after kill -9."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ROOT, clean_env, run_cli, train_small_run
from digitrec import config, engine, fileio, stacked
from digitrec.errors import UserError
from digitrec.submission import read_submission

CPU = torch.device("cpu")
SEEDS = [11, 12, 13]


def _cfg(**more) -> config.Config:
    """fp32, no dropout and no augmentation: nothing random in a step, so stacked and alone can be compared."""
    return config.load(None, {"width": 8, "batch_size": 4, "amp": False, "dropout": 0.0, "rotate": 0, "scale": 0,
                              "shift": 0, "progress": False, **more})


@pytest.fixture(scope="module")
def data() -> engine.FoldData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 28, 28), dtype=torch.uint8, generator=generator)
    return engine.FoldData(images, torch.arange(48) % 10, torch.arange(48), torch.arange(0), images[:0])


def _alone_gradient(cfg: config.Config, seed: int, window: torch.Tensor, data: engine.FoldData) -> dict:
    """The gradient one net takes over `window` alone: the mean over the window of the smoothed cross-entropy,
    as engine.train_step defines a step."""
    torch.manual_seed(seed)
    net = engine.build_net(cfg, CPU)
    logits = net(engine.to_input(data.images[window], False))
    loss = F.cross_entropy(logits, data.labels[window], label_smoothing=cfg.label_smoothing, reduction="sum")
    (loss / len(window)).backward()
    return {name: p.grad for name, p in net.named_parameters()}


def _stacked_gradients(cfg: config.Config, windows: list[torch.Tensor], data: engine.FoldData) -> list[dict]:
    trainer = stacked.StackedTrainer(cfg, SEEDS, CPU, len(data.train_idx))
    trainer.train()
    trainer.accumulate(windows, [data] * len(windows), augment=False)
    return [{name: p.grad[k] for name, p in trainer.stacked.named_parameters()} for k in range(len(windows))]


def test_each_stacked_net_takes_its_own_gradient_over_unequal_windows(data) -> None:
    cfg = _cfg()
    # 10, 7 and 13 rows in micro-batches of 4: 3, 2 and 4 micro-batches, the last ones short
    windows = [torch.arange(0, 10), torch.arange(10, 17), torch.arange(17, 30)]
    grads = _stacked_gradients(cfg, windows, data)
    for k, (seed, window) in enumerate(zip(SEEDS, windows)):
        alone = _alone_gradient(cfg, seed, window, data)
        for name, grad in alone.items():
            torch.testing.assert_close(grads[k][name], grad, rtol=1e-4, atol=1e-5, msg=f"net {k} {name}")
    # another net's rows change nothing of net 0's and net 2's gradients
    again = _stacked_gradients(cfg, [windows[0], torch.arange(30, 48), windows[2]], data)
    for k in (0, 2):
        for name in grads[k]:
            torch.testing.assert_close(again[k][name], grads[k][name], rtol=0, atol=1e-7)


def test_students_with_their_own_rows_and_soft_targets_stack(data) -> None:
    """Pseudo-labelled students each hold their own images and target distributions (not the run's shared
    tensors): each still takes its own gradient."""
    cfg = _cfg()
    generator = torch.Generator().manual_seed(1)
    students = []
    for _ in SEEDS:
        images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=generator)
        targets = torch.softmax(torch.randn(20, 10, generator=generator), dim=1)
        students.append(engine.FoldData(images, targets, torch.arange(20), torch.arange(0), images[:0]))
    windows = [torch.arange(0, 9), torch.arange(3, 8), torch.arange(6, 20)]
    trainer = stacked.StackedTrainer(cfg, SEEDS, CPU, 20)
    trainer.train()
    trainer.accumulate(windows, students, augment=False)
    for k, (seed, window, student) in enumerate(zip(SEEDS, windows, students)):
        for name, grad in _alone_gradient(cfg, seed, window, student).items():
            torch.testing.assert_close(trainer.stacked.get_parameter(name).grad[k], grad, rtol=1e-4, atol=1e-5)


def test_stacked_steps_are_each_nets_own_steps(data) -> None:
    """Two steps of three stacked nets against the same steps of each net alone (engine.make_trainer and
    Trainer.update): the weights, AdamW moments, EMA and LR schedule agree, and a net's resume state has the
    single-net layout, loadable either way."""
    cfg = _cfg(warmup_epochs=0.5)
    windows = [[torch.arange(0, 9), torch.arange(9, 20)], [torch.arange(20, 31), torch.arange(31, 38)],
               [torch.arange(38, 48), torch.arange(0, 12)]]
    group = stacked.StackedTrainer(cfg, SEEDS, CPU, 24)
    group.train()
    for step in range(2):
        group.update([windows[k][step] for k in range(3)], [data] * 3)
    for k, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        alone = engine.make_trainer(cfg, CPU, 24)
        alone.model.train()
        for step in range(2):
            alone.update(windows[k][step], data)
        mine, theirs = group.net_state(k), alone.state_dict()
        assert mine["step"] == theirs["step"] == 2 and mine["scheduler"] == theirs["scheduler"]
        for part in ("model", "ema"):
            assert mine[part].keys() == theirs[part].keys()
            for name in theirs[part]:
                torch.testing.assert_close(mine[part][name], theirs[part][name], rtol=1e-4, atol=1e-6)
        assert mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
        for i, moments in theirs["optimizer"]["state"].items():
            for key, value in moments.items():
                torch.testing.assert_close(mine["optimizer"]["state"][i][key], value, rtol=1e-4, atol=1e-6)
        alone.load_state_dict(mine)  # a stacked net's resume point goes on alone
    fresh = stacked.StackedTrainer(cfg, [1, 2, 3], CPU, 24)
    fresh.load_net_states([group.net_state(k) for k in range(3)])  # and alone ones go on stacked
    for name, tensor in group.stacked.state_dict().items():
        assert torch.equal(fresh.stacked.state_dict()[name], tensor)
    assert fresh.step == 2


class _ConvDtypes(TorchDispatchMode):
    """The dtypes every convolution of a step ran in, forward and backward, as the dispatcher receives them
    (under vmap: the grouped convolution that runs the stacked nets)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, torch.dtype]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name.startswith("convolution"):
            self.seen.add((name, args[0].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_stacked_nets_compute_in_the_precision_the_run_records(data, precision: str, dtype: torch.dtype) -> None:
    cfg = config.apply({"amp": precision}, _cfg(), "the test")
    windows = [torch.arange(0, 8), torch.arange(8, 16)]
    single = engine.make_trainer(cfg, CPU, len(data.train_idx))
    single.model.train()
    with _ConvDtypes() as alone:
        single.update(windows[0], data)
    group = stacked.StackedTrainer(cfg, SEEDS[:2], CPU, len(data.train_idx))
    group.train()
    with _ConvDtypes() as together:
        group.update(windows, [data, data])
    expected = {("convolution", dtype), ("convolution_backward", dtype)}
    assert alone.seen == expected and together.seen == expected
    assert all(p.dtype == torch.float32 for p in group.stacked.parameters())  # the weights stay fp32


def _job(cfg: config.Config, data: engine.FoldData, unit_dir: Path, rows: int = 40, soft: bool = False) -> stacked.Job:
    labels = F.one_hot(data.labels, 10).float() if soft else data.labels
    fold = engine.FoldData(data.images, labels, torch.arange(rows), torch.arange(0), data.test_images)
    return stacked.Job(cfg, 1, "net", unit_dir, rows, soft, lambda: fold)


def test_the_nets_that_may_stack_are_grouped(data, tmp_path: Path) -> None:
    cfg = _cfg()
    seed7 = config.apply({"seed": 7, "tta": False}, cfg, "the test")  # seed and tta do not keep nets apart
    jobs = [_job(cfg, data, tmp_path / "a"), _job(seed7, data, tmp_path / "b"), _job(cfg, data, tmp_path / "c"),
            _job(config.apply({"width": 16}, cfg, "the test"), data, tmp_path / "d"),  # another architecture
            _job(cfg, data, tmp_path / "e", rows=30),  # 8 steps an epoch, not 10
            _job(cfg, data, tmp_path / "f", soft=True),  # target distributions
            _job(config.apply({"norm": "batch"}, cfg, "the test"), data, tmp_path / "g"),
            _job(config.apply({"optimizer": "lamb"}, cfg, "the test"), data, tmp_path / "h")]
    assert stacked.groups(jobs, 8) == [[0, 1, 2], [3], [4], [5], [6], [7]]
    assert stacked.groups(jobs, 2) == [[0, 1], [2], [3], [4], [5], [6], [7]]
    assert stacked.groups(jobs, 1) == [[i] for i in range(8)]
    # a net that has finished an epoch more than the others goes on in a group of its own
    (tmp_path / "c").mkdir()
    fileio.write_torch(tmp_path / "c" / "resume.pt", {"epoch": 1})
    assert stacked.groups(jobs[:3], 8) == [[0, 1], [2]]
    assert "not element-wise" in stacked.why_not_stacked(jobs[7].cfg)


def test_nets_per_step_is_auto_a_number_or_refused() -> None:
    cpu, gpu = CPU, torch.device("cuda")
    assert stacked.resolve(config.load(None), cpu) == 1  # the CPU measured slower stacked
    assert stacked.resolve(config.load(None), gpu) == stacked.AUTO_ON_CUDA
    assert stacked.resolve(config.load(None, ["nets_per_step=3"]), cpu) == 3
    assert stacked.resolve(config.load(None, {"nets_per_step": 3, "world_size": 2}), gpu) == 1  # DDP shards
    with pytest.raises(UserError, match="^setting 'nets_per_step' in the command line must be auto or a whole "
                                        "number >= 1, got '0'$"):
        config.load(None, ["nets_per_step=0"])


def test_nets_per_step_is_refused_in_one_wording_from_a_file_and_a_command_line(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("nets_per_step: 1.5\n")
    wording = "must be auto or a whole number >= 1, got '1.5'$"
    with pytest.raises(UserError, match=f"^setting 'nets_per_step' in {path} {wording}"):
        config.load(path)
    with pytest.raises(UserError, match=f"^setting 'nets_per_step' in the command line {wording}"):
        config.load(None, ["nets_per_step=1.5"])
    path.write_text("nets_per_step: 4\n")
    assert config.load(path).nets_per_step == 4 and config.load(None, ["nets_per_step=AUTO"]).nets_per_step == "auto"
    assert config.same_training(config.load(None, ["nets_per_step=1"]), config.load(None, ["nets_per_step=5"]))


def _files(run: Path) -> dict[str, list[str]]:
    return {str(d.relative_to(run)): sorted(p.name for p in d.iterdir()) for d in sorted(run.glob("fold*/m*"))}


def test_a_stacked_run_writes_what_an_unstacked_one_does(demo_dir: Path, tmp_path: Path) -> None:
    small = dict(limit=120, folds=2, epochs=2, width=8, tta=False)
    _, alone = train_small_run(demo_dir, tmp_path / "alone", "alone", **small)
    _, together = train_small_run(demo_dir, tmp_path / "together", "together", nets_per_step=2, device="cpu", **small)
    assert _files(together.run_dir) == _files(alone.run_dir) == {
        f"fold{k}/m0": ["done.json", "history.json", "test_probs.npy", "val_probs.npy", "weights.pt"] for k in range(2)}
    assert config.load(together.run_dir / "config.yaml").nets_per_step == 2
    assert config.load(alone.run_dir / "config.yaml").nets_per_step == 1  # auto on the CPU
    assert fileio.read_json(together.run_dir / "fold1" / "m0" / "done.json")["nets_per_step"] == [2, 2]
    rows = fileio.read_json(together.run_dir / "data.json")["test_rows"]
    read_submission(together.submission, expected_rows=rows)
    assert together.metrics["oof"]["rows"] == alone.metrics["oof"]["rows"] == 120
    for run in (alone.run_dir, together.run_dir):
        history = fileio.read_json(run / "fold0" / "m0" / "history.json")
        assert [h["epoch"] for h in history] == [1, 2] and all("val_acc" in h for h in history)


def _train(demo_dir: Path) -> list[str]:
    return ["train", "--config", str(ROOT / "configs" / "default.yaml"), f"DATA={demo_dir}", "NAME=stack", "width=8",
            "epochs=4", "folds=2", "limit=300", "progress=false", "threads=1", "nets_per_step=2", "tta=false"]


@pytest.mark.slow
def test_a_killed_stacked_run_resumes_exactly(demo_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    done = run_cli(_train(demo_dir), reference)
    assert done.returncode == 0 and "2 nets in one step: fold 0, fold 1" in done.stdout, done.stderr[-2000:]
    (ref_run,) = (reference / "runs").iterdir()

    cwd = tmp_path / "killed"
    cwd.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "digitrec", *_train(demo_dir)], cwd=cwd, env=clean_env(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # both nets' resume points of epoch 2 are written before the next epoch's lines
        if "fold 0 epoch  3/4" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (run,) = (cwd / "runs").iterdir()
    assert not (run / "metrics.json").exists()
    assert {fileio.read_torch(run / f"fold{k}" / "m0" / "resume.pt")["epoch"] for k in range(2)} == {2}

    again = run_cli(_train(demo_dir), cwd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 nets: resuming after epoch 2/4" in again.stdout
    # CPU, one thread, fixed seeds: exactly the probabilities of the run that was never killed
    for name in ("oof_probs.npy", "test_probs.npy"):
        assert np.array_equal(np.load(run / name), np.load(ref_run / name)), name
    assert not list(run.glob("fold*/m*/resume.pt"))
