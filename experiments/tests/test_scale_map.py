"""The scale map: grid-edge extensions, its cells, the registered predictor, `rdrop advise`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rdrop_experiments.advise import AdviseError, advise, read_baseline
from rdrop_experiments.design import Design, dropout_key
from rdrop_experiments.predictor import fit_line, fit_predictor
from rdrop_experiments.registry import discover, get_experiment
from rdrop_experiments.scale import CELLS, STOPPING, extension, map_grid, missing_runs
from rdrop_experiments.scale_map import MapCell, map_cells
from rdrop_experiments.verdict import edge_state

# what the CLI hands the reports: the registered grids and the scale cells' missing runs
DESIGN = Design.of(discover().values(), cells=CELLS, missing_runs=missing_runs)


def _record(method, seed, *, value, valid, knob, train_loss=1.0, valid_loss=1.5,
            stop="patience", size=500, experiment="image"):
    """A second-protocol record of the `image` family (accuracy, higher is better)."""
    curves = [
        {"step": 10, "epoch": 1.0, "sample_passes": 100, "train_loss": train_loss + 0.5,
         "valid_loss": valid_loss + 0.2, "valid_accuracy": valid - 0.05,
         "test_accuracy": value - 0.05},
        {"step": 20, "epoch": 2.0, "sample_passes": 200, "train_loss": train_loss,
         "valid_loss": valid_loss, "valid_accuracy": valid, "test_accuracy": value},
        {"step": 30, "epoch": 3.0, "sample_passes": 300, "train_loss": train_loss - 0.3,
         "valid_loss": valid_loss + 0.1, "valid_accuracy": valid - 0.02,
         "test_accuracy": value},
    ]
    setting = ",".join([f"methods={method}"] + [f"{k}={v}" for k, v in knob.items()])
    return {"experiment": experiment, "method": method, "seed": seed, "setting": setting,
            "metric": "accuracy", "value": value, "higher_is_better": True,
            "selection": "best_valid", "best_valid": valid, "best_step": 20,
            "best_sample_passes": 200, "sample_passes": 300, "stop_reason": stop,
            "selection_metric": "valid_accuracy", "selection_higher_is_better": True,
            "curves": curves, "key": f"{method}-{seed}-{setting}",
            "config": {"train_size": size, "dropout": knob.get("dropout", 0.1),
                       "alpha": knob.get("alpha", 1.0), "dim": 32}}


def _cell_records(*, base_valid=(0.80, 0.78), rdrop_valid=(0.79, 0.81), gain=0.02,
                  stop="patience", size=500, seeds=3, extended=True):
    """Every run of a cell's first grid: baseline 0.1/0.3, alpha 0.3/1.0, `rdrop_alpha0`;
    with ``extended``, also the extensions past each edge choice (baseline dropout 0.0 and
    alpha 3.0, each worse on validation), so that the cell is complete."""
    recs = []
    for seed in range(seeds):
        recs.append(_record("rdrop_alpha0", seed, value=0.70, valid=0.75, knob={}, size=size))
        for p, v in zip((0.1, 0.3), base_valid, strict=True):
            recs.append(_record("baseline", seed, value=0.70 + 0.01 * seed, valid=v,
                                knob={"dropout": p}, stop=stop, size=size))
        for a, v in zip((0.3, 1.0), rdrop_valid, strict=True):
            recs.append(_record("rdrop", seed, value=0.70 + 0.01 * seed + gain, valid=v,
                                knob={"alpha": a}, size=size))
        if extended:
            recs.append(_record("baseline", seed, value=0.5, valid=min(base_valid) - 0.1,
                                knob={"dropout": 0.0}, stop=stop, size=size))
            recs.append(_record("rdrop", seed, value=0.5, valid=min(rdrop_valid) - 0.1,
                                knob={"alpha": 3.0}, size=size))
    return recs


def test_extension_walks_each_knob_to_its_range_end():
    assert extension("dropout", [0.1, 0.3], 0.1) == 0.0
    assert extension("dropout", [0.1, 0.3], 0.3) == 0.4
    assert extension("dropout", [0.0, 0.1, 0.3], 0.0) is None  # dropout cannot go below 0
    assert extension("dropout", [0.3, 0.5, 0.6, 0.7], 0.7) is None  # nor above 0.7
    assert extension("dropout", [0.1, 0.3, 0.5], 0.3) is None  # interior
    assert extension("alpha", [0.5, 2.0], 2.0) == 6.0
    assert extension("alpha", [0.5, 2.0], 0.5) == round(0.5 / 3, 3)
    assert extension("alpha", [0.5, 2.0], 2.0, extended=3) is None  # at most 3 per direction


def test_edge_state_reads_the_choice_on_validation():
    state = edge_state(_cell_records(extended=False), "dropout")
    assert state["baseline"] == {"knob": "dropout", "values": [0.1, 0.3], "chosen": 0.1,
                                 "at_edge": True}
    assert state["rdrop"]["chosen"] == 1.0 and state["rdrop"]["at_edge"]


def test_map_cell_values_against_a_hand_computation(tmp_path):
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(_cell_records(gain=0.03, size=2000)):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, DESIGN)
    base = sum(100 * (0.70 + 0.01 * s) for s in range(3)) / 3
    assert cell.size == 2000 and cell.model == "d32" and cell.source == "scale"
    assert math.isclose(cell.baseline, base)
    assert math.isclose(cell.best, 3.0, abs_tol=1e-9)  # +0.03 accuracy in points, every seed
    assert math.isclose(cell.rel, 3.0 / base)
    assert math.isclose(cell.gap, 0.5)  # valid_loss - train_loss at the best step (20)
    # after the best (0.80), the last evaluation is 0.78: 2.5% worse
    assert math.isclose(cell.after_best, 0.02 / 0.80)
    assert cell.overfit and cell.stopped_past_optimum == "3/3"
    assert cell.at_edge == [] and cell.missing_runs == 0  # both choices interior
    assert cell.verdict == "yes"


def test_a_choice_still_at_an_extendable_edge_leaves_the_cell_incomplete(tmp_path):
    from rdrop_experiments.scale import get_cell, missing_runs

    cell = get_cell("image-2000-vit-d32")  # 3 seeds
    recs = _cell_records(size=2000, extended=False)
    # every first-grid run finished, but both choices sit at an edge the rules extend
    assert missing_runs(cell, recs) == 2 * 3
    folder = tmp_path / "scale" / cell.name / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(recs):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (mc,) = map_cells(tmp_path, DESIGN)
    assert mc.at_edge == ["baseline dropout=0.1", "rdrop alpha=1"] and not mc.verdict_ok
    assert mc.missing_runs == 6
    assert mc.verdict == ("no: INCOMPLETE: 6 runs to go; at a grid edge: baseline dropout=0.1, "
                          "rdrop alpha=1")
    # without the design the records alone are read: no grid, no cell to complete
    (bare,) = map_cells(tmp_path)
    assert bare.at_edge == [] and bare.missing_runs == 0
    # the baseline's extension runs; dropout 0.0 ends its range even if it wins
    recs += [_record("baseline", s, value=0.7, valid=0.9, knob={"dropout": 0.0}, size=2000)
             for s in range(3)]
    assert missing_runs(cell, recs) == 3  # the alpha extension is still to go


def test_a_cell_whose_baseline_did_not_overfit_carries_no_verdict(tmp_path):
    folder = tmp_path / "scale" / "image-8000-vit-d32" / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(_cell_records(stop="compute_cap", size=8000)):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, DESIGN)
    assert not cell.overfit and not cell.verdict_ok
    assert cell.verdict == "no: the baseline passed its optimum in 0/3 seeds"


def _cell(family, gap, rel):
    family = {"a": "image", "b": "language-modeling", "c": "translation"}.get(family, family)
    nan = math.nan
    return MapCell(name=f"{family}-{gap}", family=family, source="scale", size=1, model="d",
                   metric="m", higher_is_better=True, seeds=3, chosen_baseline="",
                   chosen_rdrop="", baseline=1.0, rdrop=1.0, best=0.0, best_low=nan,
                   best_high=nan, best_holm=nan, equal=nan, equal_low=nan, equal_high=nan,
                   equal_holm=nan, compute_to_best=2.0, rel=rel, gap=gap, after_best=0.0,
                   overfit=True, stopped_past_optimum="3/3", alpha=1.0)


def test_fit_line_and_the_leave_one_family_out_check_by_hand():
    # by hand: mean x 7/3, mean y 2, Sxx 14/3, Sxy 3: b = 9/14, a = 2 - b * 7/3 = 1/2
    assert fit_line([1.0, 2.0, 4.0], [1.0, 2.0, 3.0]) == pytest.approx((0.5, 9 / 14))
    # gain = 0.1 * gap exactly, in three families: the line predicts held-out families exactly
    cells = [_cell(f, g, 0.1 * g) for f, gs in (("a", (0.5, 1.0)), ("b", (2.0, 3.0)),
                                                  ("c", (4.0,))) for g in gs]
    cells.append(_cell("unregistered", 1.0, 5.0))  # a family added later: left out of the fit
    p = fit_predictor(cells)
    assert p is not None and p.beats_constant
    assert p.a == pytest.approx(0.0, abs=1e-12) and p.b == pytest.approx(0.1)
    assert p.mae_line == pytest.approx(0.0, abs=1e-12)
    # the constant's error, written out: held-out family's cells minus the others' mean
    errs = [abs(0.05 - 0.3), abs(0.1 - 0.3),  # family a vs mean(0.2, 0.3, 0.4)
            abs(0.2 - 0.55 / 3), abs(0.3 - 0.55 / 3),  # family b vs mean(0.05, 0.1, 0.4)
            abs(0.4 - 0.65 / 4)]  # family c vs mean(0.05, 0.1, 0.2, 0.3)
    assert p.mae_constant == pytest.approx(sum(errs) / 5)
    # noise that the gap does not explain: the constant wins, and advise must say so
    noisy = [_cell("a", 0.5, 0.3), _cell("a", 1.0, -0.2), _cell("b", 2.0, 0.25),
             _cell("b", 3.0, -0.3), _cell("c", 4.0, 0.2)]
    assert not fit_predictor(noisy).beats_constant


def _write_map(tmp_path):
    for name, gain, seeds in (("image-500-vit-d32", 0.03, 5), ("image-2000-vit-d32", 0.0, 3)):
        folder = tmp_path / "scale" / name / "image"
        folder.mkdir(parents=True)
        for i, rec in enumerate(_cell_records(gain=gain, seeds=seeds)):
            (folder / f"r{i}.json").write_text(json.dumps(rec))


def test_advise_reads_a_record_and_a_trainer_state(tmp_path):
    _write_map(tmp_path)
    rec = _record("baseline", 0, value=0.7, valid=0.8, knob={"dropout": 0.1},
                  train_loss=0.9, valid_loss=1.6)
    (tmp_path / "run.json").write_text(json.dumps(rec))
    run = read_baseline(tmp_path / "run.json")
    assert run.gap == pytest.approx(0.7) and run.best_step == 20 and run.source == "record"
    text = advise(tmp_path / "run.json", tmp_path, DESIGN)
    assert "0.700 nats" in text and f"rdrop tryout {tmp_path / 'run.json'}" in text
    assert "nearest cells" in text and "image-500-vit-d32" in text  # the map, as context

    state = {"log_history": [
        {"step": 10, "loss": 2.0}, {"step": 10, "eval_loss": 2.2},
        {"step": 20, "loss": 1.5}, {"step": 20, "eval_loss": 1.9},
        {"step": 30, "loss": 1.0}, {"step": 30, "eval_loss": 2.1}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    run = read_baseline(tmp_path / "trainer_state.json")
    assert run.gap == pytest.approx(1.9 - 1.5) and run.best_step == 20 and run.evals == 3
    assert "train mode" in advise(tmp_path / "trainer_state.json", tmp_path)


@pytest.mark.parametrize("content, message", [
    ({"log_history": [{"step": 1, "loss": 2.0}]}, "no eval_loss"),
    ({"log_history": [{"step": 1, "eval_loss": 2.0}]}, "no training loss"),
    ({"something": 1}, "unknown format"),
    ({"experiment": "image", "curves": [{"step": 1}]}, "no curve points"),
])
def test_advise_bad_input_gets_one_clear_line(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AdviseError, match=message):
        read_baseline(path)


def test_advise_cli_missing_file_and_not_json(tmp_path, capsys):
    from rdrop_experiments.cli import main

    assert main(["advise", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["advise", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "not a JSON file" in err and err.count("\n") == 1


def test_write_map_writes_the_table_the_csv_and_the_plots(tmp_path):
    import csv

    from rdrop_experiments.scale_map import write_map

    _write_map(tmp_path)
    text = write_map(tmp_path, design=DESIGN)
    assert "no predictor fitted" in text
    head, rule, *rows = [line for line in text.split("\n## ")[0].splitlines()
                         if line.startswith("|")][:4]
    assert head.count("|") - 1 == 7 and rule == "|---" * 7 + "|"  # seven columns at most
    assert [c.strip() for c in rows[1].strip("|").split("|")] == [
        "image-500-vit-d32", "500", "+3.00 [+3.00, +3.00], <0.001", "+3.00 [+3.00, +3.00], "
        "<0.001", "1.00x", "0.500", "yes"]
    with open(tmp_path / "scale" / "map.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["name"] for r in csv_rows] == ["image-2000-vit-d32", "image-500-vit-d32"]
    # the CSV keeps what the table leaves out
    assert float(csv_rows[1]["best"]) == pytest.approx(3.0)
    assert csv_rows[1]["model"] == "d32" and csv_rows[1]["seeds"] == "5"
    assert csv_rows[1]["chosen_baseline"] == "dropout=0.1" and csv_rows[1]["verdict"] == "yes"
    assert float(csv_rows[1]["rel"]) == pytest.approx(3.0 / 72.0)  # 5 seeds: 70 .. 74%
    for name in ("scale-baseline-image.png", "scale-gap.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_two_records_of_one_run_in_a_cell_are_refused(tmp_path):
    from rdrop_experiments.storage import DuplicateRunError

    _write_map(tmp_path)
    folder = tmp_path / "scale" / "image-500-vit-d32" / "image"
    (folder / "copy.json").write_text((folder / "r0.json").read_text())
    with pytest.raises(DuplicateRunError, match=r"copy\.json"):
        map_cells(tmp_path)


def test_cheaper_settings_take_the_alpha_the_cell_chose_on_validation():
    from rdrop_experiments.scale import cheaper_settings

    # validation prefers alpha 0.3 (0.82 > 0.79): the fraction arms must use it
    recs = _cell_records(rdrop_valid=(0.82, 0.79))
    assert cheaper_settings(recs, "dropout") == [
        {"methods": ("rdrop",), "alpha": 0.3, "second_pass_fraction": 0.25},
        {"methods": ("rdrop",), "alpha": 0.3, "second_pass_fraction": 0.5},
        {"methods": ("rdrop_stop_gradient",), "alpha": 0.3, "second_pass_fraction": 0.25},
        {"methods": ("rdrop_stop_gradient",), "alpha": 0.3, "second_pass_fraction": 0.5},
    ]
    only_baseline = [r for r in recs if r["method"] == "baseline"]
    with pytest.raises(ValueError, match="run `rdrop scale CELL` first"):
        cheaper_settings(only_baseline, "dropout")


def test_scale_cheaper_on_a_cell_not_yet_run_is_one_clear_line(tmp_path, capsys):
    from rdrop_experiments.cli import main

    assert main(["scale", "image-500-vit-d32", "--cheaper", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no R-Drop arm yet" in err and err.count("\n") == 1


def test_tuned_dropout_arm_takes_both_choices_on_validation_and_refuses_what_it_cannot_be():
    from rdrop_experiments.scale import tuned_dropout_settings

    # validation prefers baseline dropout 0.3 (0.80 > 0.78) and alpha 1.0 (0.81 > 0.79); the
    # registered R-Drop arm runs at 0.1 (the records' config), so the arm differs from it
    recs = _cell_records(base_valid=(0.78, 0.80), rdrop_valid=(0.79, 0.81))
    assert tuned_dropout_settings(recs, "dropout") == [
        {"methods": ("rdrop",), "alpha": 1.0, "dropout": 0.3, "arm_tag": "tuned_dropout"}]
    # a baseline that chose no dropout: R-Drop's passes would not differ through that field
    zero = _cell_records(base_valid=(0.78, 0.80))
    for r in zero:
        if r["method"] == "baseline" and r["config"]["dropout"] == 0.0:
            r["best_valid"] = 0.9
    with pytest.raises(ValueError, match="chose dropout=0"):
        tuned_dropout_settings(zero, "dropout")
    # a baseline that chose the rate R-Drop already runs at: nothing to add
    same = _cell_records(base_valid=(0.80, 0.78))
    with pytest.raises(ValueError, match="already runs at"):
        tuned_dropout_settings(same, "dropout")
    with pytest.raises(ValueError, match="run `rdrop scale CELL` first"):
        tuned_dropout_settings([r for r in same if r["method"] == "baseline"], "dropout")


def test_scale_tuned_dropout_on_a_cell_not_yet_run_is_one_clear_line(tmp_path, capsys):
    from rdrop_experiments.cli import main

    assert main(["scale", "image-500-vit-d32", "--tuned-dropout", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--tuned-dropout" in err and "no baseline and R-Drop arms" in err
    assert err.count("\n") == 1


def test_the_tuned_dropout_arm_leaves_the_map_row_alone_and_gets_a_frontier_row(tmp_path):
    from rdrop_experiments.scale_map import write_map

    _write_map(tmp_path)
    before = {c.name: c for c in map_cells(tmp_path)}
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    for seed in range(3):
        rec = _record("rdrop", seed, value=0.68 + 0.01 * seed, valid=0.79,
                      knob={"alpha": 1.0, "dropout": 0.3, "arm_tag": "tuned_dropout"})
        rec["config"]["arm_tag"] = "tuned_dropout"
        (folder / f"tuned-{seed}.json").write_text(json.dumps(rec))
    assert {c.name: c for c in map_cells(tmp_path)} == before
    section = write_map(tmp_path).split("## Extra arms in scale cells: image-2000")[1]
    # 68/69/70% against the chosen baseline's 70/71/72%: -2 points in every seed
    assert "| rdrop+tuned_dropout | alpha=1.0,dropout=0.3,arm_tag=tuned_dropout | 69.00 [" \
        in section
    assert "| -2.00 [-2.00, -2.00]," in section
    # at each one's best: 69 - 71 in every seed, paired; the registered R-Drop arm's line too
    assert "- rdrop+tuned_dropout - baseline at each one's best: -2.00 [-2.00, -2.00]" \
        in section
    assert "- rdrop - baseline at each one's best: +0.00" in section


@pytest.mark.parametrize("shift, beats", [(-0.02, "no"), (0.02, "yes")])
def test_the_tuned_dropout_arm_gets_one_row_across_cells(tmp_path, shift, beats):
    from rdrop_experiments.scale_map import write_map

    _write_map(tmp_path)
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    for seed in range(3):
        rec = _record("rdrop", seed, value=0.70 + 0.01 * seed + shift, valid=0.79,
                      knob={"alpha": 1.0, "dropout": 0.3, "arm_tag": "tuned_dropout"})
        rec["config"]["arm_tag"] = "tuned_dropout"
        (folder / f"tuned-{seed}.json").write_text(json.dumps(rec))
    text = write_map(tmp_path, plots=False)
    table = text.split("## R-Drop at the tuned baseline's dropout, across cells")[1]
    rows = [r for r in table.split("\n## ")[0].splitlines() if r.startswith("| image")]
    # one cell holds the arm; baseline chose dropout 0.1 (valid 0.80 over 0.78), R-Drop ran at
    # 0.1 and chose alpha 1.0 (0.81 over 0.79), the arm ran at 0.3: baseline 70/71/72%, the arm
    # shift points off in every seed, its validation 0.79
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:6] == ["image-2000-vit-d32", "dropout=0.1", "0.1; alpha=1.0", "0.3", "3",
                         "71.00"]
    d = f"{100 * shift:+.2f}"
    assert cells[7].startswith(f"{d} [{d}, {d}],")
    assert cells[10] == "0.800 / 0.810 / 0.790" and cells[11] == beats


def test_extra_arms_wait_until_the_cell_is_finished(tmp_path, capsys):
    from rdrop_experiments.cli import main

    folder = tmp_path / "image-500-vit-d32" / "image"  # registered: 5 seeds
    folder.mkdir(parents=True)
    recs = _cell_records(base_valid=(0.78, 0.80), seeds=5, extended=False)
    for i, rec in enumerate(recs):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    # both choices sit at an edge with no extension run yet: 10 runs to go
    assert main(["scale", "image-500-vit-d32", "--tuned-dropout", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not finished (10 registered runs to go)" in err and err.count("\n") == 1


def test_cheaper_arms_in_a_cell_leave_its_map_row_alone_and_get_a_frontier(tmp_path):
    from rdrop_experiments.scale_map import write_map

    _write_map(tmp_path)
    before = {c.name: c for c in map_cells(tmp_path)}
    folder = tmp_path / "scale" / "image-500-vit-d32" / "image"
    for seed in range(3):
        for r, valid in ((0.25, 0.80), (0.5, 0.82)):
            rec = _record("rdrop", seed, value=0.75 + 0.01 * seed, valid=valid,
                          knob={"alpha": 1.0, "second_pass_fraction": r})
            rec["config"]["second_pass_fraction"] = r
            (folder / f"fraction-{r}-{seed}.json").write_text(json.dumps(rec))
    after = {c.name: c for c in map_cells(tmp_path)}
    assert after == before  # the row's arms and its Holm p values do not move
    text = write_map(tmp_path)
    section = text.split("## Extra arms in scale cells: image-500-vit-d32")[1]
    assert "image-2000-vit-d32" not in section.split("![")[0]  # no cheaper arms there
    # r = 0.5 chosen on validation (0.82 > 0.80): 75/76/77%, +5 points over the baseline
    # (70/71/72%) in every seed
    assert "| rdrop+fraction | alpha=1.0,second_pass_fraction=0.5 | 76.00 [" in section
    assert "| +5.00 [+5.00, +5.00], <0.001 |" in section
    assert (tmp_path / "plots" / "frontier-image-500-vit-d32.png").stat().st_size > 1000


def test_a_registered_cell_with_runs_to_go_is_incomplete_and_carries_no_verdict(tmp_path):
    from rdrop_experiments.scale_map import map_markdown

    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"  # registered: 3 seeds
    folder.mkdir(parents=True)
    recs = [r for r in _cell_records(size=2000) if r["method"] != "rdrop_alpha0"]
    # an arm of issue 20 at a grid point does not stand in for the registered arm
    recs.append({**_record("rdrop", 0, value=0.7, valid=0.8, knob={"alpha": 1.0}, size=2000),
                 "key": "fraction"})
    recs[-1]["config"]["second_pass_fraction"] = 0.5
    for i, rec in enumerate(recs):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, DESIGN)
    # the registered first grid also holds `rdrop_alpha0`: its 3 seeds are still to go
    assert cell.missing_runs == 3 and cell.overfit and not cell.verdict_ok
    assert "| no: INCOMPLETE: 3 runs to go |" in map_markdown([cell])
    for seed in range(2):
        rec = _record("rdrop_alpha0", seed, value=0.7, valid=0.79, knob={}, size=2000)
        (folder / f"a{seed}.json").write_text(json.dumps(rec))
    assert map_cells(tmp_path, DESIGN)[0].missing_runs == 1
    rec = _record("rdrop_alpha0", 2, value=0.7, valid=0.79, knob={}, size=2000)
    (folder / "a2.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, DESIGN)
    assert cell.missing_runs == 0 and cell.verdict_ok
    assert "INCOMPLETE" not in map_markdown([cell])


# each family's baseline grid knob, written out: the edge extensions walk it
KNOBS = {"image": "dropout", "language-modeling": "dropout", "text-classification": "dropout",
         "summarization": "dropout", "translation": "dropout"}


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_every_registered_cell_can_run(cell):
    grid = map_grid(get_experiment(cell.family).grid)
    assert {s["methods"][0] for s in grid} == {"baseline", "rdrop", "rdrop_alpha0"}
    assert dropout_key(grid) == KNOBS[cell.family]
    assert DESIGN.experiment(cell.family).dropout_key == KNOBS[cell.family]
    overrides = cell.config_overrides()
    assert overrides[cell.size_key] == cell.size and overrides["seeds"] == cell.seeds
    assert overrides["eval_every_epochs"] == STOPPING[cell.family]["eval_every_epochs"] == 1.0
    # nothing run yet: every point of the first grid, every seed, is still to go
    assert missing_runs(cell, []) == len(grid) * cell.seeds
    assert DESIGN.missing(cell.name, []) == len(grid) * cell.seeds


def test_a_folder_that_is_no_registered_cell_lacks_no_runs():
    assert DESIGN.missing("image-123-made-up", []) == 0
    assert Design().missing(CELLS[0].name, []) == 0


def test_the_map_reports_the_examples_a_run_trained_on_not_its_cap(tmp_path):
    # a seq2seq family caps its raw pairs with train_size and then drops pairs over its length
    # limits: the record's extra.sizes holds what was kept
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(_cell_records(size=2000)):
        rec["extra"] = {"sizes": {"train": 1234, "valid": 100}}
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    assert map_cells(tmp_path)[0].size == 1234


def test_busy_runs_are_the_records_a_live_process_holds(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from rdrop_experiments.scale import busy_runs

    folder = tmp_path / "image"
    folder.mkdir()
    live, dead = folder / "baseline-seed0-a.json", folder / "rdrop-seed0-b.json"
    (folder / "done-seed0-c.json").write_text("{}")  # a finished record holds no lock
    host = socket.gethostname()
    Path(f"{live}.lock").write_text(f"{host} {os.getpid()}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(f"{dead}.lock").write_text(f"{host} {gone}")  # its process has exited: stale
    assert busy_runs(tmp_path) == [live]


def test_advise_leaves_out_a_cell_with_runs_to_go(tmp_path):
    _write_map(tmp_path)
    # image-2000 loses one run: it is no evidence until its cell is complete
    next((tmp_path / "scale" / "image-2000-vit-d32" / "image").glob("r*.json")).unlink()
    rec = _record("baseline", 0, value=0.7, valid=0.8, knob={"dropout": 0.1})
    (tmp_path / "run.json").write_text(json.dumps(rec))
    text = advise(tmp_path / "run.json", tmp_path, DESIGN)
    assert "image-500-vit-d32" in text and "image-2000-vit-d32" not in text


def test_run_cell_waits_for_the_other_runner_once_then_decides(tmp_path, monkeypatch, capsys):
    import rdrop_experiments.runner as runner
    import rdrop_experiments.scale as scale

    # both baseline points and both alphas run, interior choices: no extension to decide
    recs = [_record("baseline", s, value=0.8, valid=v, knob={"dropout": d})
            for s in range(2) for d, v in ((0.1, 0.7), (0.3, 0.8), (0.5, 0.75))]
    recs += [_record("rdrop", s, value=0.8, valid=v, knob={"alpha": a})
             for s in range(2) for a, v in ((0.3, 0.7), (1.0, 0.8), (3.0, 0.75))]
    calls = []
    monkeypatch.setattr(runner, "run_experiment", lambda *a, **k: calls.append(1) or recs)
    busy = iter([["x"], ["x"], ["x"], [], []])  # the other runner finishes after three polls
    monkeypatch.setattr(scale, "busy_runs", lambda out: next(busy))
    monkeypatch.setattr(scale.time, "sleep", lambda s: None)
    cell = scale.Cell("image", 500, "vit-d32", 2)
    assert scale.run_cell(cell, tmp_path, progress=False) == recs
    # one pass before the wait, one after it (not one per poll), and one waiting line
    assert len(calls) == 2
    assert capsys.readouterr().out.count("waiting for 1 run(s) another runner") == 1


def test_the_span_of_each_family_axis_is_reported_against_16x(tmp_path):
    from dataclasses import replace

    from rdrop_experiments.scale_map import span_markdown

    _write_map(tmp_path)
    cells = map_cells(tmp_path)
    image = next(c for c in cells if c.family == "image" and c.source == "scale")
    wide = [replace(image, size=500), replace(image, size=8000),
            replace(image, size=1000, model="d64")]
    narrow = [replace(image, family="translation", size=637),
              replace(image, family="translation", size=4600),
              replace(image, family="translation", size=4000, source="protocol")]
    lines = span_markdown(wide + narrow).splitlines()
    assert f"| image | d32: 500, 8000; d64: 1000 | {8000 / 500:.1f}x |" in lines
    # the second protocol's cell is not part of the axis: 4600 / 637, below the target
    assert f"| translation | d32: 637, 4600 | {4600 / 637:.1f}x (below 16x) |" in lines


def test_a_runner_shares_an_extension_the_other_runner_is_training(tmp_path, monkeypatch,
                                                                   capsys):
    import rdrop_experiments.runner as runner
    import rdrop_experiments.scale as scale
    import rdrop_experiments.storage as storage

    # the first grid is finished (2 seeds): both arms chose their upper edge
    first = [_record(m, s, value=0.8, valid=v, knob=k) for s in range(2) for m, k, v in (
        ("baseline", {"dropout": 0.1}, 0.70), ("baseline", {"dropout": 0.3}, 0.80),
        ("rdrop", {"alpha": 0.3}, 0.70), ("rdrop", {"alpha": 1.0}, 0.80))]
    first += [_record("rdrop_alpha0", s, value=0.8, valid=0.7, knob={}) for s in range(2)]
    # the extension's runs, worse than the choices: both choices interior after them
    ext = [_record(m, s, value=0.8, valid=0.75, knob=k) for s in range(2) for m, k in (
        ("baseline", {"dropout": 0.4}), ("rdrop", {"alpha": 3.0}))]
    grids, finished = [], []

    def run_experiment(*a, experiment, **k):
        grids.append([dict(s) for s in experiment.grid])
        finished[:] = first if len(grids) == 1 else first + ext
        return list(finished)

    monkeypatch.setattr(runner, "run_experiment", run_experiment)
    monkeypatch.setattr(storage, "load_results", lambda folder: list(finished))
    # the other runner trains a run of the extension it decided on the same finished grid
    polls = iter([["x"]] * 5 + [[]] * 100)
    monkeypatch.setattr(scale, "busy_runs", lambda out: next(polls))
    monkeypatch.setattr(scale.time, "sleep", lambda s: None)
    cell = scale.Cell("image", 500, "vit-d32", 2)
    scale.run_cell(cell, tmp_path, progress=False)
    out = capsys.readouterr().out
    # no wait for the other runner's extension run: this runner decides the same extension
    # at once and runs (shares) its runs
    assert "waiting" not in out
    assert len(grids) == 2
    assert {"methods": ("baseline",), "dropout": 0.4} in grids[1]
    assert {"methods": ("rdrop",), "alpha": 3.0} in grids[1]
