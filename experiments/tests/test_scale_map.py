"""The scale map (`rdrop_experiments.scale_map`): its cells, their verdicts and completeness,
the extra arms' sections, the span of each family's axis, `write_map`'s table, CSV and plots."""

from __future__ import annotations

import json
import math

import pytest

from rdrop_experiments.scale_map import map_cells


def test_map_cell_values_against_a_hand_computation(image_cell_records, scale_design, tmp_path):
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(image_cell_records(gain=0.03, size=2000)):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, scale_design)
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


def test_a_choice_still_at_an_extendable_edge_leaves_the_cell_incomplete(image_cell_records,
                                                                         image_record, scale_design,
                                                                         tmp_path):
    from rdrop_experiments.scale import get_cell, missing_runs

    cell = get_cell("image-2000-vit-d32")  # 3 seeds
    recs = image_cell_records(size=2000, extended=False)
    # every first-grid run finished, but both choices sit at an edge the rules extend
    assert missing_runs(cell, recs) == 2 * 3
    folder = tmp_path / "scale" / cell.name / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(recs):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (mc,) = map_cells(tmp_path, scale_design)
    assert mc.at_edge == ["baseline dropout=0.1", "rdrop alpha=1"] and not mc.verdict_ok
    assert mc.missing_runs == 6
    assert mc.verdict == ("no: INCOMPLETE: 6 runs to go; at a grid edge: baseline dropout=0.1, "
                          "rdrop alpha=1")
    # without the design the records alone are read: no grid, no cell to complete
    (bare,) = map_cells(tmp_path)
    assert bare.at_edge == [] and bare.missing_runs == 0
    # the baseline's extension runs; dropout 0.0 ends its range even if it wins
    recs += [image_record("baseline", s, value=0.7, valid=0.9, knob={"dropout": 0.0}, size=2000)
             for s in range(3)]
    assert missing_runs(cell, recs) == 3  # the alpha extension is still to go


def test_a_cell_whose_baseline_did_not_overfit_carries_no_verdict(image_cell_records, scale_design,
                                                                  tmp_path):
    folder = tmp_path / "scale" / "image-8000-vit-d32" / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(image_cell_records(stop="compute_cap", size=8000)):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, scale_design)
    assert not cell.overfit and not cell.verdict_ok
    assert cell.verdict == "no: the baseline passed its optimum in 0/3 seeds"


def test_write_map_writes_the_table_the_csv_and_the_plots(write_image_map, scale_design, tmp_path):
    import csv

    from rdrop_experiments.scale_map import write_map

    write_image_map(tmp_path)
    text = write_map(tmp_path, design=scale_design)
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


def test_two_records_of_one_run_in_a_cell_are_refused(write_image_map, tmp_path):
    from rdrop_experiments.storage import DuplicateRunError

    write_image_map(tmp_path)
    folder = tmp_path / "scale" / "image-500-vit-d32" / "image"
    (folder / "copy.json").write_text((folder / "r0.json").read_text())
    with pytest.raises(DuplicateRunError, match=r"copy\.json"):
        map_cells(tmp_path)


def test_the_tuned_dropout_arm_leaves_the_map_row_alone_and_gets_a_frontier_row(image_record,
                                                                                write_image_map,
                                                                                tmp_path):
    from rdrop_experiments.scale_map import write_map

    write_image_map(tmp_path)
    before = {c.name: c for c in map_cells(tmp_path)}
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    for seed in range(3):
        rec = image_record("rdrop", seed, value=0.68 + 0.01 * seed, valid=0.79,
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
def test_the_tuned_dropout_arm_gets_one_row_across_cells(image_record, write_image_map, tmp_path,
                                                         shift, beats):
    from rdrop_experiments.scale_map import write_map

    write_image_map(tmp_path)
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    for seed in range(3):
        rec = image_record("rdrop", seed, value=0.70 + 0.01 * seed + shift, valid=0.79,
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


def test_cheaper_arms_in_a_cell_leave_its_map_row_alone_and_get_a_frontier(image_record,
                                                                           write_image_map,
                                                                           tmp_path):
    from rdrop_experiments.scale_map import write_map

    write_image_map(tmp_path)
    before = {c.name: c for c in map_cells(tmp_path)}
    folder = tmp_path / "scale" / "image-500-vit-d32" / "image"
    for seed in range(3):
        for r, valid in ((0.25, 0.80), (0.5, 0.82)):
            rec = image_record("rdrop", seed, value=0.75 + 0.01 * seed, valid=valid,
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


def test_a_registered_cell_with_runs_to_go_is_incomplete_and_carries_no_verdict(image_cell_records,
                                                                                image_record,
                                                                                scale_design,
                                                                                tmp_path):
    from rdrop_experiments.scale_map import map_markdown

    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"  # registered: 3 seeds
    folder.mkdir(parents=True)
    recs = [r for r in image_cell_records(size=2000) if r["method"] != "rdrop_alpha0"]
    # an arm of issue 20 at a grid point does not stand in for the registered arm
    recs.append({**image_record("rdrop", 0, value=0.7, valid=0.8, knob={"alpha": 1.0}, size=2000),
                 "key": "fraction"})
    recs[-1]["config"]["second_pass_fraction"] = 0.5
    for i, rec in enumerate(recs):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, scale_design)
    # the registered first grid also holds `rdrop_alpha0`: its 3 seeds are still to go
    assert cell.missing_runs == 3 and cell.overfit and not cell.verdict_ok
    assert "| no: INCOMPLETE: 3 runs to go |" in map_markdown([cell])
    for seed in range(2):
        rec = image_record("rdrop_alpha0", seed, value=0.7, valid=0.79, knob={}, size=2000)
        (folder / f"a{seed}.json").write_text(json.dumps(rec))
    assert map_cells(tmp_path, scale_design)[0].missing_runs == 1
    rec = image_record("rdrop_alpha0", 2, value=0.7, valid=0.79, knob={}, size=2000)
    (folder / "a2.json").write_text(json.dumps(rec))
    (cell,) = map_cells(tmp_path, scale_design)
    assert cell.missing_runs == 0 and cell.verdict_ok
    assert "INCOMPLETE" not in map_markdown([cell])


def test_the_map_reports_the_examples_a_run_trained_on_not_its_cap(image_cell_records, tmp_path):
    # a seq2seq family caps its raw pairs with train_size and then drops pairs over its length
    # limits: the record's extra.sizes holds what was kept
    folder = tmp_path / "scale" / "image-2000-vit-d32" / "image"
    folder.mkdir(parents=True)
    for i, rec in enumerate(image_cell_records(size=2000)):
        rec["extra"] = {"sizes": {"train": 1234, "valid": 100}}
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    assert map_cells(tmp_path)[0].size == 1234


def test_the_span_of_each_family_axis_is_reported_against_16x(write_image_map, tmp_path):
    from dataclasses import replace

    from rdrop_experiments.scale_map import span_markdown

    write_image_map(tmp_path)
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
