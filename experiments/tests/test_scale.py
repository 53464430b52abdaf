"""The scale cells (`rdrop_experiments.scale`): the grid-edge extension rules, the cheaper and
tuned-dropout arms' settings, the registered cells and their missing runs, the runs another
runner holds, `run_cell`, and the CLI of `rdrop scale`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rdrop_experiments.design import Design, dropout_key
from rdrop_experiments.registry import get_experiment
from rdrop_experiments.scale import CELLS, STOPPING, extension, map_grid, missing_runs


def test_extension_walks_each_knob_to_its_range_end():
    assert extension("dropout", [0.1, 0.3], 0.1) == 0.0
    assert extension("dropout", [0.1, 0.3], 0.3) == 0.4
    assert extension("dropout", [0.0, 0.1, 0.3], 0.0) is None  # dropout cannot go below 0
    assert extension("dropout", [0.3, 0.5, 0.6, 0.7], 0.7) is None  # nor above 0.7
    assert extension("dropout", [0.1, 0.3, 0.5], 0.3) is None  # interior
    assert extension("alpha", [0.5, 2.0], 2.0) == 6.0
    assert extension("alpha", [0.5, 2.0], 0.5) == round(0.5 / 3, 3)
    assert extension("alpha", [0.5, 2.0], 2.0, extended=3) is None  # at most 3 per direction


def test_cheaper_settings_take_the_alpha_the_cell_chose_on_validation(image_cell_records):
    from rdrop_experiments.scale import cheaper_settings

    # validation prefers alpha 0.3 (0.82 > 0.79): the fraction arms must use it
    recs = image_cell_records(rdrop_valid=(0.82, 0.79))
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


def test_tuned_dropout_arm_takes_both_choices_on_validation_and_refuses_what_it_cannot_be(
        image_cell_records):
    from rdrop_experiments.scale import tuned_dropout_settings

    # validation prefers baseline dropout 0.3 (0.80 > 0.78) and alpha 1.0 (0.81 > 0.79); the
    # registered R-Drop arm runs at 0.1 (the records' config), so the arm differs from it
    recs = image_cell_records(base_valid=(0.78, 0.80), rdrop_valid=(0.79, 0.81))
    assert tuned_dropout_settings(recs, "dropout") == [
        {"methods": ("rdrop",), "alpha": 1.0, "dropout": 0.3, "arm_tag": "tuned_dropout"}]
    # a baseline that chose no dropout: R-Drop's passes would not differ through that field
    zero = image_cell_records(base_valid=(0.78, 0.80))
    for r in zero:
        if r["method"] == "baseline" and r["config"]["dropout"] == 0.0:
            r["best_valid"] = 0.9
    with pytest.raises(ValueError, match="chose dropout=0"):
        tuned_dropout_settings(zero, "dropout")
    # a baseline that chose the rate R-Drop already runs at: nothing to add
    same = image_cell_records(base_valid=(0.80, 0.78))
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


def test_extra_arms_wait_until_the_cell_is_finished(image_cell_records, tmp_path, capsys):
    from rdrop_experiments.cli import main

    folder = tmp_path / "image-500-vit-d32" / "image"  # registered: 5 seeds
    folder.mkdir(parents=True)
    recs = image_cell_records(base_valid=(0.78, 0.80), seeds=5, extended=False)
    for i, rec in enumerate(recs):
        (folder / f"r{i}.json").write_text(json.dumps(rec))
    # both choices sit at an edge with no extension run yet: 10 runs to go
    assert main(["scale", "image-500-vit-d32", "--tuned-dropout", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not finished (10 registered runs to go)" in err and err.count("\n") == 1


# each family's baseline grid knob, written out: the edge extensions walk it
KNOBS = {"image": "dropout", "language-modeling": "dropout", "text-classification": "dropout",
         "summarization": "dropout", "translation": "dropout"}


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_every_registered_cell_can_run(scale_design, cell):
    grid = map_grid(get_experiment(cell.family).grid)
    assert {s["methods"][0] for s in grid} == {"baseline", "rdrop", "rdrop_alpha0"}
    assert dropout_key(grid) == KNOBS[cell.family]
    assert scale_design.experiment(cell.family).dropout_key == KNOBS[cell.family]
    overrides = cell.config_overrides()
    assert overrides[cell.size_key] == cell.size and overrides["seeds"] == cell.seeds
    assert overrides["eval_every_epochs"] == STOPPING[cell.family]["eval_every_epochs"] == 1.0
    # nothing run yet: every point of the first grid, every seed, is still to go
    assert missing_runs(cell, []) == len(grid) * cell.seeds
    assert scale_design.missing(cell.name, []) == len(grid) * cell.seeds


def test_a_folder_that_is_no_registered_cell_lacks_no_runs(scale_design):
    assert scale_design.missing("image-123-made-up", []) == 0
    assert Design().missing(CELLS[0].name, []) == 0


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


def test_run_cell_waits_for_the_other_runner_once_then_decides(image_record, tmp_path, monkeypatch,
                                                               capsys):
    import rdrop_experiments.runner as runner
    import rdrop_experiments.scale as scale

    # both baseline points and both alphas run, interior choices: no extension to decide
    recs = [image_record("baseline", s, value=0.8, valid=v, knob={"dropout": d})
            for s in range(2) for d, v in ((0.1, 0.7), (0.3, 0.8), (0.5, 0.75))]
    recs += [image_record("rdrop", s, value=0.8, valid=v, knob={"alpha": a})
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


def test_a_runner_shares_an_extension_the_other_runner_is_training(image_record, tmp_path,
                                                                   monkeypatch, capsys):
    import rdrop_experiments.runner as runner
    import rdrop_experiments.scale as scale
    import rdrop_experiments.storage as storage

    # the first grid is finished (2 seeds): both arms chose their upper edge
    first = [image_record(m, s, value=0.8, valid=v, knob=k) for s in range(2) for m, k, v in (
        ("baseline", {"dropout": 0.1}, 0.70), ("baseline", {"dropout": 0.3}, 0.80),
        ("rdrop", {"alpha": 0.3}, 0.70), ("rdrop", {"alpha": 1.0}, 0.80))]
    first += [image_record("rdrop_alpha0", s, value=0.8, valid=0.7, knob={}) for s in range(2)]
    # the extension's runs, worse than the choices: both choices interior after them
    ext = [image_record(m, s, value=0.8, valid=0.75, knob=k) for s in range(2) for m, k in (
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
