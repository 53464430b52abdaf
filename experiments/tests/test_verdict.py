"""The second protocol's report: selection on validation, paired comparisons written out by
hand, equal compute read from the curves, Holm over the family, the plot file."""

from __future__ import annotations

import math
import statistics

import pytest

from rdrop_experiments.design import Design, ExperimentDesign
from rdrop_experiments.verdict import (
    build_verdicts,
    edge_state,
    grid_order,
    verdict_line,
    verdict_report,
)


def _rec(method, seed, setting, *, valid, test, best_passes, stop_passes, curves=None,
         metric="accuracy", higher=True):
    curves = curves or [{"sample_passes": best_passes, f"test_{metric}": test},
                        {"sample_passes": stop_passes, f"test_{metric}": test}]
    return {"experiment": "fam", "method": method, "seed": seed,
            "setting": f"methods={method},{setting}", "metric": metric, "value": test,
            "higher_is_better": higher, "curves": curves,
            "extra": {"selection": "best_valid", "best_valid": valid,
                      "best_sample_passes": best_passes, "sample_passes": stop_passes,
                      "stop_reason": "patience"}}


def _family():
    recs = []
    for s in range(3):
        # baseline: dropout 0.3 wins on validation although dropout 0.1 is better on test
        recs.append(_rec("baseline", s, "dropout=0.1", valid=0.70, test=0.90 + 0.01 * s,
                         best_passes=100, stop_passes=200))
        recs.append(_rec("baseline", s, "dropout=0.3", valid=0.75, test=0.80 + 0.01 * s,
                         best_passes=100 + 10 * s, stop_passes=200))
        # rdrop at alpha 1: best 0.83 + 0.02 s, reached at 300 passes; at 200 passes 0.78
        curves = [{"sample_passes": 100, "test_accuracy": 0.70},
                  {"sample_passes": 200, "test_accuracy": 0.78},
                  {"sample_passes": 300, "test_accuracy": 0.83 + 0.02 * s},
                  {"sample_passes": 400, "test_accuracy": 0.83 + 0.02 * s}]
        recs.append(_rec("rdrop", s, "alpha=1.0", valid=0.80, test=0.83 + 0.02 * s,
                         best_passes=300, stop_passes=400, curves=curves))
        recs.append(_rec("rdrop", s, "alpha=3.0", valid=0.60, test=0.99,
                         best_passes=300, stop_passes=400))
        recs.append(_rec("rdrop_alpha0", s, "default", valid=0.7, test=0.80 + 0.005 * s,
                         best_passes=200, stop_passes=300))
    return recs


def _t_interval(diffs):
    from scipy.stats import t

    n = len(diffs)
    m, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 2 * t.sf(abs(m / (sd / math.sqrt(n))), n - 1)
    return m, m - half, m + half, p


def test_selection_uses_validation_and_comparisons_match_hand_computation():
    pytest.importorskip("scipy")
    (v,) = build_verdicts(_family())
    assert v.arms["baseline"].chosen == "dropout=0.3"  # not the better-on-test 0.1
    assert v.arms["rdrop"].chosen == "alpha=1.0"  # not the better-on-test 3.0
    cmp = {c.name: c for c in v.comparisons}

    best = cmp["rdrop - baseline, best"].diff
    diffs = [100 * ((0.83 + 0.02 * s) - (0.80 + 0.01 * s)) for s in range(3)]
    m, lo, hi, p = _t_interval(diffs)
    assert (best.mean, best.low, best.high, best.p_value) == pytest.approx((m, lo, hi, p))

    # equal compute: the baseline stopped at 200 passes; rdrop's best-so-far there is 0.78
    eq = cmp["rdrop - baseline, equal compute"].diff
    diffs = [100 * (0.78 - (0.80 + 0.01 * s)) for s in range(3)]
    m, lo, hi, p = _t_interval(diffs)
    assert (eq.mean, eq.low, eq.high) == pytest.approx((m, lo, hi))

    # Holm over the family's four comparisons that were run (no stop-gradient arm here)
    ps = [c.diff.p_value for c in v.comparisons]
    assert len(ps) == 4
    order = sorted(range(4), key=lambda i: ps[i])
    expected, running = [0.0] * 4, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * ps[i]))
        expected[i] = running
    assert [c.p_holm for c in v.comparisons] == pytest.approx(expected)

    # compute to the best: geometric mean of 300 / (100 + 10 s)
    ratios = [300 / (100 + 10 * s) for s in range(3)]
    geo = math.exp(sum(map(math.log, ratios)) / 3)
    assert v.compute_to_best["rdrop"] == pytest.approx(geo)
    assert v.baseline_past_optimum == (3, 3)
    line = verdict_line(v)
    assert "fam: R-Drop (alpha=1.0" in line and f"{best.mean:+.2f}" in line


def test_records_of_the_first_protocol_are_ignored(tmp_path):
    old = {"experiment": "fam", "method": "baseline", "seed": 0, "setting": "default",
           "metric": "accuracy", "value": 0.5, "higher_is_better": True, "curves": [],
           "extra": {}}
    assert build_verdicts([old]) == []
    assert verdict_report([old], tmp_path) == ""


def test_report_writes_markdown_csv_and_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    text = verdict_report(_family(), tmp_path)
    assert "rdrop - baseline, equal compute" in text
    assert (tmp_path / "verdict.md").read_text() == text
    assert (tmp_path / "verdict.csv").read_text().count("\n") == 1 + 4
    assert (tmp_path / "plots" / "compute-fam.png").stat().st_size > 1000



def test_headline_row_shows_each_arm_at_its_chosen_point():
    from rdrop_experiments.verdict import headline_rows

    (v,) = build_verdicts(_family())
    (row,) = headline_rows(v)
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert cells[:3] == ["fam", "dropout=0.3; alpha=1.0", "accuracy (%)"]
    # baseline at dropout 0.3 (chosen on validation): 80, 81, 82; R-Drop at alpha 1: 83, 85, 87
    assert cells[3] == "81.00 ± 1.00" and cells[4] == "85.00 ± 2.00"
    best = {c.name: c for c in v.comparisons}["rdrop - baseline, best"].diff
    assert cells[5] == f"{best.mean:+.2f} [{best.low:+.2f}, {best.high:+.2f}]"
    assert cells[-1] == "3/3"


def test_a_diverged_run_is_left_out_of_the_verdict_and_named():
    pytest.importorskip("scipy")
    recs = _family()
    # rdrop alpha 1.0 seed 2 diverged: at chance on test, with a best-valid from before the NaNs
    (bad,) = [r for r in recs if r["method"] == "rdrop" and r["seed"] == 2
              and "alpha=1.0" in r["setting"]]
    bad["value"] = 0.10
    bad["extra"] = dict(bad["extra"], stop_reason="diverged", best_valid=0.95)
    (v,) = build_verdicts(recs)
    rdrop = v.arms["rdrop"]
    assert rdrop.chosen == "alpha=1.0" and sorted(rdrop.runs) == [0, 1]
    assert rdrop.valid["alpha=1.0"] == pytest.approx(0.80)  # the diverged 0.95 not averaged in
    best = {c.name: c for c in v.comparisons}["rdrop - baseline, best"].diff
    diffs = [100 * ((0.83 + 0.02 * s) - (0.80 + 0.01 * s)) for s in range(2)]
    m, lo, hi, p = _t_interval(diffs)
    assert best.n == 2
    assert (best.mean, best.low, best.high, best.p_value) == pytest.approx((m, lo, hi, p))
    assert v.compute_to_best["rdrop"] == pytest.approx(math.sqrt(300 / 100 * 300 / 110))


def test_the_verdict_markdown_names_the_diverged_runs(tmp_path):
    recs = _family()
    for r in recs:
        if r["method"] == "rdrop" and r["seed"] == 2 and "alpha=1.0" in r["setting"]:
            r["extra"] = dict(r["extra"], stop_reason="diverged")
    text = verdict_report(recs, tmp_path, plots=False)
    note = next(line for line in text.splitlines() if "diverged run(s) left out" in line)
    assert note.startswith("**1 diverged") and note.endswith(": fam rdrop [alpha=1.0] seed 2.")
    assert "| fam | dropout=0.3; alpha=1.0 | accuracy (%) | 81.00 ± 1.00 | 84.00 ± 1.41 |" in text


def _tied_arm(experiment, labels):
    """Baseline records at ``labels`` (in this order), every point with the same validation."""
    recs = []
    for label in labels:
        for s in range(2):
            rec = _rec("baseline", s, label, valid=0.8, test=0.5, best_passes=10, stop_passes=20)
            recs.append({**rec, "experiment": experiment})
    return recs


IMAGE = Design({"image": ExperimentDesign(grid=("dropout=0.1", "dropout=0.3", "alpha=1.0"))})


@pytest.mark.parametrize("labels", [["dropout=0.0", "dropout=0.3", "dropout=0.1"],
                                    ["dropout=0.1", "dropout=0.0", "dropout=0.3"],
                                    ["dropout=0.3", "dropout=0.1", "dropout=0.0"]])
def test_a_tie_goes_to_the_first_point_of_the_registered_grid_whatever_the_record_order(labels):
    # the design's baseline grid is dropout 0.1, 0.3; 0.0 is a scale cell's extension
    (v,) = build_verdicts(_tied_arm("image", labels), IMAGE)
    assert v.arms["baseline"].chosen == "dropout=0.1"
    # without the design the records alone decide: the first label
    (v,) = build_verdicts(_tied_arm("image", labels))
    assert v.arms["baseline"].chosen == "dropout=0.0"
    # a strictly better point still wins over the grid's first, wherever it is read
    recs = _tied_arm("image", labels)
    for rec in recs:
        if rec["setting"].endswith("dropout=0.3"):
            rec["extra"] = {**rec["extra"], "best_valid": 0.81}
    (v,) = build_verdicts(recs, IMAGE)
    assert v.arms["baseline"].chosen == "dropout=0.3"


def test_a_tie_outside_any_registered_grid_goes_to_the_first_label():
    for labels in (["dropout=0.5", "dropout=0.2"], ["dropout=0.2", "dropout=0.5"]):
        (v,) = build_verdicts(_tied_arm("not-registered", labels), IMAGE)
        assert v.arms["baseline"].chosen == "dropout=0.2"


def test_the_registry_design_carries_the_registered_grid_order():
    from rdrop_experiments.registry import discover

    design = Design.of(discover().values())
    assert design.grid("image")[:2] == ("dropout=0.1", "dropout=0.3")
    assert design.experiment("image").dropout_key == "dropout"
    assert grid_order("image", design)[:2] == ["dropout=0.1", "dropout=0.3"]
    assert grid_order("image") == [] and grid_order("not-registered", design) == []


def test_edge_state_reads_the_choice_on_validation_against_the_grid():
    recs = _tied_arm("image", ["dropout=0.1", "dropout=0.3"])
    for rec in recs:
        rec["config"] = {"dropout": float(rec["setting"].rsplit("=", 1)[1])}
        if rec["setting"].endswith("dropout=0.3"):
            rec["extra"] = {**rec["extra"], "best_valid": 0.9}
    assert edge_state(recs, "dropout") == {"baseline": {
        "knob": "dropout", "values": [0.1, 0.3], "chosen": 0.3, "at_edge": True}}
    assert edge_state([], "dropout") == {}


def test_edge_state_reads_the_choice_on_validation(image_cell_records):
    state = edge_state(image_cell_records(extended=False), "dropout")
    assert state["baseline"] == {"knob": "dropout", "values": [0.1, 0.3], "chosen": 0.1,
                                 "at_edge": True}
    assert state["rdrop"]["chosen"] == 1.0 and state["rdrop"]["at_edge"]


def test_missing_numbers_read_n_a_in_every_table(tmp_path):
    recs = [r for r in _family() if r["seed"] == 0]  # one seed: no interval, no p value
    text = verdict_report(recs, tmp_path, plots=False)
    assert "nan" not in text
    row = next(line for line in text.splitlines() if line.startswith("| fam | dropout=0.3"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "+3.00 [n/a, n/a]" and cells[6] == "n/a"  # Δ best, p


def test_an_arm_added_to_the_config_table_is_compared_without_touching_the_verdict(
        monkeypatch):
    # one row in config.ARMS is all a new arm needs: the verdict compares it with the baseline
    # at its best and at the baseline's compute, and the registered comparisons stay as they are
    from rdrop_experiments import config, verdict
    from rdrop_experiments.config import ArmSpec

    monkeypatch.setitem(config.ARMS, "rdrop_new", ArmSpec(summary="a new arm"))
    monkeypatch.setattr(verdict, "ARMS", tuple(config.ARMS))
    recs = _family() + [_rec("rdrop_new", s, "alpha=1.0", valid=0.8, test=0.85 + 0.01 * s,
                             best_passes=300, stop_passes=400) for s in range(3)]
    (v,) = build_verdicts(recs)
    names = [c.name for c in v.comparisons]
    assert names[:4] == ["rdrop - baseline, best", "rdrop - baseline, equal compute",
                         "rdrop_alpha0 - baseline, best", "rdrop - rdrop_alpha0, best"]
    assert names[4:] == ["rdrop_new - baseline, best", "rdrop_new - baseline, equal compute"]
    new = next(c for c in v.comparisons if c.name == "rdrop_new - baseline, best").diff
    assert new.mean == pytest.approx(100 * (0.85 - 0.80))  # the same 0.01 s slope as the base
