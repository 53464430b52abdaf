"""The runner: well-formed records, resumption after a lost file or a crash, shared baselines."""

from __future__ import annotations

import json

import pytest

from rdrop_experiments import run_experiment
from rdrop_experiments.io import load_results

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
    (tmp_path / "toy" / ".partial.json.tmp").write_text("{")  # a write cut off by a kill
    calls.clear()
    recs2 = run_experiment("toy", ["seeds=2"], out=tmp_path, progress=False)
    assert calls == [("rdrop", 1, 1.0)]
    assert len(recs2) == 4


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
