"""Shared fixtures. Tests make their own small data; those that need the real archive skip without it.

Every CLI run happens in a temp working directory that is also its project root (DIGITREC_ROOT), so
input/, runs/ and submissions/ of the checkout are never touched, and with KAGGLE_CONFIG_DIR in a temp
dir so no real credentials are ever read. In-process tests get DIGITREC_ROOT=".": the project is
whichever folder a test has changed into.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
REAL_ZIP = ROOT.parent / "shared" / "data" / "digit-recognizer.zip"


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: our package importable, tmp its project root, no Kaggle
    credentials; one thread per process would be too slow, so torch keeps its default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    config_dir = tmp / "kaggle-config"
    config_dir.mkdir(exist_ok=True)
    env.update(PYTHONPATH=str(SRC), KAGGLE_CONFIG_DIR=str(config_dir), PYTHONUNBUFFERED="1", DIGITREC_ROOT=str(tmp))
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`python -m digitrec ARGS` in cwd; returns the completed process (check .returncode yourself)."""
    return subprocess.run([sys.executable, "-m", "digitrec", *args], cwd=cwd, env=clean_env(cwd, **env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True, scope="session")
def _project_is_the_current_folder():
    """Relative paths (input/.cache, runs/, submissions/) land where a test has changed into, never in the
    checkout's own folders."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIGITREC_ROOT", ".")
        yield


@pytest.fixture(autouse=True)
def _isolated_kaggle_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(key)
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir(exist_ok=True)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the embedded demo set's three CSVs (scikit-learn digits in the competition format)."""
    from digitrec.data import write_demo

    return write_demo(tmp_path_factory.mktemp("demo") / "demo-digits")


@pytest.fixture(scope="session")
def real_zip() -> Path:
    if not REAL_ZIP.is_file():
        pytest.skip(f"the real archive is absent ({REAL_ZIP})")
    return REAL_ZIP


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty project working directory (the CLI writes input/, runs/, submissions/ here)."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def train_small_run(demo_dir: Path, work: Path, name: str, **settings) -> tuple:
    """A small run of configs/default.yaml on the demo set, trained in this process with one thread, its
    runs/ and submissions/ in `work`: (its config, pipeline.train's result). torch's thread count is put
    back after, since later tests compare float sums made with the default."""
    import torch

    from digitrec import config, pipeline

    cfg = config.load(ROOT / "configs" / "default.yaml", {
        "data": str(demo_dir), "progress": False, "threads": 1, "name": name, "runs_dir": str(work / "runs"),
        "submissions_dir": str(work / "submissions"), **settings})
    threads = torch.get_num_threads()
    try:
        return cfg, pipeline.train(cfg)
    finally:
        torch.set_num_threads(threads)
