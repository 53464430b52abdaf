"""The report from fixture results: pairing, statistics, CSV/Markdown/PNG outputs."""

from __future__ import annotations

import csv
import math

import pytest

from rdrop_experiments.io import write_json_atomic
from rdrop_experiments.report import build_report, group_results
from rdrop_experiments.stats import paired_difference, summarize

BASE = {"exp": [0.80, 0.82, 0.81], "rd": [0.82, 0.83, 0.83], "rd_a5": [0.79, 0.80, 0.82]}


def _record(method, seed, value, key, pair_key, setting="default"):
    return {
        "schema": 1, "experiment": "fixture", "variant": "default", "setting": setting,
        "method": method, "seed": seed, "metric": "accuracy", "value": value,
        "higher_is_better": True, "metrics": {"accuracy": value, "test_loss": 1 - value},
        "curves": [{"step": s, "train_loss": 1.0 / s, "valid_loss": 1.2 / s,
                    "valid_accuracy": value - 0.01 / s} for s in (1, 2, 3)],
        "wall_time_s": 10.0 if method == "baseline" else 15.0, "config": {"alpha": 1.0},
        "key": key, "pair_key": pair_key, "overrides": {}, "command": "rdrop run fixture",
        "info": {"paper": "+1.0"}, "versions": {"torch": "x"},
    }


@pytest.fixture
def results(tmp_path):
    for seed in range(3):
        write_json_atomic(tmp_path / "fixture" / f"b{seed}.json",
                          _record("baseline", seed, BASE["exp"][seed], "bk", "bk"))
        write_json_atomic(tmp_path / "fixture" / f"r{seed}.json",
                          _record("rdrop", seed, BASE["rd"][seed], "rk1", "bk", "alpha=1"))
        write_json_atomic(tmp_path / "fixture" / f"s{seed}.json",
                          _record("rdrop", seed, BASE["rd_a5"][seed], "rk5", "bk", "alpha=5"))
    (tmp_path / "fixture" / "broken.json").write_text("{not json")
    return tmp_path


def test_groups_share_the_baseline(results):
    from rdrop_experiments.io import load_results

    groups = group_results(load_results(results))
    assert [g.label for g in groups] == ["default alpha=1", "default alpha=5"]
    assert all(len(g.baseline) == 3 and len(g.rdrop) == 3 for g in groups)


def test_report_numbers_and_files(results):
    text = build_report(results)
    with open(results / "summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "accuracy"]
    row = next(r for r in rows if r["setting"] == "default alpha=1")
    d = paired_difference(dict(enumerate(BASE["exp"])), dict(enumerate(BASE["rd"])))
    assert math.isclose(float(row["delta"]), d.mean)
    assert math.isclose(float(row["delta_low"]), d.low) and d.low > 0  # +1.67 [+0.23, +3.10]
    assert math.isclose(float(row["baseline_mean"]), summarize(BASE["exp"]).mean)
    row_md = "| fixture | default alpha=1 | accuracy (%) | 81.00 ± 1.00 | 82.67 ± 0.58 | +1.67"
    assert row_md in text
    assert (results / "summary.md").read_text() == text
    assert "- fixture [all 2 settings]: `rdrop run fixture`" in text  # one command, one line
    pngs = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert pngs == ["fixture__default_alpha=1_curves.png", "fixture__default_alpha=5_curves.png",
                    "fixture_metric.png"]
    assert all((results / "plots" / p).stat().st_size > 1000 for p in pngs)


def test_t_interval_matches_scipy():
    d = paired_difference({0: 1.0, 1: 2.0, 2: 4.0, 3: 4.0}, {0: 2.0, 1: 2.5, 2: 5.5, 3: 4.0})
    # differences 1, .5, 1.5, 0: mean .75, sd .6455, t_{3,.975} = 3.1824
    assert math.isclose(d.mean, 0.75)
    assert math.isclose(d.high - d.mean, 3.18245 * 0.645497 / 2, rel_tol=1e-4)


def test_empty_results_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run records"):
        build_report(tmp_path)


def test_reproduce_command_drops_work_splitting_options():
    recs = [_record("baseline", s, 0.8, "bk", "bk") for s in range(2)]
    recs += [_record("rdrop", s, 0.8, "rk", "bk") for s in range(2)]
    recs[2]["command"] = "rdrop run fixture alpha=5 methods=rdrop seeds=1 first_seed=1 progress=0"
    (group,) = group_results(recs)
    # an unregistered experiment's default is 3 seeds; this group has 2, starting at 0
    assert group.command() == "rdrop run fixture alpha=5 seeds=2"
    for r in recs:
        r["seed"] += 4
    assert group_results(recs)[0].command() == "rdrop run fixture alpha=5 first_seed=4 seeds=2"


def test_reproduce_command_knows_the_variants_seeds():
    recs = [_record(m, s, 0.8, "k", "k") for m in ("baseline", "rdrop") for s in range(2)]
    for r in recs:  # the registered image family: its quick variant runs 2 seeds
        r.update(experiment="image", variant="quick", command="rdrop run image --quick")
    assert group_results(recs)[0].command() == "rdrop run image --quick"
    recs = [r for r in recs if r["seed"] == 0]
    assert group_results(recs)[0].command() == "rdrop run image --quick seeds=1"
