"""Pseudo-labels, bagged folds and weight-standardised GroupNorm (issue 21): a student's labels come only
from nets that never trained on its held-out rows; soft and hard targets give the expected loss; bagged
members' OOF is each row's average over members, every prediction out of fold; group_ws standardises."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import train_small_run
from digitrec import config, engine, fileio, nets, pipeline, pseudo
from digitrec.metrics import mcnemar
from digitrec.models import build_model

# two members on their own folds (bagged), a third sharing member 0's folds
MEMBERS = "[{width: 8}, {width: 8, fold_seed: 5}, {width: 8, rotate: 0}]"


@pytest.fixture(scope="module")
def student_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_small_run(demo_dir, tmp_path_factory.mktemp("pseudo"), "pl", limit=240, folds=3, epochs=2,
                           members=MEMBERS, refit=True, pseudo_rounds=1, pseudo_agree=False, pseudo_epochs=1,
                           tta=False)


def test_no_student_learns_from_a_net_that_saw_its_held_out_rows(student_run) -> None:
    cfg, result = student_run
    run = result.run_dir
    split = nets.read_split(run, members=3)
    assert not np.array_equal(split.member_fold_of[0], split.member_fold_of[1])  # member 1 is bagged
    np.testing.assert_array_equal(split.member_fold_of[0], split.member_fold_of[2])
    students = 0
    for k in range(3):
        for j in range(3):
            held_out = split.member_fold_of[j] == k
            selection, teachers = pseudo.load(run / "pl1" / f"fold{k}" / f"m{j}" / "pseudo.npz")
            assert teachers, "every student has a teacher: its own member's net of the fold"
            for teacher in teachers:  # "fold<k'>/m<j'>": the net trained on every row its fold holds in
                fold, member = int(teacher.split("/")[0][4:]), int(teacher.split("/")[1][1:])
                trained_on = split.member_fold_of[member] != fold
                assert not (trained_on & held_out).any(), f"fold {k} member {j} learnt from {teacher}"
            # shared folds teach together; the bagged member only learns from its own net
            assert sorted(teachers) == ([f"fold{k}/m1"] if j == 1 else [f"fold{k}/m0", f"fold{k}/m2"])
            probs = np.stack([np.load(run / t / "test_probs.npy") for t in teachers])
            np.testing.assert_array_equal(selection.targets, probs.mean(0).argmax(1))  # agree off: every row
            students += 1
    assert students == 9
    refit_teachers = pseudo.load(run / "pl1" / "refit" / "m0" / "pseudo.npz")[1]
    assert len(refit_teachers) == 9  # the refit holds nothing out: the whole round-0 CV ensemble teaches it
    record = result.metrics["pseudo"]  # the 9 CV students, then the 3 refit students
    assert len(record) == 12 and record[-1]["net"] == "refit member 2 student 1" and record[-1]["teachers"] == 9
    assert result.metrics["students_vs_teachers"]["rows"] == 240
    assert [r["round"] for r in result.metrics["rounds"]] == [0, 1]
    # the teachers' 2 epochs, the students' pseudo_epochs
    assert len(fileio.read_json(run / "fold0" / "m0" / "history.json")) == 2
    assert len(fileio.read_json(run / "pl1" / "fold0" / "m0" / "history.json")) == 1


def test_bagged_oof_is_each_rows_average_of_out_of_fold_predictions(student_run) -> None:
    cfg, result = student_run
    run = result.run_dir
    split = nets.read_split(run, members=3)
    member_oof = np.load(run / "member_oof_probs.npy")
    assert member_oof.shape == (3, 240, 10) and np.isfinite(member_oof).all()
    for j in range(3):
        for k in range(3):  # each member's row comes from the student of that member that held it out
            np.testing.assert_array_equal(member_oof[j][split.member_fold_of[j] == k],
                                          np.load(run / "pl1" / f"fold{k}" / f"m{j}" / "val_probs.npy"))
    np.testing.assert_allclose(np.load(run / "oof_probs.npy"), member_oof.mean(0), rtol=0, atol=1e-7)
    labels = pipeline.open_run(run).labels
    for j in range(3):  # each net's own accuracy on the rows it held out (member 1's folds are not the run's)
        for k in range(3):
            held_out = split.member_fold_of[j] == k
            net = np.load(run / "pl1" / f"fold{k}" / f"m{j}" / "val_probs.npy")
            assert result.metrics["net_accuracy"][j][str(k)] == float((net.argmax(1) == labels[held_out]).mean())
    test = np.load(run / "test_probs.npy")
    np.testing.assert_array_equal(test, np.stack([np.load(run / "pl1" / "refit" / f"m{j}" / "test_probs.npy")
                                                  for j in range(3)]))


def test_a_student_trains_on_its_rows_plus_the_kept_test_rows() -> None:
    images = torch.arange(10 * 4, dtype=torch.uint8).reshape(10, 2, 2)
    split = engine.FoldData(images, torch.arange(10) % 10, torch.tensor([0, 1, 2, 3, 4, 5]),
                            torch.tensor([6, 7, 8, 9]), torch.full((5, 2, 2), 200, dtype=torch.uint8))
    hard = pseudo.Selection(np.array([1, 3]), np.array([7, 2]), np.zeros(5, dtype=np.int64), 1)
    data = pseudo.student_data(split, hard)
    assert data.train_idx.tolist() == [0, 1, 2, 3, 4, 5, 10, 11] and data.val_idx.tolist() == [6, 7, 8, 9]
    assert data.labels.tolist() == list(range(10)) + [7, 2] and (data.images[10:] == 200).all()
    soft = pseudo.Selection(np.array([4]), np.full((1, 10), 0.1, dtype=np.float32), np.zeros(5, dtype=np.int64), 1)
    data = pseudo.student_data(split, soft)
    assert data.labels.shape == (11, 10) and data.labels[:10].argmax(1).tolist() == list(range(10))
    assert engine.hard_labels(data.labels[:10]).tolist() == list(range(10))


def test_selection_keeps_agreed_confident_rows_and_sharpens_soft_targets() -> None:
    a = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    b = np.array([[0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    probs = np.stack([np.pad(a, ((0, 0), (0, 8))), np.pad(b, ((0, 0), (0, 8)))])
    cfg = config.Config()
    chosen = pseudo.select(probs, cfg)  # the two nets disagree on row 1
    assert chosen.rows.tolist() == [0, 2] and chosen.targets.tolist() == [0, 1] and chosen.teachers == 2
    chosen = pseudo.select(probs, config.Config(pseudo_agree=False, pseudo_threshold=0.84))
    assert chosen.rows.tolist() == [0, 2]  # row 0 averages 0.85, row 2 0.85, row 1 0.55
    soft = pseudo.select(probs, config.Config(pseudo_soft=True, pseudo_temperature=0.5))
    mean = probs.mean(0)[[0, 2]]
    expected = mean**2 / (mean**2).sum(1, keepdims=True)  # softmax(log p / 0.5) = p^2, normalised
    np.testing.assert_allclose(soft.targets, expected, rtol=1e-5, atol=1e-12)
    assert soft.targets.dtype == np.float32
    record = pseudo.agreement(np.eye(10)[[0, 0, 0]], chosen)
    assert record == {"teachers": 2, "kept_rows": 2, "test_rows": 3, "differs_on_kept": 1, "differs_on_all": 2}


def test_soft_and_hard_targets_give_the_expected_loss() -> None:
    """The step's loss, F.cross_entropy(sum, label smoothing), against the formula by hand: hard labels,
    their one-hot distributions (the labelled rows of a soft student) and a teacher's distribution."""
    logits = torch.tensor([[2.0, 0.0, -1.0] + [0.0] * 7, [0.5, 1.5, 0.0] + [0.0] * 7])
    log_p = logits.log_softmax(1)
    hard = torch.tensor([0, 1])
    smoothing = 0.1

    def by_hand(q: torch.Tensor) -> float:
        q = q * (1 - smoothing) + smoothing / 10
        return float(-(q * log_p).sum())

    one_hot = F.one_hot(hard, 10).float()
    assert F.cross_entropy(logits, hard, label_smoothing=smoothing, reduction="sum").item() == pytest.approx(by_hand(one_hot))
    assert F.cross_entropy(logits, one_hot, label_smoothing=smoothing, reduction="sum").item() == pytest.approx(by_hand(one_hot))
    teacher = torch.tensor([[0.7, 0.2, 0.1] + [0.0] * 7, [0.1, 0.8, 0.1] + [0.0] * 7])
    assert F.cross_entropy(logits, teacher, label_smoothing=smoothing, reduction="sum").item() == pytest.approx(by_hand(teacher))


def test_a_soft_target_student_steps(demo_dir: Path) -> None:
    cfg = config.load(None, {"model": "gn_cnn", "width": 8, "batch_size": 4, "accum": 2, "amp": False})
    torch.manual_seed(0)
    model = engine.build_net(cfg, torch.device("cpu"))
    optimizer, _ = engine.make_optimizer(model, cfg, engine.Schedule(8, cfg))
    images = torch.randint(0, 255, (8, 28, 28), dtype=torch.uint8)
    targets = torch.softmax(torch.randn(8, 10), 1)
    data = engine.FoldData(images, targets, torch.arange(8), torch.arange(0), images[:0])
    before = [p.detach().clone() for p in model.parameters()]
    loss, correct = engine.train_step(model, optimizer, torch.arange(8), data, cfg, torch.device("cpu"))
    assert torch.isfinite(loss) and 0 <= int(correct) <= 8
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_group_ws_standardises_every_conv_and_trains() -> None:
    model = build_model("gn_cnn", width=8, groups=4, norm="group_ws")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7 and all(type(c).__name__ == "StdConv2d" for c in convs)
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(3.0).add_(0.5)  # far from standardised
    for conv in convs:  # the weights the conv applies: zero mean, unit variance per output channel
        captured = {}
        original = F.conv2d

        def spy(x, weight, *args, **kwargs):
            captured["w"] = weight
            return original(x, weight, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(F, "conv2d", spy)
            conv(torch.rand(1, conv.in_channels, 12, 12))
        w = captured["w"].flatten(1)
        torch.testing.assert_close(w.mean(1), torch.zeros(len(w)), atol=1e-5, rtol=0)
        # unit variance up to the eps (1e-5) added to the weights' own variance before dividing
        torch.testing.assert_close(w.var(1, unbiased=False), torch.ones(len(w)), atol=5e-3, rtol=0)
    cfg = config.load(None, {"norm": "group_ws", "width": 8, "batch_size": 16, "amp": False, "dropout": 0,
                             "warmup_epochs": 0, "label_smoothing": 0})
    torch.manual_seed(0)
    model = engine.build_net(cfg, torch.device("cpu"))
    optimizer, _ = engine.make_optimizer(model, cfg, engine.Schedule(64, cfg))
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(16, 28, 28, generator=generator) * 255).to(torch.uint8)
    data = engine.FoldData(images, torch.arange(16) % 10, torch.arange(16), torch.arange(0), images[:0])
    losses = [engine.train_step(model, optimizer, torch.arange(16), data, cfg, torch.device("cpu"), augment=False)[0].item()
              for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]  # it learns the 16 images


def test_mcnemar_counts_the_rows_one_run_gets_right() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5])
    a = np.eye(10)[[0, 1, 9, 9, 4, 9]]  # wrong on rows 2, 3, 5
    b = np.eye(10)[[0, 9, 2, 3, 4, 5]]  # wrong on row 1
    result = mcnemar(labels, a, b)
    assert result["a_errors"] == 3 and result["b_errors"] == 1
    assert result["only_a_right"] == 1 and result["only_b_right"] == 3
    assert result["p_value"] == pytest.approx(0.625)  # 2 x P(X <= 1), X ~ Binomial(4, 1/2) = 2 x 5/16
