"""rdrop advise: the plateau of a user's run, the checkpoint to branch from, the tryout command;
from any folder, with or without a scale map."""

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
