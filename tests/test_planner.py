"""BUDGET=: the plan that fits the time there is, chosen from step rates measured here (injected in these tests, with
the clock: nothing here is timed); kept to as the run trains, by shedding the last member whole; resumed as planned;
refused in one line when too small."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, train_small_run
from digitrec import budget, cli, config, engine, fileio, planner
from digitrec.nets import Unit
from digitrec.planner import Rates, Work
from digitrec.submission import read_submission

FULL = Work(rows=42000, folds=5, folds_trained=list(range(5)), test_rows=28000)
# images/s by nets per step, and of prediction: a GPU where stacking pays, and a 2-core CPU where it does not
GPU = {"gn_cnn w32": Rates({1: 9000, 2: 17000, 4: 30000, 8: 52000}, 120000),
       "gn_m5 w16": Rates({1: 8000, 2: 15000, 4: 26000, 8: 45000}, 100000),
       "gn_m7 w24": Rates({1: 7000, 2: 13000, 4: 22000, 8: 38000}, 90000),
       "gn_cnn w48": Rates({1: 8500, 2: 16000, 4: 28000, 8: 48000}, 110000)}
CPU = {"gn_cnn w32": Rates({1: 2200, 2: 1100}, 7000), "gn_m5 w16": Rates({1: 2000, 2: 1000}, 6000),
       "gn_m7 w24": Rates({1: 1700, 2: 850}, 5000), "gn_cnn w48": Rates({1: 1100, 2: 550}, 3500)}


def _plan(rates: dict, budget: str, spent_s: float = 10.0) -> planner.Plan:
    base = config.load(ROOT / "configs" / "default.yaml", {"budget": budget})
    return planner.choose(base, planner.ladder(base), rates, FULL, spent_s)


def _fits(plan: planner.Plan, budget_s: float, spent_s: float = 10.0) -> bool:
    return spent_s + plan.estimated_s + planner.FINISH_S <= budget_s * planner.PLAN_FILL


def test_a_fast_gpu_and_a_slow_cpu_get_different_plans_each_within_budget() -> None:
    gpu, cpu = _plan(GPU, "30m"), _plan(CPU, "30m")
    assert _fits(gpu, 1800) and _fits(cpu, 1800)
    assert gpu.nets_per_step == 8 and cpu.nets_per_step == 1  # stacked only where stacking measured faster
    assert len(gpu.members) == 4 and gpu.members[0]["epochs"] == 40  # the whole ladder at the top rung
    assert len(cpu.members) == 1 and cpu.members[0]["epochs"] < gpu.members[0]["epochs"]
    assert cpu.expected_errors > gpu.expected_errors
    more = _plan(CPU, "2h")
    assert _fits(more, 7200) and more.expected_errors < cpu.expected_errors
    assert (len(more.members), more.members[0]["epochs"]) > (len(cpu.members), cpu.members[0]["epochs"])
    # a CPU on which two nets a step measured faster stacks them
    stacking_cpu = {name: Rates({1: r.train[1], 2: r.train[1] * 1.3}, r.predict) for name, r in CPU.items()}
    assert _plan(stacking_cpu, "30m").nets_per_step == 2


def test_plans_the_evidence_model_cannot_tell_apart_go_to_the_one_that_fills_the_budget() -> None:
    # rates a 2-core CPU measured: one gn_cnn at the top rung, 40 epochs, fits in 57% of two hours (88.2 errors by
    # the model); two layouts at fewer epochs fill it for about 2% more
    measured = {"gn_cnn w32": Rates({1: 1857}, 7573), "gn_m5 w16": Rates({1: 1161}, 4622),
                "gn_m7 w24": Rates({1: 1153}, 4043), "gn_cnn w48": Rates({1: 1044}, 4528)}
    top_rung_alone = planner.expected_errors([planner.MAX_EPOCHS], True, False)
    plan = _plan(measured, "2h", spent_s=66.0)
    assert _fits(plan, 7200, spent_s=66.0) and plan.estimated_s > 0.85 * 7200
    assert len(plan.members) == 2 and plan.tta and not plan.refit
    assert top_rung_alone <= plan.expected_errors <= top_rung_alone * (1 + planner.EVIDENCE_TOLERANCE)


def test_every_net_of_the_plan_is_listed_with_its_estimate() -> None:
    plan = _plan(GPU, "2h")
    assert [net["net"] for net in plan.nets[:5]] == [f"fold {k} member 0" for k in range(5)]
    assert sum(net["estimated_s"] for net in plan.nets) == pytest.approx(plan.estimated_s)
    text = planner.table(plan, 7200, 10.0)
    assert "fold 4 member 3" in text and "of the budget's 2 h 00 min" in text
    cfg = plan.config(config.load(None, {"budget": "2h"}))
    assert cfg.members == plan.members and cfg.nets_per_step == plan.nets_per_step and cfg.tta == plan.tta


def test_a_budget_too_small_names_the_smallest_that_fits() -> None:
    with pytest.raises(planner.UserError, match=r"^BUDGET=2m is too small here: one gn_cnn w32 net per fold at 4 "
                                                r"epochs needs BUDGET=\d+m or more on this machine$"):
        _plan(CPU, "2m")
    need = int(str(pytest.raises(planner.UserError, _plan, CPU, "2m").value).split("BUDGET=")[2].split("m")[0])
    assert _fits(_plan(CPU, f"{need}m"), need * 60)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400)])
def test_budgets_read_as_people_write_them(text: str, seconds: float) -> None:
    assert config.load(None, {"budget": text}).budget_s == seconds


def test_a_bad_budget_is_one_line() -> None:
    with pytest.raises(config.UserError, match=r"^BUDGET \(budget\) must be a time such as 90s, 30m, 2h or 1h30m, "
                                               r"got '30 minutes'$"):
        config.load(None, {"budget": "30 minutes"})
    with pytest.raises(config.UserError, match="^BUDGET plans no pseudo-label rounds"):
        config.load(None, {"budget": "30m", "pseudo_rounds": 1})


# ---------------------------------------------------------------- a budgeted run, end to end (small, in process)

LADDER = [{"model": "gn_cnn", "width": 8}, {"model": "gn_cnn", "width": 16}]
SMALL = dict(limit=120, folds=2, tta=False, members=LADDER, budget="10m")


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The run's clock, moved on by hand, and every layout measured very fast: so every plan is the whole small
    ladder, and what the pace sees is what the test says a net took."""
    now = {"s": 0.0, "per_net": 0.0}
    monkeypatch.setattr(budget, "clock", lambda: now["s"])
    monkeypatch.setattr(planner, "MIN_EPOCHS", 1)
    monkeypatch.setattr(planner, "MAX_EPOCHS", 2)
    monkeypatch.setattr(planner, "measure", lambda cfg, device, data, stacks, ranks: Rates(
        {k: 1e6 for k in stacks}, 1e6))
    train_net = engine.train_net

    def slow_net(*args, **kwargs):
        now["s"] += now["per_net"]
        return train_net(*args, **kwargs)

    monkeypatch.setattr(engine, "train_net", slow_net)
    return now


def test_a_run_that_falls_behind_sheds_its_last_member_whole(demo_dir: Path, tmp_path: Path, fake_time: dict) -> None:
    fake_time["per_net"] = 250.0  # each net takes 250 s of a 600 s budget: member 1 cannot fit after member 0
    cfg, result = train_small_run(demo_dir, tmp_path, "behind", **SMALL)
    run = result.run_dir
    plan = fileio.read_json(run / "plan.json")
    assert [m["width"] for m in plan["members"]] == [8, 16]  # planned: both members
    assert sorted(p.name for p in run.glob("shed-*.json")) == ["shed-m1.json"] + (["shed-refit.json"] if plan["refit"] else [])
    assert not (run / "fold0" / "m1").exists() and not (run / "fold1" / "m1").exists()  # never started
    done = config.load(run / "config.yaml")  # the run as trained: make predict and evaluate read this
    assert [m["width"] for m in done.members] == [8] and not done.refit
    budget = result.metrics["budget"]
    assert budget["planned"]["members"] == 2 and budget["done"]["members"] == 1 and "m1" in budget["shed"]
    assert budget["wall_s"] == 500.0 and budget["wall_fraction_of_budget"] == pytest.approx(500 / 600)
    # an honest OOF over every row, from the member that trained, and a valid submission
    assert result.metrics["oof"]["rows"] == 120 and "members" not in result.metrics
    assert np.isfinite(np.load(run / "oof_probs.npy")).all()
    read_submission(result.submission, expected_rows=fileio.read_json(run / "data.json")["test_rows"])


def test_a_run_a_little_behind_trains_its_last_member_at_fewer_epochs(demo_dir: Path, tmp_path: Path,
                                                                        fake_time: dict,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # an epoch is estimated at 10 s, a net at 20 s; each net takes 150 s, so after member 0 (300 s) member 1's two
    # nets at 2 epochs (300 s at that pace) would end 3 s past the 600 s budget, and at 1 epoch end inside it
    monkeypatch.setattr(planner, "EPOCH_OVERHEAD_S", 10.0)
    monkeypatch.setattr(planner, "NET_OVERHEAD_S", 0.0)
    fake_time["per_net"] = 150.0
    _, result = train_small_run(demo_dir, tmp_path, "shortened", **SMALL)
    run = result.run_dir
    assert [m["epochs"] for m in fileio.read_json(run / "plan.json")["members"]] == [2, 2]
    assert not list(run.glob("shed-*.json"))
    assert fileio.read_json(run / "epochs-m1.json")["epochs"] == 1 and result.metrics["budget"]["shed"] == {}
    # every net of member 1 trained its whole, shorter schedule; config.yaml and metrics.json say so
    for fold in (0, 1):
        assert fileio.read_json(run / f"fold{fold}" / "m0" / "done.json")["epochs"] == 2
        assert fileio.read_json(run / f"fold{fold}" / "m1" / "done.json")["epochs"] == 1
    assert [m["epochs"] for m in config.load(run / "config.yaml").members] == [2, 1]
    rescheduled = result.metrics["budget"]["rescheduled"]["m1"]
    assert (rescheduled["planned"], rescheduled["epochs"]) == (2, 1)
    assert "at 7.50x the estimated pace" in rescheduled["why"]
    assert result.metrics["budget"]["done"]["members"] == 2 and result.metrics["oof"]["rows"] == 120
    assert "m1 rescheduled at the run's pace: 2 -> 1 epochs" in budget.summary(result.metrics["budget"])


def test_a_run_ahead_of_its_pace_gives_its_last_member_more_epochs_once(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # planned: member 0 at 10 epochs, member 1 at 4 (10 s an epoch, 100 and 40 s a net), in a 600 s budget
    units = [Unit(fold, member) for member in (0, 1) for fold in (0, 1)]
    nets = {u: {"epochs": (10, 4)[u.member], "estimated_s": (100.0, 40.0)[u.member], "epoch_s": 10.0} for u in units}
    now = {"s": 0.0}
    monkeypatch.setattr(budget, "clock", lambda: now["s"])
    cfg = config.load(None, {"budget": "10m", "members": LADDER})
    pace = budget.Pace(cfg, tmp_path, nets, [("m0", units[:2]), ("m1", units[2:])])
    for unit in units[:2]:  # member 0's nets take half their estimate
        assert pace.admit([unit])
        now["s"] += 50.0
        fileio.write_json(unit.dir(tmp_path) / "done.json", {})
        pace.finished([unit])
    assert pace.admit([units[2]])
    # at 0.5x, 4 epochs would end the run at 100 + 40 + 3 s: member 1 takes the first member's 10, no more
    assert fileio.read_json(tmp_path / "epochs-m1.json")["epochs"] == 10
    assert [m.get("epochs") for m in pace.kept(cfg).members] == [None, 10]  # member 0 as planned
    # decided once: another rank at another pace, or a later net, leaves it as it is
    other = budget.Pace(cfg, tmp_path, nets, [("m0", units[:2]), ("m1", units[2:])])
    other.spent = {"estimated": 100.0, "actual": 500.0}
    assert other.admit([units[3]]) and fileio.read_json(tmp_path / "epochs-m1.json")["epochs"] == 10


def test_a_run_on_pace_trains_its_whole_plan(demo_dir: Path, tmp_path: Path, fake_time: dict) -> None:
    fake_time["per_net"] = 1.0
    _, result = train_small_run(demo_dir, tmp_path, "on-pace", **SMALL)
    assert not list(result.run_dir.glob("shed-*.json")) and result.metrics["budget"]["shed"] == {}
    assert len(result.metrics["members"]) == 2 and result.metrics["budget"]["done"]["members"] == 2


def test_a_killed_budgeted_run_resumes_its_plan(demo_dir: Path, tmp_path: Path, fake_time: dict,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    train_net = engine.train_net

    def killed_after_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return train_net(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train_net", killed_after_one)
        with pytest.raises(KeyboardInterrupt):
            train_small_run(demo_dir, tmp_path, "killed", **SMALL)
    (run,) = (tmp_path / "runs").iterdir()
    planned = fileio.read_json(run / "plan.json")
    # measured again now, the rates would make another plan (slow: one member); the rerun resumes the first
    monkeypatch.setattr(planner, "measure", lambda cfg, device, data, stacks, ranks: Rates({1: 300.0}, 300.0))
    _, result = train_small_run(demo_dir, tmp_path, "killed", **SMALL)
    assert result.run_dir == run and fileio.read_json(run / "plan.json") == planned
    assert [m["width"] for m in config.load(run / "config.yaml").members] == [m["width"] for m in planned["members"]]
    assert (run / "fold0" / "m0" / "done.json").is_file() and result.metrics["oof"]["rows"] == 120


def test_too_small_a_budget_is_one_line_exit_2_and_writes_no_run(demo_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(planner, "measure", lambda cfg, device, data, stacks, ranks: Rates({1: 50.0}, 500.0))
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--config", str(ROOT / "configs" / "default.yaml"), f"DATA={demo_dir}", "BUDGET=20s",
                     "progress=false", "threads=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: BUDGET=20s is too small here: one gn_cnn w32 net per fold")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "submissions").exists()
