"""What a net leaves behind and what it holds while it trains: done.json describes the whole net over every sitting
a kill split it into (its seconds, how each epoch was trained), and a pseudo-label round builds a student's data
only when the student's group trains, so memory grows with the nets of a group, not with a round's students."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import train_small_run
from digitrec import fileio, pseudo, stacked

SMALL = dict(limit=120, folds=2, epochs=4, width=8, tta=False)


def _killed_at_resume_write(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    """Make the resume point after `writes` of them raise, as a kill between two epochs would stop the run."""
    real = fileio.write_torch
    count = {"resume": 0}

    def write_torch(path: Path, obj) -> None:
        if Path(path).name == "resume.pt":
            count["resume"] += 1
            if count["resume"] > writes:
                raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(fileio, "write_torch", write_torch)


def test_a_net_trained_stacked_then_alone_records_every_sitting(demo_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        _killed_at_resume_write(patch, writes=6)  # both nets of the stacked group finish 3 epochs, then the kill
        with pytest.raises(KeyboardInterrupt):
            train_small_run(demo_dir, tmp_path, "sittings", nets_per_step=2, device="cpu", **SMALL)
    _, result = train_small_run(demo_dir, tmp_path, "sittings", nets_per_step=1, device="cpu", **SMALL)
    for fold in range(2):
        net = result.run_dir / f"fold{fold}" / "m0"
        done, history = fileio.read_json(net / "done.json"), fileio.read_json(net / "history.json")
        assert done["epochs"] == 4 and done["sittings"] == 2
        assert done["nets_per_step"] == [2, 2, 2, 1]  # three epochs stacked, the last alone
        assert done["seconds"] >= sum(record["seconds"] for record in history)  # every sitting, not the last


def test_a_single_net_resumed_counts_the_seconds_of_every_sitting(demo_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        _killed_at_resume_write(patch, writes=2)  # fold 0 finishes 2 epochs, then the kill
        with pytest.raises(KeyboardInterrupt):
            train_small_run(demo_dir, tmp_path, "alone", **SMALL)
    _, result = train_small_run(demo_dir, tmp_path, "alone", **SMALL)
    net = result.run_dir / "fold0" / "m0"
    done, history = fileio.read_json(net / "done.json"), fileio.read_json(net / "history.json")
    assert done["nets_per_step"] == [1, 1, 1, 1] and done["sittings"] == 2
    assert [record.get("resumed", False) for record in history] == [False, False, True, False]
    assert done["seconds"] >= sum(record["seconds"] for record in history)
    untouched = fileio.read_json(result.run_dir / "fold1" / "m0" / "done.json")
    assert untouched["sittings"] == 1


def test_a_students_data_is_built_when_its_group_trains(demo_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    build, train_group = pseudo.student_data, stacked.train_group

    def recorded_build(*args):
        events.append("build")
        return build(*args)

    def recorded_group(jobs, device):
        events.append(f"train {len(jobs)}")
        return train_group(jobs, device)

    monkeypatch.setattr(pseudo, "student_data", recorded_build)
    monkeypatch.setattr(stacked, "train_group", recorded_group)
    train_small_run(demo_dir, tmp_path, "students", nets_per_step=2, device="cpu", pseudo_rounds=1,
                    **{**SMALL, "folds": 4, "limit": 200, "epochs": 1})
    # round 0: two groups of two teachers; round 1: two groups of two students, each built as its group starts
    assert events == ["train 2", "train 2", "train 2", "build", "build", "train 2", "build", "build"]
