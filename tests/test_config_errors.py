"""Config errors: each is one line naming the setting (and what would be right), exit code 2, nothing written;
`--debug` shows the traceback. The catalogue goes through digitrec.config in-process; one CLI run proves
the exit code and the single line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from digitrec import config, engine
from digitrec.errors import UserError

DEFAULT = ROOT / "configs" / "default.yaml"


def refused(overrides: list[str], path: Path | None = DEFAULT) -> str:
    with pytest.raises(UserError) as info:
        config.load(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


CASES = {
    "unknown key, nearest suggested": (["epoch=3"], "unknown setting 'epoch' (did you mean 'epochs'?)"),
    "unknown short name": (["bsz=64"], "unknown setting 'bsz' (did you mean 'batch_size'?)"),
    "wrong type": (["BS=abc"], "setting 'batch_size' in the command line must be int, got 'abc'"),
    "float for an int": (["EPOCHS=2.5"], "setting 'epochs' in the command line must be int, got 2.5"),
    "bool for an int": (["FOLDS=true"], "setting 'folds' in the command line must be int, got True"),
    "unreadable value": (["BS=[1"], "setting 'batch_size' in the command line: cannot read the value '[1'"),
    "BS=0": (["BS=0"], "BS (batch_size) must be >= 1, got 0"),
    "ACCUM=0": (["ACCUM=0"], "ACCUM (accum) must be >= 1, got 0"),
    "negative epochs": (["EPOCHS=-2"], "EPOCHS (epochs) must be >= 1, got -2"),
    "FOLDS=1": (["FOLDS=1"], "FOLDS (folds) must be >= 2 for cross-validation, got 1"),
    "FOLD out of range": (["FOLDS=3", "FOLD=3"], "FOLD (fold) must be in 0..2 for FOLDS=3, got 3"),
    "negative FOLD": (["FOLD=-1"], "FOLD (fold) must be in 0..4 for FOLDS=5, got -1"),
    "negative seed": (["SEED=-1"], "SEED (seed) must be in 0..2**32-1, got -1"),
    "unknown model": (["MODEL=resnet"], "unknown model 'resnet'; known: gn_cnn, gn_m3, gn_m5, gn_m7, mlp1, mlp2, or timm:<name>"),
    "tiny LIMIT": (["LIMIT=5", "FOLDS=2"], "LIMIT (limit) must be at least 10 x FOLDS = 20 rows, got 5"),
    "not key=value": (["BS"], "setting 'BS' must look like KEY=VALUE (e.g. BS=128)"),
    "bad name": (["NAME=../elsewhere"], "NAME (name) must be a plain folder name, got '../elsewhere'"),
    "zero lr": (["lr=0"], "lr must be > 0, got 0.0"),
    "unknown device": (["device=tpu"], "device must be auto, cpu or cuda[:N], got 'tpu'"),
}


@pytest.mark.parametrize("case", CASES)
def test_config_error(case: str) -> None:
    overrides, expected = CASES[case]
    assert refused(overrides) == expected


def test_good_overrides_are_typed() -> None:
    cfg = config.load(DEFAULT, ["BS=64", "ACCUM=4", "lr=1e-3", "FOLD=1", "LIMIT=300", "data="])
    assert (cfg.batch_size, cfg.accum, cfg.effective_batch, cfg.fold, cfg.limit) == (64, 4, 256, 1, 300)
    assert cfg.lr == 1e-3  # YAML 1.1 alone would read 1e-3 as a string
    assert not cfg.data  # empty: search for the data


def test_config_file_errors(tmp_path: Path) -> None:
    assert refused([], tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found"
    typo = tmp_path / "typo.yaml"
    typo.write_text("epochs: 3\nbatchsize: 64\n")
    assert refused([], typo) == "unknown setting 'batchsize' (did you mean 'batch_size'?)"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("epochs: three\n")
    assert refused([], wrong) == f"setting 'epochs' in {wrong} must be int, got 'three'"
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [3\n")
    assert refused([], broken).startswith(f"{broken}: not valid YAML")
    listing = tmp_path / "list.yaml"
    listing.write_text("- epochs\n")
    assert refused([], listing) == f"{listing}: must be a mapping of key: value"


def test_settings_only_torch_or_timm_can_check_fail_in_preflight() -> None:
    """Checked before the run folder is made (pipeline.train calls engine.preflight first)."""
    def preflight_refuses(*overrides: str) -> str:
        with pytest.raises(UserError) as info:
            engine.preflight(config.load(DEFAULT, ["width=8", *overrides]))
        return str(info.value)

    assert preflight_refuses("optimizer=adamx").startswith("optimizer 'adamx' is not a timm optimizer (did you mean")
    assert preflight_refuses("MODEL=timm:no_such_net").startswith("unknown timm model 'no_such_net'")
    if not torch.cuda.is_available():
        assert preflight_refuses("device=cuda") == "device=cuda: CUDA is not available on this machine (use device=cpu or auto)"
    assert engine.preflight(config.load(DEFAULT, ["width=8", "device=cpu"])).type == "cpu"


@pytest.mark.slow
def test_cli_config_error_exit_2_one_line_nothing_written_and_debug_traceback(workdir: Path) -> None:
    args = ["train", "--config", str(DEFAULT), "MODEL=resnet", "DATA=does-not-matter"]
    result = run_cli(args, workdir)
    assert result.returncode == 2
    assert result.stderr == "error: unknown model 'resnet'; known: gn_cnn, gn_m3, gn_m5, gn_m7, mlp1, mlp2, or timm:<name>\n"
    assert result.stdout == ""
    assert sorted(p.name for p in workdir.iterdir()) == ["kaggle-config"]  # no runs/, submissions/, input/

    debug = run_cli(["--debug", *args], workdir)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().endswith("digitrec.errors.UserError: unknown model 'resnet'; known: gn_cnn, gn_m3, gn_m5, gn_m7, mlp1, mlp2, or timm:<name>")
    assert sorted(p.name for p in workdir.iterdir()) == ["kaggle-config"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.name == path.stem  # a run folder is named after its config
    assert len(config.member_configs(cfg)) == len(cfg.members or [None])
