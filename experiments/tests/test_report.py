"""The report from fixture results: pairing, statistics, CSV/Markdown/PNG outputs. Expected
numbers are written out by hand (the fixture's seeds are small enough to do so)."""

from __future__ import annotations

import csv
import math

import pytest

from rdrop_experiments.design import Design, ExperimentDesign
from rdrop_experiments.report import build_report, collect_report, group_results
from rdrop_experiments.storage import write_json_atomic

# the registered experiment as the reports see it: 3 seeds by default, 2 for --quick
IMAGE = Design({"image": ExperimentDesign(seeds=3, variant_seeds={"quick": 2},
                                          dataset="fashion-mnist", alpha=0.6, paper="+0.5")})

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
    from rdrop_experiments.storage import load_results

    groups = group_results(load_results(results))
    assert [g.label for g in groups] == ["alpha=1", "alpha=5"]
    assert all(len(g.baseline) == 3 and len(g.rdrop) == 3 for g in groups)


def test_report_numbers_and_files(results):
    text = build_report(results)
    with open(results / "summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "accuracy"]
    row = next(r for r in rows if r["setting"] == "alpha=1")
    # by hand: differences .02, .01, .02; mean 1/60, sd sqrt(1/3) / 100, t_{2,.975} = 4.302653
    half = 4.302653 * math.sqrt(1 / 3) / 100 / math.sqrt(3)
    assert float(row["delta"]) == pytest.approx(1 / 60)
    assert float(row["delta_low"]) == pytest.approx(1 / 60 - half, rel=1e-5)
    assert float(row["delta_high"]) == pytest.approx(1 / 60 + half, rel=1e-5)
    # t = (1/60) / (sd / sqrt 3) = 5 with 2 df: p = 1 - 5 / sqrt(27)
    assert float(row["p_value"]) == pytest.approx(1 - 5 / math.sqrt(27), rel=1e-5)
    assert float(row["baseline_mean"]) == pytest.approx(0.81)
    assert float(row["rdrop_mean"]) == pytest.approx(2.48 / 3)
    assert int(row["n_pairs"]) == 3 and row["paper"] == "+1.0"  # unregistered: the records'
    row_md = ("| fixture | alpha=1 | accuracy (%) | 81.00 ± 1.00 | 82.67 ± 0.58 | +1.67 [+0.23, "
              "+3.10] | 0.038 | 3 | 10 / 15 | +1.0 |")
    assert row_md in text
    assert (results / "summary.md").read_text() == text
    assert "- fixture [all 2 settings]: `rdrop run fixture`" in text  # one command, one line
    pngs = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert pngs == ["fixture__alpha=1_curves.png", "fixture__alpha=5_curves.png",
                    "fixture_metric.png"]
    assert all((results / "plots" / p).stat().st_size > 1000 for p in pngs)


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
    recs = [_record(m, s, 0.8, "k", "k") for m in ("baseline", "rdrop") for s in range(3)]
    for r in recs:
        r.update(experiment="image", variant="quick", command="rdrop run image --quick")
    # the design's quick variant runs 2 seeds: 3 is named, 2 is the default
    assert group_results(recs, IMAGE)[0].command() == "rdrop run image --quick seeds=3"
    two = [r for r in recs if r["seed"] < 2]
    assert group_results(two, IMAGE)[0].command() == "rdrop run image --quick"
    # without the design the records alone are read: 3 seeds by default
    assert group_results(two)[0].command() == "rdrop run image --quick seeds=2"
    assert group_results(recs)[0].command() == "rdrop run image --quick"


def _write(root, recs):
    for i, r in enumerate(recs):
        write_json_atomic(root / r["experiment"] / f"{r['method']}-{i}.json", r)


def test_settings_sort_by_number():
    recs = []
    for alpha, key in ((10.0, "k10"), (3.0, "k3"), (0.3, "k03"), (1.0, "k1")):
        recs += [_record("rdrop", s, 0.8, key, "bk", f"alpha={alpha}") for s in range(2)]
    recs += [_record("baseline", s, 0.8, "bk", "bk") for s in range(2)]
    assert [g.label for g in group_results(recs)] == [
        "alpha=0.3", "alpha=1.0", "alpha=3.0", "alpha=10.0"]


def test_the_default_alpha_is_named():
    recs = [_record(m, s, 0.8, m, "baseline") for m in ("baseline", "rdrop") for s in range(2)]
    for r in recs:  # the image family at its defaults, e.g. max_steps overridden
        r.update(experiment="image", overrides={"max_steps": "1500"},
                 config={"alpha": 0.6, "dataset": "fashion-mnist"})
    (group,) = group_results(recs, IMAGE)
    assert group.label == "max_steps=1500 alpha=0.6 (default)"
    assert group.info("paper") == "+0.5"  # the design's figure over the records' "+1.0"
    assert group_results(recs)[0].label == "max_steps=1500 alpha=0.6"  # no design: no default


def test_quick_image_runs_are_labelled_digits():
    recs = [_record(m, s, 0.8, m, "baseline") for m in ("baseline", "rdrop") for s in range(2)]
    for r in recs:
        r.update(experiment="image", variant="quick", config={"alpha": 0.6, "dataset": "digits"})
    assert group_results(recs, IMAGE)[0].label == "quick dataset=digits alpha=0.6 (default)"


def test_quick_rows_never_mix_with_full_ones(tmp_path):
    full = [_record(m, s, 0.8, m, "baseline") for m in ("baseline", "rdrop") for s in range(2)]
    quick = [dict(r, variant="quick", key=r["key"] + "q", pair_key="baselineq")
             for r in full]
    _write(tmp_path, full + quick)
    text = build_report(tmp_path, plots=False)
    assert "| fixture | alpha=1 | accuracy (%) |" in text and "| fixture | quick" not in text
    assert "4 quick (smoke) run record(s)" in text
    text = build_report(tmp_path, plots=False, include_quick=True)
    assert "| fixture | quick alpha=1 | accuracy (%) |" in text
    only_quick = tmp_path / "q"
    _write(only_quick, quick)
    text = build_report(only_quick, plots=False)
    assert "**Quick smoke runs**" in text and "| fixture | quick alpha=1 |" in text


def test_unknown_experiment_names_the_ones_there(results):
    with pytest.raises(FileNotFoundError, match=r"no run records of nosuch .* it holds: fixture"):
        build_report(results, experiments=["nosuch"])


def test_different_data_is_flagged(tmp_path):
    recs = [_record(m, s, 0.8, m, "baseline") for m in ("baseline", "rdrop") for s in range(3)]
    for r in recs:
        r["data_hash"] = "aaaa"
    text = build_report(_write(tmp_path / "same", recs) or tmp_path / "same", plots=False)
    assert "different data" not in text.lower()
    recs[-1]["data_hash"] = "bbbb"  # one R-Drop seed trained on another apt snapshot
    text = build_report(_write(tmp_path / "mixed", recs) or tmp_path / "mixed", plots=False)
    assert "| fixture | alpha=1 ⚠ different data | accuracy (%) |" in text
    assert "- fixture [alpha=1]: aaaa, bbbb" in text


def test_plots_use_percent_and_say_which_way_is_better(results, monkeypatch):
    import matplotlib.figure
    from matplotlib.collections import PathCollection

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: figures.append(fig))
    build_report(results)
    assert len(figures) == 3
    for fig in figures:
        for ax in fig.axes:
            label = ax.get_ylabel()
            assert label.endswith(("(lower is better)", "(higher is better)")), label
            if "accuracy" in label:
                assert "(%)" in label and "higher is better" in label
                ys = [y for line in ax.get_lines() for y in line.get_ydata()]
                ys += [y for coll in ax.collections if isinstance(coll, PathCollection)
                       for _, y in coll.get_offsets()]  # the per-seed points
                assert ys and min(ys) > 50  # 0.79 .. 0.83 stored, shown as 79 .. 83


def test_which_arms_ran_is_not_part_of_the_label():
    recs = [_record("rdrop", s, 0.8, "rk", "bk", "methods=rdrop,alpha=0.2") for s in range(2)]
    recs += [_record("baseline", s, 0.8, "b3", "b3", "methods=baseline,dropout=0.3")
             for s in range(2)]
    assert sorted(g.label for g in group_results(recs)) == ["alpha=0.2", "dropout=0.3"]


def test_second_protocol_records_get_the_verdict(tmp_path):
    from rdrop_experiments import run_experiment

    run_experiment("image", variant="quick", out=tmp_path, progress=False)  # about 10 s
    text = build_report(tmp_path)
    assert "### Verdict (second protocol" in text and "| image (accuracy) | baseline |" in text
    assert (tmp_path / "verdict.md").exists()
    assert (tmp_path / "plots" / "compute-image.png").exists()
    assert "tested at its best-validation checkpoint" in text
    headline = (tmp_path / "headline.md").read_text().splitlines()  # the README's table
    assert headline[0].startswith("| family (metric) | best-quality Δ") and len(headline) == 3
    assert headline[2].startswith("| image (accuracy, higher is better) |")


def test_two_records_of_one_run_are_refused_naming_both_files(results, capsys):
    from rdrop_experiments.cli import main
    from rdrop_experiments.storage import DuplicateRunError

    # A copied folder whose copy of one run says something else: which one would a table use?
    copy = results / "copy" / "fixture" / "r1.json"
    write_json_atomic(copy, _record("rdrop", 1, 0.123, "rk1", "bk", "alpha=1"))
    with pytest.raises(DuplicateRunError) as info:
        build_report(results, plots=False)
    assert str(results / "fixture" / "r1.json") in str(info.value)
    assert str(copy) in str(info.value)
    assert main(["report", "--results", str(results), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rdrop report: error: ") and "holds two records of fixture rdrop " \
        "seed 1 (config rk1)" in err and str(copy) in err
    assert not (results / "summary.md").exists()


def test_the_same_run_under_two_experiments_is_not_a_duplicate(results):
    # An ablation point can be the family's run (same config hash): two experiments, two runs.
    other = dict(_record("rdrop", 1, 0.83, "rk1", "bk", "alpha=1"), experiment="fixture-abl")
    write_json_atomic(results / "fixture-abl" / "r1.json", other)
    assert "| fixture-abl |" in build_report(results, plots=False)


def test_a_record_without_a_config_hash_is_left_out_with_a_note(results):
    old = _record("rdrop", 0, 0.5, "rk1", "bk", "alpha=1")
    del old["key"]
    write_json_atomic(results / "old" / "r0.json", old)
    data = collect_report(results)
    assert [r["_path"] for r in data.unkeyed] == [str(results / "old" / "r0.json")]
    assert all(r["seed"] != 0 or r["value"] != 0.5 for g in data.groups for r in g.records)
    text = build_report(results, plots=False)
    note = next(line for line in text.splitlines() if "without a config hash" in line)
    assert note.startswith("**1 record(s)") and str(results / "old" / "r0.json") in note
    row_md = "| fixture | alpha=1 | accuracy (%) | 81.00 ± 1.00 | 82.67 ± 0.58 | +1.67"
    assert row_md in text  # the other records' numbers are untouched


def test_diverged_runs_are_listed_and_left_out_of_every_table(results):
    diverged = _record("rdrop", 2, 0.1, "rk1", "bk", "alpha=1")  # at chance: NaN losses
    diverged["extra"] = {"stop_reason": "diverged"}
    write_json_atomic(results / "fixture" / "r2.json", diverged)
    data = collect_report(results)
    assert [(r["method"], r["seed"]) for r in data.diverged] == [("rdrop", 2)]
    text = build_report(results, plots=False)
    assert text.count("**1 diverged run(s)**") == 1
    assert f"- fixture rdrop [alpha=1] seed 2: `{results / 'fixture' / 'r2.json'}`" in text
    with open(results / "summary.csv") as f:
        row = next(r for r in csv.DictReader(f)
                   if r["metric"] == "accuracy" and r["setting"] == "alpha=1")
    assert int(row["n_rdrop"]) == 2 and int(row["n_pairs"]) == 2
    assert float(row["rdrop_mean"]) == pytest.approx(0.825)  # seeds 0 and 1: .82, .83
    assert float(row["delta"]) == pytest.approx(0.015)  # paired with .80, .82


def test_collecting_writes_nothing_and_holds_what_the_report_says(results):
    before = sorted(p.name for p in results.rglob("*"))
    data = collect_report(results)
    assert sorted(p.name for p in results.rglob("*")) == before
    assert [g.label for g in data.groups] == ["alpha=1", "alpha=5"]
    assert [s.path.name for s in data.skipped] == ["broken.json"]
    assert not data.has_verdict and data.scale_map is None and data.agreement == []
    row = next(r for r in data.rows if r["setting"] == "alpha=5" and r["primary"])
    # alpha 5: .79, .80, .82 against .80, .82, .81: differences -.01, -.02, +.01
    assert row["delta"] == pytest.approx(-0.02 / 3) and row["n_pairs"] == 3
