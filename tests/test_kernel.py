"""`make kernel`: the metadata, and the generated script run in a simulated Kaggle kernel."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, clean_env
from digitrec import commands, competition, config, kernel
from digitrec.errors import UserError


def args(*overrides: str) -> argparse.Namespace:
    return argparse.Namespace(overrides=list(overrides), run=None, runs_dir="runs", config="configs/default.yaml",
                              debug=False)


def test_build_writes_the_metadata_and_one_script(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "never-in-a-kernel-0123456789")
    commands.cmd_kernel(args("epochs=3", "BS=64"))
    meta = json.loads((workdir / "kernel" / competition.METADATA).read_text())
    assert meta["id"] == "someone/digitrec" and meta["title"] == "digitrec" and meta["code_file"] == kernel.SCRIPT
    assert meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["machine_shape"] == "NvidiaTeslaT4"  # Kaggle's two-T4 machine, unless ACCEL= says otherwise
    assert meta["competition_sources"] == ["digit-recognizer"] and meta["kernel_type"] == "script"
    assert sorted(p.name for p in (workdir / "kernel").iterdir()) == sorted([competition.METADATA, kernel.SCRIPT])
    script = (workdir / "kernel" / kernel.SCRIPT).read_text()
    compile(script, kernel.SCRIPT, "exec")
    for module in (ROOT / "src" / "digitrec").glob("*.py"):
        assert f"'digitrec/{module.name}'" in script
    assert "'epochs': 3," in script and "'batch_size': 64," in script
    assert "never-in-a-kernel" not in script


def test_the_gpu_recipe_builds_into_a_kernel(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make kernel CONFIG=configs/best.yaml`: the script carries the whole recipe (every member, the refit,
    stacking left to the kernel's GPUs), and ranks that train whole nets each."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    build = args()
    build.config = str(ROOT / "configs" / "best.yaml")
    commands.cmd_kernel(build)
    tree = ast.parse((workdir / "kernel" / kernel.SCRIPT).read_text())
    carried, = (ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and node.targets[0].id == "CONFIG")
    recipe = config.load(ROOT / "configs" / "best.yaml")
    assert config.load(None, carried) == dataclasses.replace(recipe, data=None, parallel="folds")
    assert len(config.member_configs(recipe)) == 4 and recipe.refit and recipe.nets_per_step == "auto"
    assert min(member.epochs for member in config.member_configs(recipe)) >= 40


def test_a_budgeted_kernel_plans_when_it_runs_and_fits_kaggles_limit(workdir: Path, capsys: pytest.CaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`make kernel BUDGET=8h`: the script carries the budget, not a plan (the kernel times its own machine); a
    budget past what a kernel may run is refused before anything is written."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    with pytest.raises(UserError, match=r"^BUDGET=12h: a Kaggle kernel stops after 12 h, its start-up and output "
                                        r"included; give at most BUDGET=11h30m$"):
        commands.cmd_kernel(args("BUDGET=12h"))
    assert not (workdir / "kernel").exists()
    commands.cmd_kernel(args("BUDGET=8h"))
    tree = ast.parse((workdir / "kernel" / kernel.SCRIPT).read_text())
    carried, = (ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and node.targets[0].id == "CONFIG")
    assert carried["budget"] == "8h" and carried["members"] is None  # planned in the kernel, on its machine
    assert "BUDGET=8h, planned on the kernel's machine" in capsys.readouterr().out


@pytest.mark.parametrize("accel, shape", [("NvidiaL4", "NvidiaL4"), ("nvidial4x1", "NvidiaL4X1"),
                                          ("NvidiaH100", "NvidiaH100"), ("cpu", None)])
def test_the_accelerator_is_the_metadatas_machine_shape(workdir: Path, accel: str, shape: str | None) -> None:
    kernel.build(workdir / "kernel", config.Config(), "someone/digitrec", accel)
    meta = json.loads((workdir / "kernel" / competition.METADATA).read_text())
    assert meta.get("machine_shape") == shape and meta["enable_gpu"] is (shape is not None)


def test_unknown_and_retired_accelerators_are_refused(workdir: Path) -> None:
    accepted = ", ".join(kernel.ACCELERATORS)
    with pytest.raises(UserError) as info:
        kernel.build(workdir / "kernel", config.Config(), "someone/digitrec", "NvidiaV100")
    assert str(info.value) == f"ACCEL=NvidiaV100: unknown accelerator; use one of {accepted}"
    with pytest.raises(UserError, match=r"^ACCEL=NvidiaTeslaP100: not offered, because .*without sm_60 code.*; use one of "):
        kernel.build(workdir / "kernel", config.Config(), "someone/digitrec", "NvidiaTeslaP100")
    assert not (workdir / "kernel").exists()


def test_the_kernel_id_must_be_usable(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    with pytest.raises(UserError, match="needs your Kaggle username"):
        commands.cmd_kernel(args())
    with pytest.raises(UserError, match="^setting 'epochs' in the command line must be int, got 'many'$"):
        commands.cmd_kernel(args("id=someone/digitrec", "epochs=many"))
    with pytest.raises(UserError, match="must be <your-kaggle-username>/<slug>"):
        kernel.build(workdir / "kernel", config.Config(), "me/x")


@pytest.mark.parametrize("nproc", [None, 2])
def test_the_kernel_script_trains_in_a_simulated_kernel(demo_dir: Path, tmp_path: Path, nproc: int | None) -> None:
    """KAGGLE_KERNEL_RUN_TYPE set, /kaggle/input and /kaggle/working remapped to temp folders, the data
    in a folder not named digit-recognizer, and no PYTHONPATH: the script must carry the package. nproc=2:
    the two-GPU mode on the CPU, the script started again under torchrun, two ranks training whole nets."""
    inputs, working = tmp_path / "kaggle" / "input", tmp_path / "kaggle" / "working"
    (inputs / "mnist-copy").mkdir(parents=True)
    working.mkdir()
    for name in competition.FILES:  # the demo set without its demo marker stands in for the competition data
        shutil.copy(demo_dir / name, inputs / "mnist-copy" / name)
    tiny = config.load(None, {"epochs": 1, "folds": 2, "limit": 200, "batch_size": 64, "progress": False})
    built = kernel.build(tmp_path / "kernel", tiny, "someone/digitrec", nproc=nproc)
    scratch = tmp_path / "tmp"  # where the script's mkdtemp scratch folders go
    scratch.mkdir()
    env = clean_env(tmp_path, KAGGLE_KERNEL_RUN_TYPE="Batch", DIGITREC_KAGGLE_INPUT=str(inputs),
                    DIGITREC_KAGGLE_WORKING=str(working), TMPDIR=str(scratch))
    env.pop("PYTHONPATH")
    done = subprocess.run([sys.executable, str(built / kernel.SCRIPT)], cwd=working, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    threads = max(1, (os.cpu_count() or 1) // (nproc or 1))  # the cores shared out among the ranks
    assert f"device: cpu ({threads} threads)" in output
    if nproc:
        assert "digitrec: 2 processes under torchrun" in output and "2 processes, whole nets per rank" in output
    where = next(line for line in done.stdout.splitlines() if line.startswith("digitrec from "))
    assert str(ROOT / "src") not in where and "digitrec-" in where  # the carried copy, not the checkout
    assert f"data {inputs / 'mnist-copy'}" in where
    submission = pd.read_csv(working / "submission.csv")
    test_rows = len(pd.read_csv(demo_dir / "test.csv", usecols=[0]))
    assert list(submission.columns) == ["ImageId", "Label"] and len(submission) == test_rows
    assert submission["ImageId"].tolist() == list(range(1, test_rows + 1)) and submission["Label"].between(0, 9).all()
    run, = (working / "runs").iterdir()
    assert (run / "metrics.json").is_file()
    assert sorted(p.name for p in working.iterdir()) == ["runs", "submission.csv", "submissions"]
    assert not (tmp_path / "input").exists()  # the data cache went to the script's scratch folder
    # one cache for every rank: the first process's scratch, so rank 1 reads what rank 0 parsed
    assert len([p for p in scratch.iterdir() if (p / "input" / ".cache").is_dir()]) == 1
