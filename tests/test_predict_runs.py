"""Reading runs back (issue 31): an ensemble run from before bagged folds predicts and resumes, `make predict`'s
TTA choice is every net's, a predict folder is evaluated and compared like a run, and predict and evaluate
take RUN= and TTA= as the README writes them."""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, train_small_run
from digitrec import cli, commands, config, engine, fileio, nets, pipeline, runs

# member 0 predicts with TTA although the run says tta: false; member 1 follows the run
MEMBERS = "[{width: 8, tta: true}, {width: 8}]"


@pytest.fixture(scope="module")
def trained(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("members")
    return (work, *train_small_run(demo_dir, work, "mixed", limit=120, folds=2, epochs=1, members=MEMBERS, tta=False))


def _copy_run(trained, tmp_path: Path) -> tuple[config.Config, Path]:
    """The fixture's run in a runs/ of its own, its folds.npz as runs kept it before bagged folds: rows and
    fold_of only."""
    _, cfg, result = trained
    run = tmp_path / "runs" / result.run_dir.name
    shutil.copytree(result.run_dir, run, ignore=shutil.ignore_patterns(".lock", "predict-*"))
    saved = np.load(run / "folds.npz")
    fileio.write_npz(run / "folds.npz", rows=saved["rows"], fold_of=saved["fold_of"])
    cfg = config.apply({"runs_dir": str(tmp_path / "runs"), "submissions_dir": str(tmp_path / "submissions")},
                       cfg, "the test")
    return cfg, run


def test_an_ensemble_run_from_before_bagged_folds_predicts(trained, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, result = trained
    cfg, run = _copy_run(trained, tmp_path)
    split = nets.read_split(run, members=2)
    assert split.member_fold_of.shape == (2, 120)  # every member on the run's folds, as such runs trained
    assert (split.member_fold_of == split.fold_of).all()
    monkeypatch.chdir(tmp_path)
    again = pipeline.predict(str(run), runs_dir=cfg.runs_dir)
    np.testing.assert_array_equal(np.load(run / "predict-tta-per-member" / "oof_probs.npy"),
                                  np.load(result.run_dir / "oof_probs.npy"))
    assert again.metrics["oof"] == result.metrics["oof"]


def test_an_interrupted_run_from_before_bagged_folds_resumes(trained, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg, run = _copy_run(trained, tmp_path)
    (run / "metrics.json").unlink()
    shutil.rmtree(run / "fold1" / "m1")  # killed while training the last net
    finished = (run / "fold0" / "m0" / "weights.pt").stat().st_mtime_ns
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="digitrec.pipeline"):
            again = pipeline.train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert again.run_dir == run and f"resuming run {run}" in caplog.text
    assert "fold 0 member 0: already finished, skipped" in caplog.text
    assert (run / "fold0" / "m0" / "weights.pt").stat().st_mtime_ns == finished
    assert (run / "fold1" / "m1" / "done.json").is_file() and (run / "metrics.json").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run.name]  # no new run


def test_make_predicts_tta_choice_is_every_nets(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    work, cfg, result = trained
    run = result.run_dir
    monkeypatch.chdir(work)
    pipeline.predict(str(run), runs_dir=cfg.runs_dir, tta=False)
    out = run / "predict-tta0"
    members = config.member_configs(config.load(run / "config.yaml"))
    assert members[0].tta is True  # trained to predict with TTA; TTA=0 overrides it
    images = torch.from_numpy(pipeline.open_run(run).dataset.test_images[:64])
    for j, member in enumerate(members):
        net = engine.load_net(run / "fold0" / f"m{j}", member, torch.device("cpu"))
        plain = engine.predict_proba(net, images, member, torch.device("cpu"), tta=False)
        np.testing.assert_allclose(np.load(out / "fold0" / f"m{j}" / "test_probs.npy")[:64], plain, atol=1e-6)
    assert commands._sidecar(run.parent.parent / "submissions" / f"{run.name}.predict-tta0.DEMO.csv")["tta"] is False
    assert config.nets_tta(config.load(out / "config.yaml")) is False


def test_predict_as_trained_names_the_members_own_tta(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    work, cfg, result = trained
    run = result.run_dir
    monkeypatch.chdir(work)
    again = pipeline.predict(str(run), runs_dir=cfg.runs_dir)
    out = run / "predict-tta-per-member"
    for j in range(2):  # each net as it was trained: the same probabilities training wrote
        np.testing.assert_array_equal(np.load(out / "fold0" / f"m{j}" / "val_probs.npy"),
                                      np.load(run / "fold0" / f"m{j}" / "val_probs.npy"))
    assert commands._sidecar(again.submission)["tta"] is None
    assert commands._sidecar(result.submission)["tta"] is None  # training's own record says the same
    assert "TTA as each member sets it" in commands._describe_submission(again.submission)


def test_a_predict_folder_is_compared_and_evaluated_like_a_run(trained, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    work, cfg, result = trained
    run = result.run_dir
    monkeypatch.chdir(work)
    assert cli.main(["predict", f"RUN={run}", "TTA=off"]) == 0  # the README's form; off is a boolean
    out = run / "predict-tta0"
    assert runs.run_of(out) == run and runs.run_of(run) == run
    capsys.readouterr()
    assert cli.main(["compare", f"a={run}", f"b={out}"]) == 0
    said = capsys.readouterr().out
    assert f"B {run.name}/predict-tta0:" in said and "McNemar exact p" in said
    assert cli.main(["evaluate", f"RUN={out}", "repeats=1", "warmup=0", "latency_batches=1"]) == 0
    report = fileio.read_json(out / "evaluation.json")
    assert report["accuracy"] == fileio.read_json(out / "metrics.json")["oof"]["accuracy"]
    assert report["run"] == str(out) and not (run / "evaluation.json").exists()
    assert f"# Evaluation of {run.name}/predict-tta0" in (out / "evaluation.md").read_text()


def test_predict_and_evaluate_refuse_unknown_settings_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["predict", "RUN=nowhere"]) == 2
    assert capsys.readouterr().err.startswith("error: RUN=nowhere: no run folder")
    assert cli.main(["evaluate", "RUN=nowhere"]) == 2
    assert capsys.readouterr().err.startswith("error: RUN=nowhere: no run folder")
    assert cli.main(["predict", "TTA=maybe"]) == 2
    assert "setting 'tta' in the command line must be bool or null, got 'maybe'" in capsys.readouterr().err
    assert cli.main(["predict", "BS=3"]) == 2
    assert "predict takes RUN=<run> and TTA=1|0, not bs=3" in capsys.readouterr().err
    assert cli.main(["predict", "TTA=1", "--no-tta"]) == 2
    assert "disagree" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["off", "False", "0", "no"])
def test_make_predict_hands_tta_to_the_settings_reader(value: str) -> None:
    dry = subprocess.run(["make", "-n", "-f", str(ROOT / "Makefile"), "predict", f"TTA={value}", "PYTHON=python"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and f"predict tta={value}" in dry.stdout
    from digitrec import settings

    assert settings.take(cli.PredictSettings, {"tta": value}).tta is False
