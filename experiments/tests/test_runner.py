"""The runner: well-formed records, resumption after a lost file or a crash, shared baselines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rdrop_experiments import ConfigError, plan_runs, run_experiment
from rdrop_experiments.registry import get_experiment
from rdrop_experiments.storage import RecordLock, data_hash, load_results

FIELDS = {"experiment", "method", "seed", "metric", "value", "config", "curves",
          "wall_time_s", "versions", "command", "key", "pair_key"}


def test_records_are_well_formed(tmp_path, calls):
    recs = run_experiment("toy", {}, out=tmp_path, progress=False)
    assert len(recs) == 4 and len(calls) == 4
    for r in recs:
        assert set(r) >= FIELDS
        assert r["method"] in ("baseline", "rdrop") and r["metric"] == "accuracy"
        assert 0.0 <= r["value"] <= 1.0
        assert r["versions"]["torch"]
    assert sorted((r["method"], r["seed"]) for r in recs) == [
        ("baseline", 0), ("baseline", 1), ("rdrop", 0), ("rdrop", 1)]


def test_rerun_skips_finished_and_redoes_missing(tmp_path, calls):
    recs = run_experiment("toy", ["seeds=2"], out=tmp_path, progress=False)
    assert len(calls) == 4
    victim = next(r for r in recs if r["method"] == "rdrop" and r["seed"] == 1)
    (tmp_path / "toy" / victim["_path"].split("/")[-1]).unlink()
    stale = tmp_path / "toy" / ".partial.json.tmp"  # a write cut off by a kill
    stale.write_text("{")
    killed = tmp_path / "toy" / f".{victim['_path'].split('/')[-1]}.x1y2.tmp"
    killed.write_text("{")
    calls.clear()
    recs2 = run_experiment("toy", ["seeds=2"], out=tmp_path, progress=False)
    assert calls == [("rdrop", 1, 1.0)]
    assert len(recs2) == 4
    assert not stale.exists() and not killed.exists()
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == sorted(
        Path(r["_path"]).name for r in recs2)  # no temp or lock files left


def test_crash_mid_run_keeps_finished_runs(tmp_path, calls, fail_seeds):
    fail_seeds.append(1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment("toy", ["seeds=3"], out=tmp_path, progress=False)
    done = load_results(tmp_path)
    assert {(r["method"], r["seed"]) for r in done} == {("baseline", 0), ("rdrop", 0)}
    fail_seeds.clear()
    calls.clear()
    recs = run_experiment("toy", ["seeds=3"], out=tmp_path, progress=False)  # the same command
    assert calls == [("baseline", 1, 1.0), ("rdrop", 1, 1.0), ("baseline", 2, 1.0),
                     ("rdrop", 2, 1.0)]
    assert len(recs) == 6
    for r in recs:
        with open(r["_path"]) as f:
            assert json.load(f)["seed"] in (0, 1, 2)


def test_sweep_shares_baseline(tmp_path, calls):
    recs = run_experiment("toy-alpha", {"seeds": 2}, out=tmp_path, progress=False)
    runs = sorted((m, s, a if m == "rdrop" else None) for m, s, a in calls)
    assert runs == [("baseline", 0, None), ("baseline", 1, None), ("rdrop", 0, 0.5),
                    ("rdrop", 0, 2.0), ("rdrop", 1, 0.5), ("rdrop", 1, 2.0)]
    assert len(recs) == 6
    calls.clear()
    run_experiment("toy-alpha", {"seeds": 2}, out=tmp_path, progress=False)
    assert calls == []


def test_quick_variant_and_unknown_variant(tmp_path, calls):
    recs = run_experiment("toy", {}, out=tmp_path, variant="quick", progress=False)
    assert all(r["variant"] == "quick" and r["config"]["max_steps"] == 2 for r in recs)
    assert recs[0]["command"] == "rdrop run toy --quick"
    from rdrop_experiments import ConfigError

    with pytest.raises(ConfigError, match="no variant"):
        run_experiment("toy", {}, out=tmp_path, variant="huge", progress=False)
    with pytest.raises(ConfigError, match="unknown experiment"):
        run_experiment("toyy", {}, out=tmp_path, progress=False)


def test_records_name_their_code_and_data(tmp_path, calls, toy_xy):
    recs = run_experiment("toy", {"seeds": 2}, out=tmp_path, progress=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    x, y = toy_xy
    for r in recs:
        assert r["git_commit"] == head and isinstance(r["git_dirty"], bool)
        assert r["data_hash"] == data_hash(x, y)


def _planned_paths(tmp_path, seeds=2):
    return [r.path for r in plan_runs(get_experiment("toy"), tmp_path, {"seeds": seeds})]


def test_a_record_locked_by_a_live_process_is_skipped(tmp_path, calls, capsys):
    first = _planned_paths(tmp_path)[0]  # baseline seed 0
    first.parent.mkdir(parents=True)
    lock = RecordLock(first)
    assert lock.acquire()  # held by this (live) process, as by a second `rdrop run`
    recs = run_experiment("toy", {"seeds": 2}, out=tmp_path, progress=False)
    assert sorted(calls) == [("baseline", 1, 1.0), ("rdrop", 0, 1.0), ("rdrop", 1, 1.0)]
    assert len(recs) == 3 and lock.path.exists()
    assert "is being run by another process" in capsys.readouterr().err
    lock.release()
    calls.clear()
    run_experiment("toy", {"seeds": 2}, out=tmp_path, progress=False)
    assert calls == [("baseline", 0, 1.0)]


def test_a_stale_lock_of_a_dead_process_is_broken(tmp_path, calls):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first = _planned_paths(tmp_path)[0]
    first.parent.mkdir(parents=True)
    Path(f"{first}.lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    (first.parent / f".{first.name}.abcd.tmp").write_text("{")  # its cut-off write
    recs = run_experiment("toy", {"seeds": 2}, out=tmp_path, progress=False)
    assert len(calls) == 4 and len(recs) == 4
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(
        Path(r["_path"]).name for r in recs)


def test_record_lock_is_exclusive():
    import tempfile

    record = Path(tempfile.mkdtemp()) / "r.json"
    a, b = RecordLock(record), RecordLock(record)
    assert a.acquire() and not b.acquire()
    assert a.owner() == (socket.gethostname(), os.getpid()) and not a.is_stale()
    a.release()
    assert not a.path.exists() and b.acquire()
    b.release()


def test_two_runners_on_one_folder_run_each_record_once(tmp_path, calls):
    errors = []

    def runner():
        try:
            run_experiment("toy", {"seeds": 3, "sleep": 0.3}, out=tmp_path, progress=False)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 6  # each record once
    assert len(load_results(tmp_path)) == 6


def test_protocol_fields_reach_the_top_of_the_record(tmp_path, calls):
    from rdrop_experiments.registry import RunResult

    toy = get_experiment("toy")
    recipe = toy.recipe

    def with_protocol(cfg, arm):
        result = recipe(cfg, arm)
        extra = {"selection": "best_valid", "best_step": 3, "sample_passes": 96, "other": 1}
        return RunResult(result.metrics, result.curves, extra)

    object.__setattr__(toy, "recipe", with_protocol)
    try:
        recs = run_experiment("toy", {"seeds": 1}, out=tmp_path, progress=False)
    finally:
        object.__setattr__(toy, "recipe", recipe)
    for r in recs:
        assert (r["selection"], r["best_step"], r["sample_passes"]) == ("best_valid", 3, 96)
        assert "other" not in r and r["extra"]["other"] == 1


def test_a_grid_key_the_user_set_is_refused_and_nothing_trains(tmp_path, calls):
    with pytest.raises(ConfigError) as info:
        run_experiment("toy-alpha", {"alpha": 0.7, "seeds": 1}, out=tmp_path, progress=False)
    assert "toy-alpha runs a grid of 2 settings that sets alpha per setting, so your " \
           "alpha=0.7 would be replaced" in str(info.value)
    assert str(info.value).endswith("add --no-grid: rdrop run toy-alpha --no-grid alpha=0.7 "
                                    "seeds=1")
    assert calls == [] and not any(tmp_path.iterdir())


def test_no_grid_runs_the_one_setting_the_user_asked_for(tmp_path, calls):
    recs = run_experiment("toy-alpha", {"alpha": 0.7, "seeds": 1}, grid=False, out=tmp_path,
                          progress=False)
    assert sorted(calls) == [("baseline", 0, 0.7), ("rdrop", 0, 0.7)]
    assert {r["setting"] for r in recs} == {"alpha=0.7"}
    rdrop = next(r for r in recs if r["method"] == "rdrop")
    assert rdrop["config"]["alpha"] == 0.7 and rdrop["overrides"] == {"alpha": "0.7",
                                                                       "seeds": "1"}
    assert rdrop["command"] == "rdrop run toy-alpha --no-grid alpha=0.7 seeds=1"


def test_no_grid_labels_each_start_step_as_its_own_point(tmp_path):
    # two fixed start steps of one arm (the start-point search) must not share a point label,
    # or the verdict would average their records as one grid point
    image = get_experiment("image")
    labels = {step: plan_runs(image, tmp_path, {"alpha": 0.3, "methods": ("rdrop",),
                                                "start_step": step, "seeds": 1},
                              grid=False)[0].setting for step in (80, 96)}
    assert labels == {80: "methods=rdrop,alpha=0.3,start_step=80",
                      96: "methods=rdrop,alpha=0.3,start_step=96"}


def test_methods_picks_the_arms_of_a_grid(tmp_path, calls):
    recs = run_experiment("toy-arms", {"methods": ("rdrop",), "seeds": 1}, out=tmp_path,
                          progress=False)
    assert sorted(calls) == [("rdrop", 0, 0.5), ("rdrop", 0, 2.0)]  # no baseline setting ran
    assert sorted(r["setting"] for r in recs) == ["methods=rdrop,alpha=0.5",
                                                  "methods=rdrop,alpha=2.0"]
    with pytest.raises(ConfigError, match="toy-arms's grid runs no setting of "
                                          "methods=rdrop_alpha0; its arms: baseline, rdrop"):
        plan_runs(get_experiment("toy-arms"), tmp_path, {"methods": ("rdrop_alpha0",)})
    # Without methods=, every arm of the grid runs (the baseline settings included).
    assert len(plan_runs(get_experiment("toy-arms"), tmp_path, {"seeds": 1})) == 4


def test_the_issue_example_plans_only_what_the_user_asked(tmp_path):
    image = get_experiment("image")
    with pytest.raises(ConfigError, match=r"your alpha=0\.6 would be replaced"):
        plan_runs(image, tmp_path, {"alpha": 0.6, "methods": ("rdrop",)})
    plan = plan_runs(image, tmp_path, {"alpha": 0.6, "methods": ("rdrop",)}, grid=False)
    assert {(r.method, r.config.alpha, r.setting) for r in plan} == {
        ("rdrop", 0.6, "methods=rdrop,alpha=0.6")}
    picked = plan_runs(image, tmp_path, {"methods": ("rdrop",)})
    assert {r.method for r in picked} == {"rdrop"}
    # the registered alphas: R-Drop's grid (0.3, 1.0) and the plateau arm's (1.0, 10.0)
    from rdrop_experiments.protocol import PLATEAU_ALPHAS

    assert sorted({r.config.alpha for r in picked}) == sorted({0.3, 1.0, *PLATEAU_ALPHAS})


def test_the_cli_plans_and_checks_each_experiment_once(tmp_path, calls, monkeypatch):
    from rdrop_experiments import runner
    from rdrop_experiments.cli import main

    counts = {"plan_runs": 0, "preflight": 0}
    for name in counts:
        original = getattr(runner, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(runner, name, counted)
    assert main(["run", "toy", "toy-alpha", "seeds=1", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert counts == {"plan_runs": 2, "preflight": 2} and len(calls) == 2 + 3


def test_a_lock_is_never_seen_empty_and_broken_by_a_racing_thread(tmp_path):
    # The lock file used to be created empty and filled afterwards: a thread (or process) that
    # looked in between read no owner, took the lock for stale, broke it, and ran the record
    # a second time (seen as a flaky duplicate in the two-runner test above).
    record = tmp_path / "rdrop-seed0-abc.json"
    rounds, width = 200, 6
    barrier = threading.Barrier(width)
    wins = [[] for _ in range(rounds)]

    def contend(i):
        for r in range(rounds):
            lock = RecordLock(record)
            barrier.wait()
            if lock.acquire():
                wins[r].append(i)
            barrier.wait()  # everyone has tried this round
            lock.release()
            barrier.wait()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(width)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(w) for w in wins] == [1] * rounds
    assert list(tmp_path.iterdir()) == []  # no lock and no filled temporary left behind


def test_a_resumed_run_counts_the_training_time_before_the_kill(tmp_path, calls):
    from rdrop_experiments.resume import save_checkpoint
    from rdrop_experiments.runner import checkpoint_path

    plan = plan_runs(get_experiment("toy"), tmp_path, {"seeds": 1})
    victim = next(run for run in plan if run.method == "rdrop")
    # what a killed process left: 100 s of training loop (the toy recipe trains afresh)
    save_checkpoint(checkpoint_path(victim.path), {"loop": {"elapsed": 100.0}})
    recs = run_experiment("toy", ["seeds=1"], out=tmp_path, progress=False)
    walls = {r["method"]: r["wall_time_s"] for r in recs}
    assert 100.0 <= walls["rdrop"] < 100.0 + 60.0
    assert walls["baseline"] < 60.0  # no checkpoint: this process's time only
    assert not checkpoint_path(victim.path).exists()
