"""Ensembles and the refit: OOF probabilities are the members' per-row average, the submission averages
the refit members, and members are configured (and refused) like every other setting."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, train_small_run
from digitrec import config, fileio, pipeline
from digitrec.errors import UserError
from digitrec.submission import read_submission

MEMBERS = "[{model: gn_cnn, width: 8}, {model: gn_m5, width: 8, dropout: 0.1}, {model: gn_m7, width: 8, rotate: 0}]"


@pytest.fixture(scope="module")
def ensemble_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_small_run(demo_dir, tmp_path_factory.mktemp("ensemble"), "ens", limit=240, folds=3, epochs=1,
                           members=MEMBERS, refit=True, tta=False)


def test_ensemble_oof_is_the_members_per_row_average(ensemble_run) -> None:
    cfg, result = ensemble_run
    run = result.run_dir
    fold_of = np.load(run / "folds.npz")["fold_of"]
    member_oof = np.load(run / "member_oof_probs.npy")
    assert member_oof.shape == (3, 240, 10) and np.isfinite(member_oof).all()
    for k in range(3):
        for j in range(3):  # each member's held-out rows come from its own net of that fold
            np.testing.assert_array_equal(member_oof[j][fold_of == k],
                                          np.load(run / f"fold{k}" / f"m{j}" / "val_probs.npy"))
    oof = np.load(run / "oof_probs.npy")
    np.testing.assert_allclose(oof, member_oof.mean(0), rtol=0, atol=1e-7)
    metrics = result.metrics
    assert metrics["oof"]["rows"] == 240 and metrics["oof"]["errors"] == round(240 * (1 - metrics["oof"]["accuracy"]))
    members = metrics["members"]
    assert [m["settings"]["model"] for m in members] == ["gn_cnn", "gn_m5", "gn_m7"]
    assert members[-1]["ensemble_of_first_oof_accuracy"] == metrics["oof"]["accuracy"]
    assert members[0]["ensemble_of_first_oof_accuracy"] == members[0]["oof_accuracy"]


def test_refit_members_make_a_valid_submission(ensemble_run) -> None:
    cfg, result = ensemble_run
    run = result.run_dir
    refit = [np.load(run / "refit" / f"m{j}" / "test_probs.npy") for j in range(3)]
    for j in range(3):
        history = fileio.read_json(run / "refit" / f"m{j}" / "history.json")
        assert len(history) == 1 and "val_acc" not in history[0]  # trained on every row: nothing held out
        assert np.load(run / "refit" / f"m{j}" / "val_probs.npy").shape == (0, 10)
        assert not (run / "refit" / f"m{j}" / "resume.pt").exists()
    test = np.load(run / "test_probs.npy")
    np.testing.assert_array_equal(test, np.stack(refit))  # the submission's nets are the refit nets
    test_rows = fileio.read_json(run / "data.json")["test_rows"]
    frame = read_submission(result.submission, expected_rows=test_rows)
    np.testing.assert_array_equal(frame["Label"].to_numpy(), np.stack(refit).mean(0).argmax(1))
    assert result.metrics["submission_from"] == "refit: 3 net(s) on all rows"
    assert 0.0 <= result.metrics["refit_agrees_with_cv"] <= 1.0
    assert fileio.read_json(result.submission.with_suffix(".json"))["submission_from"].startswith("refit")
    saved = config.load(run / "config.yaml")  # the resolved config, members included, reads back the same
    assert saved.members == cfg.members and saved.refit


def test_predict_rebuilds_the_ensemble_submission(ensemble_run, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, result = ensemble_run
    before = result.submission.read_bytes()
    monkeypatch.chdir(result.run_dir.parent.parent)
    rebuilt = pipeline.predict(str(result.run_dir), runs_dir=cfg.runs_dir)
    assert rebuilt.submission.read_bytes() == before


def test_member_configs_inherit_and_seed_apart() -> None:
    cfg = config.load(ROOT / "configs" / "cpu-best.yaml", ["epochs=2", "seed=7"])
    members = config.member_configs(cfg)
    assert [m.model for m in members] == ["gn_cnn", "gn_m5", "gn_m7"]
    assert [m.seed for m in members] == [7, 8, 9]  # member 0 trains what the plain config would
    assert all(m.epochs == 2 and m.members is None and m.folds == cfg.folds for m in members)
    single = config.load(ROOT / "configs" / "default.yaml")
    assert config.member_configs(single) == [single]


@pytest.mark.parametrize("members, expected", [
    ("[{folds: 3}]", "setting 'folds' in the command line, member 0 cannot differ between members"),
    ("[{model: gn_cnn}, {widht: 8}]", "unknown setting 'widht' (did you mean 'width'?)"),
    ("[{model: gn_cnn}, {epochs: 0}]", "member 1: EPOCHS (epochs) must be >= 1, got 0"),
    ("{model: gn_cnn}", "setting 'members' in the command line must be a list of mappings"),
    ("[{dropout: high}]", "setting 'dropout' in the command line, member 0 must be float, got 'high'"),
    ("[{model: resnet}]", "member 0: unknown model 'resnet'"),
])
def test_bad_members_are_refused_by_name(members: str, expected: str) -> None:
    with pytest.raises(UserError) as info:
        config.load(ROOT / "configs" / "default.yaml", [f"members={members}"])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_cost_of_the_submission_counts_every_net(ensemble_run) -> None:
    from digitrec.cost import ensemble_cost
    from digitrec.models import count_parameters, model_from_config

    cfg, result = ensemble_run
    cost = ensemble_cost(result.run_dir, cfg, torch.device("cpu"))
    members = config.member_configs(cfg)
    assert cost["nets_in_submission"] == 3  # the refit members
    assert [m["model"] for m in cost["members"]] == ["gn_cnn", "gn_m5", "gn_m7"]
    assert cost["params"] == sum(count_parameters(model_from_config(m)) for m in members)
    assert cost["flops_per_image"] == sum(m["flops_per_image"] for m in cost["members"]) > 0
