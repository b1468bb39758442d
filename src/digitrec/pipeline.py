"""The run: data -> folds -> one engine call per fold -> OOF metrics -> fold-averaged submission.

Resumable at fold granularity here (finished folds are skipped) and at epoch granularity in the engine.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import config as config_mod
from . import data as data_mod
from . import engine, fileio, runs
from .config import Config
from .errors import UserError
from .folds import make_folds, stratified_subset
from .metrics import classification_metrics
from .models import load_weights, model_from_config
from .submission import make_submission, write_submission


def log(message: str) -> None:
    tqdm.write(message)


@dataclass
class RunResult:
    run_dir: Path
    submission: Path | None
    metrics: dict


def _prepare_run(cfg: Config, dataset: data_mod.Dataset) -> tuple[Path, np.ndarray, np.ndarray]:
    """The run folder (a resumed one when the same training was interrupted) with its config, data
    record and folds written."""
    rows = stratified_subset(dataset.train_labels, cfg.limit, cfg.seed)
    fold_of = make_folds(dataset.train_labels[rows], cfg.folds, cfg.seed)
    run_dir = runs.find_resumable(cfg)
    if run_dir is not None:
        saved = np.load(run_dir / "folds.npz")
        same_data = fileio.read_json(run_dir / "data.json")["content_hash"] == dataset.content_hash
        if same_data and np.array_equal(saved["rows"], rows) and np.array_equal(saved["fold_of"], fold_of):
            log(f"resuming run {run_dir}")
            fileio.write_text(run_dir / "config.yaml", cfg.to_yaml())
            return run_dir, rows, fold_of
    run_dir = runs.new_run_dir(cfg)
    fileio.write_json(run_dir / "data.json", {"source": dataset.source, "demo": dataset.demo,
                                              "content_hash": dataset.content_hash,
                                              "train_rows": len(rows), "test_rows": len(dataset.test_images)})
    fileio.write_npz(run_dir / "folds.npz", rows=rows, fold_of=fold_of)
    # config.yaml last: a folder killed before it is no run at all (runs.list_runs ignores it)
    fileio.write_text(run_dir / "config.yaml", cfg.to_yaml())
    log(f"run folder: {run_dir}")
    return run_dir, rows, fold_of


def _on_device(dataset: data_mod.Dataset, rows: np.ndarray, device: torch.device) -> engine.FoldData:
    """The run's images, labels and test images on the device, copied once for all folds."""
    no_rows = torch.zeros(0, dtype=torch.long)
    return engine.FoldData(torch.from_numpy(dataset.train_images[rows]).to(device),
                           torch.from_numpy(dataset.train_labels[rows]).to(device), no_rows, no_rows,
                           torch.from_numpy(dataset.test_images).to(device))


def _fold_data(tensors: engine.FoldData, fold_of: np.ndarray, fold: int) -> engine.FoldData:
    return dataclasses.replace(tensors, train_idx=torch.from_numpy(np.flatnonzero(fold_of != fold)),
                               val_idx=torch.from_numpy(np.flatnonzero(fold_of == fold)))


def folds_to_train(cfg: Config) -> list[int]:
    return [cfg.fold] if cfg.fold is not None else list(range(cfg.folds))


def _save_fold(fold_dir: Path, out: engine.FoldOutput, seconds: float) -> None:
    fileio.write_npy(fold_dir / "val_probs.npy", out.val_probs)
    fileio.write_npy(fold_dir / "test_probs.npy", out.test_probs)
    fileio.write_json(fold_dir / "history.json", out.history)
    fileio.write_json(fold_dir / "done.json", {"seconds": seconds, "epochs": len(out.history)})
    (fold_dir / "resume.pt").unlink(missing_ok=True)


def train(cfg: Config) -> RunResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = engine.preflight(cfg)  # settings, then data, are checked before anything is written
    dataset = data_mod.load_data(cfg.data, announce=log)
    run_dir, rows, fold_of = _prepare_run(cfg, dataset)
    log(f"device: {device} ({torch.get_num_threads()} threads)  model: {cfg.model}  "
        f"BS {cfg.batch_size} x ACCUM {cfg.accum} = {cfg.effective_batch}  lr {cfg.scaled_lr:.3g}  epochs {cfg.epochs}")
    tensors = _on_device(dataset, rows, device)
    for fold in folds_to_train(cfg):
        fold_dir = run_dir / f"fold{fold}"
        if (fold_dir / "done.json").is_file():
            log(f"fold {fold}: already finished, skipped")
            continue
        started = time.perf_counter()
        out = engine.train_fold(cfg, _fold_data(tensors, fold_of, fold), fold, fold_dir, device, log)
        _save_fold(fold_dir, out, time.perf_counter() - started)
        fold_acc = float((out.val_probs.argmax(1) == dataset.train_labels[rows][fold_of == fold]).mean())
        log(f"fold {fold}: val accuracy {fold_acc:.4%} in {time.perf_counter() - started:.0f}s")
    return finish(run_dir, cfg, dataset.train_labels[rows], fold_of, demo=dataset.demo)


def finish(run_dir: Path, cfg: Config, labels: np.ndarray, fold_of: np.ndarray, demo: bool) -> RunResult:
    """From the finished folds' probabilities: OOF probabilities, metrics.json, and the submission."""
    done = [k for k in range(cfg.folds) if (run_dir / f"fold{k}" / "done.json").is_file()]
    if not done:
        raise UserError(f"{run_dir}: no finished fold to build a submission from")
    oof = np.full((len(labels), 10), np.nan, dtype=np.float32)
    per_fold = {}
    for k in done:
        val = np.load(run_dir / f"fold{k}" / "val_probs.npy")
        oof[fold_of == k] = val
        per_fold[str(k)] = float((val.argmax(1) == labels[fold_of == k]).mean())
    test = np.stack([np.load(run_dir / f"fold{k}" / "test_probs.npy") for k in done])
    covered = np.isin(fold_of, done)
    metrics = {"folds_done": done, "folds_total": cfg.folds, "fold_accuracy": per_fold,
               "oof": classification_metrics(labels[covered], oof[covered]), "demo_data": demo}
    fileio.write_npy(run_dir / "oof_probs.npy", oof)
    fileio.write_npy(run_dir / "test_probs.npy", test)

    submissions = Path(cfg.submissions_dir)
    sub_path = submissions / f"{run_dir.name}{'.DEMO' if demo else ''}.csv"
    sha = write_submission(make_submission(test), sub_path, expected_rows=test.shape[1])
    fileio.write_json(sub_path.with_suffix(".json"), {
        "run": str(run_dir), "demo_data": demo, "folds": done, "oof_accuracy": metrics["oof"]["accuracy"],
        "sha256": sha})
    working = runs.kaggle_working()
    if working is not None:  # a Kaggle kernel's output is /kaggle/working/submission.csv
        fileio.write_bytes(working / "submission.csv", sub_path.read_bytes())
    metrics["submission"] = str(sub_path)
    fileio.write_json(run_dir / "metrics.json", metrics)
    oof_acc = metrics["oof"]["accuracy"]
    log(f"OOF CV accuracy {oof_acc:.4%} over {metrics['oof']['rows']} rows ({len(done)}/{cfg.folds} folds), "
        f"log-loss {metrics['oof']['log_loss']:.4f}")
    return RunResult(run_dir, sub_path, metrics)


@dataclass
class SavedRun:
    """A finished or interrupted run read back: its config, the data it was trained on, its folds."""

    run_dir: Path
    cfg: Config
    record: dict  # data.json
    dataset: data_mod.Dataset
    rows: np.ndarray
    fold_of: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.train_labels[self.rows]


def open_run(run_dir: Path, overrides: dict | None = None) -> SavedRun:
    """Read a run folder back, checking that the data found now is the data it was trained on."""
    cfg = config_mod.load(run_dir / "config.yaml", overrides)
    record = fileio.read_json(run_dir / "data.json")
    dataset = data_mod.load_data(cfg.data, announce=log)
    if dataset.content_hash != record["content_hash"]:
        raise UserError(f"{run_dir}: was trained on other data than {dataset.source} (content hash differs)")
    saved = np.load(run_dir / "folds.npz")
    return SavedRun(run_dir, cfg, record, dataset, saved["rows"], saved["fold_of"])


def predict(run: str | None, runs_dir: str = "runs", tta: bool | None = None) -> RunResult:
    """Rebuild a run's fold predictions and submission from its saved weights."""
    saved = open_run(runs.resolve_run(run, runs_dir), {"tta": tta} if tta is not None else None)
    cfg, run_dir = saved.cfg, saved.run_dir
    device = engine.select_device(cfg.device)
    tensors = _on_device(saved.dataset, saved.rows, device)
    for k in range(cfg.folds):
        fold_dir = run_dir / f"fold{k}"
        if not (fold_dir / "done.json").is_file():
            continue
        model = load_weights(model_from_config(cfg), fold_dir / "weights.pt").to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        fold = _fold_data(tensors, saved.fold_of, k)
        val_images = fold.images[fold.val_idx.to(device)]
        fileio.write_npy(fold_dir / "val_probs.npy", engine.predict_proba(model, val_images, cfg, device, cfg.tta))
        fileio.write_npy(fold_dir / "test_probs.npy", engine.predict_proba(model, fold.test_images, cfg, device, cfg.tta))
        log(f"fold {k}: predicted from {fold_dir / 'weights.pt'}")
    return finish(run_dir, cfg, saved.labels, saved.fold_of, demo=saved.dataset.demo)
