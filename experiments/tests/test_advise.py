"""rdrop advise: the plateau of a user's run, the checkpoint to branch from, the tryout command;
from any folder, with or without a scale map; a record or a trainer state read, bad input
refused in one line, the map's complete cells shown as context."""

from __future__ import annotations

import json

import pytest

from rdrop_experiments.advise import AdviseError, advise, read_baseline
from rdrop_experiments.cli import main

LOSSES = [3.0, 2.0, 1.6, 1.45, 1.4, 1.38, 1.37, 1.39, 1.42]  # plateau, then overfitting


def _reference_plateau(values, steps, window=3, fraction=0.25):
    best = []
    for v in values:
        best.append(min(best[-1], v) if best else v)
    for i in range(window, len(best)):
        total = best[0] - best[i]
        if total > 0 and best[i - window] - best[i] <= fraction * total:
            return steps[i]
    return None


def _trainer_state(folder, losses, checkpoints=()):
    history = []
    for i, v in enumerate(losses, start=1):
        history += [{"step": 10 * i, "loss": v - 0.3}, {"step": 10 * i, "eval_loss": v}]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    for step in checkpoints:
        (folder / f"checkpoint-{step}").mkdir()
    return folder / "trainer_state.json"


def test_trainer_state_gets_its_plateau_checkpoint_and_the_hf_tryout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any folder: no results/ here
    path = _trainer_state(tmp_path / "out", LOSSES, checkpoints=(20, 40, 60, 80))
    steps = [10 * i for i in range(1, len(LOSSES) + 1)]
    expected = _reference_plateau(LOSSES, steps)
    assert expected == 60
    run = read_baseline(path)
    assert run.plateau_step == expected and run.checkpoints == (20, 40, 60, 80)
    text = advise(path, "results")
    assert f"fires at step {expected}" in text
    assert f"branch from: {tmp_path / 'out' / 'checkpoint-60'}" in text
    assert f"rdrop.integrations.hf.tryout(make_trainer, '{tmp_path / 'out'}')" in text
    assert "scale map" not in text


def test_no_checkpoint_before_the_plateau_and_no_plateau_yet_say_what_to_do(tmp_path):
    late = _trainer_state(tmp_path / "late", LOSSES, checkpoints=(80,))
    assert "none saved at or before step 60 (saved: 80); save more often" in advise(late)
    none = _trainer_state(tmp_path / "none", LOSSES)
    assert "rerun the baseline with save_strategy='steps'" in advise(none)
    early = _trainer_state(tmp_path / "early", LOSSES[:3])
    assert "plateau: not reached in these 3 evaluations" in advise(early)


def test_cli_advise_outside_a_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = _trainer_state(tmp_path / "out", LOSSES, checkpoints=(60,))
    assert main(["advise", str(path)]) == 0
    assert "fires at step 60" in capsys.readouterr().out
    with pytest.raises(AdviseError, match="no such file"):
        read_baseline(tmp_path / "missing.json")


def test_advise_reads_a_record_and_a_trainer_state(image_record, write_image_map, scale_design,
                                                   tmp_path):
    write_image_map(tmp_path)
    rec = image_record("baseline", 0, value=0.7, valid=0.8, knob={"dropout": 0.1},
                       train_loss=0.9, valid_loss=1.6)
    (tmp_path / "run.json").write_text(json.dumps(rec))
    run = read_baseline(tmp_path / "run.json")
    assert run.gap == pytest.approx(0.7) and run.best_step == 20 and run.source == "record"
    text = advise(tmp_path / "run.json", tmp_path, scale_design)
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


def test_advise_leaves_out_a_cell_with_runs_to_go(image_record, write_image_map, scale_design,
                                                  tmp_path):
    write_image_map(tmp_path)
    # image-2000 loses one run: it is no evidence until its cell is complete
    next((tmp_path / "scale" / "image-2000-vit-d32" / "image").glob("r*.json")).unlink()
    rec = image_record("baseline", 0, value=0.7, valid=0.8, knob={"dropout": 0.1})
    (tmp_path / "run.json").write_text(json.dumps(rec))
    text = advise(tmp_path / "run.json", tmp_path, scale_design)
    assert "image-500-vit-d32" in text and "image-2000-vit-d32" not in text
