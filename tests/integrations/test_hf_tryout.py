"""rdrop.integrations.hf.tryout end to end: a real baseline output_dir (a plain transformers
Trainer run with checkpoints, save_strategy "steps" and "epoch") on a tiny BERT, continued with
RDropTrainer built by the user's make_trainer; the user's files untouched; bad inputs refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

import rdrop
from rdrop.integrations.hf import RDropTrainer, RDropTrainingArguments, tryout
from rdrop.integrations.hf.tryout import make_continue_run, read_baseline
from rdrop.training.tryout import DOES_NOT_PAY, NOT_ENOUGH_EVIDENCE, PAYS

STEPS = 40  # 32 samples, batch 8: 4 optimizer steps per epoch, 10 epochs
SEED = 7  # the baseline's seed (not HF's default, so the tryout must read it)


def _data(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (n, 8), generator=g)
    labels = (ids[:, 0] > 15).long()
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


TRAIN, EVAL = _data(32, 0), _data(16, 1)


def _model(hidden: int = 32, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=32, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=16, num_labels=2,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))


def _arguments(strategy: str) -> dict:
    args = dict(max_steps=STEPS, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                learning_rate=3e-3, eval_strategy=strategy, save_strategy=strategy,
                report_to="none", logging_steps=4, use_cpu=True, seed=SEED, disable_tqdm=True,
                save_only_model=False)
    if strategy == "steps":
        args.update(eval_steps=4, save_steps=8)
    return args


def _make_trainer(strategy: str, hidden: int = 32, layers: int = 2):
    def make_trainer(overrides: dict) -> RDropTrainer:
        args = RDropTrainingArguments(**{**_arguments(strategy), **overrides})
        return RDropTrainer(model=_model(hidden, layers), args=args, train_dataset=TRAIN,
                            eval_dataset=EVAL)
    return make_trainer


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Bit-for-bit comparisons need the same kernels in both runs; one thread is also faster
    # on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["steps", "epoch"])
def baseline(request, tmp_path_factory, _one_thread):
    """The user's finished baseline: a plain transformers Trainer with checkpoints."""
    strategy = request.param
    out = tmp_path_factory.mktemp(f"baseline-{strategy}") / "run"
    trainer = Trainer(model=_model(), args=TrainingArguments(output_dir=str(out),
                                                             **_arguments(strategy)),
                      train_dataset=TRAIN, eval_dataset=EVAL)
    trainer.train()
    return strategy, out


def _plateau_and_checkpoint(out: Path) -> tuple[int, int, list[tuple[int, float]]]:
    """Independently: the last checkpoint's log_history, the rule's step, the branch."""
    last = max((p for p in out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    curve = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    plateau = rdrop.plateau_step([v for _, v in curve], [s for s, _ in curve])
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    return plateau, max(s for s in saved if s <= plateau), curve


def test_tryout_end_to_end_from_a_real_output_dir(baseline, tmp_path):
    strategy, out = baseline
    before = _digest(out)
    plateau, start, _ = _plateau_and_checkpoint(out)
    work = tmp_path / "work"
    result = tryout(_make_trainer(strategy), out, alphas=(1.0, 10.0), max_extensions=1,
                    work_dir=work)
    assert _digest(out) == before  # the user's checkpoints and files, byte for byte
    assert result.plateau_step == plateau and result.checkpoint_step == start
    assert result.checkpoint == out / f"checkpoint-{start}"
    assert result.total_steps == STEPS and result.budget == STEPS - start
    assert result.rdrop_stop_step == start + (STEPS - start) // 2
    assert result.seeds == (SEED, SEED + 1)  # read from make_trainer's own arguments
    assert {1.0, 10.0} <= set(result.validation) and result.alpha in result.validation
    assert len(result.validation) in (2, 3)  # at most one extension
    assert result.verdict in (PAYS, DOES_NOT_PAY, NOT_ENOUGH_EVIDENCE)
    assert len(result.best.per_seed) == 2 and result.at_compute is not None
    runs = {p.name for p in (work / "runs").iterdir()}
    # The baseline seed's plain continuation is the baseline itself (not rerun).
    assert f"plain-seed{SEED + 1}" in runs and f"plain-seed{SEED}" not in runs
    assert {f"alpha1-seed{SEED}", f"alpha10-seed{SEED}", f"alpha10-seed{SEED + 1}"} <= runs
    rdrop_log = json.loads((work / "runs" / f"alpha10-seed{SEED}" / "trainer_state.json")
                           .read_text())["log_history"]
    # R-Drop ran from the checkpoint on: the logged consistency term is there after it.
    assert any(e.get("consistency_loss", 0) > 0 for e in rdrop_log if e["step"] > start)
    assert max(e["step"] for e in rdrop_log) == result.rdrop_stop_step
    assert not list((work / "runs").glob("*/checkpoint-*"))  # the runs' checkpoints removed
    assert "verdict" in result.summary()
    # The best R-Drop model at the chosen alpha is kept: the seed with the lowest eval_loss
    # within the budget, saved at that evaluation (evaluating the saved model gives it back).
    best_runs = {}
    for seed in result.seeds:
        log = json.loads((work / "runs" / f"alpha{result.alpha:g}-seed{seed}" /
                          "trainer_state.json").read_text())["log_history"]
        evals = [(e["eval_loss"], e["step"]) for e in log
                 if "eval_loss" in e and start < e["step"] <= result.rdrop_stop_step]
        best_runs[seed] = min(evals)
    best_seed = min(best_runs, key=lambda seed: best_runs[seed])
    assert result.best_seed == best_seed
    assert result.best_steps[result.seeds.index(best_seed)] == best_runs[best_seed][1]
    assert result.best_model == work / "runs" / f"alpha{result.alpha:g}-seed{best_seed}" / \
        "best-model"
    saved = BertForSequenceClassification.from_pretrained(result.best_model)
    evaluator = Trainer(model=saved, args=TrainingArguments(
        output_dir=str(tmp_path / "eval"), **_arguments(strategy)), eval_dataset=EVAL)
    assert evaluator.evaluate()["eval_loss"] == pytest.approx(best_runs[best_seed][0],
                                                               rel=1e-5)
    assert f"saved at {result.best_model}" in result.summary()


def test_a_branch_with_rdrop_off_reproduces_the_baseline_bit_for_bit(baseline, tmp_path):
    strategy, out = baseline
    before = _digest(out)
    _, start, curve = _plateau_and_checkpoint(out)
    continue_run = make_continue_run(_make_trainer(strategy), read_baseline(out),
                                     baseline_seed=SEED, work_dir=tmp_path)
    checkpoint = out / f"checkpoint-{start}"
    plain = continue_run(checkpoint, alpha=None, seed=SEED, max_steps=STEPS)
    expected = [(s, v) for s, v in curve if s > start]
    assert plain == expected  # eval_loss values of log_history, exactly
    other = continue_run(checkpoint, alpha=None, seed=SEED + 1, max_steps=STEPS)
    assert [s for s, _ in other] == [s for s, _ in expected] and other != expected
    assert _digest(out) == before


def _refusal(tmp_path: Path, strategy: str, out: Path, **kwargs) -> str:
    before = _digest(out)
    with pytest.raises((ValueError, TypeError)) as err:
        tryout(kwargs.pop("make_trainer", _make_trainer(strategy)), out,
               work_dir=tmp_path / "work", **kwargs)
    assert _digest(out) == before
    assert not (tmp_path / "work").exists()  # refused before any run: nothing left behind
    return str(err.value)


@pytest.mark.parametrize("baseline", ["steps"], indirect=True)  # refusals: any strategy
def test_bad_inputs_are_refused_with_their_message(baseline, tmp_path):
    strategy, out = baseline
    # No checkpoints: only the final trainer_state.json.
    empty = tmp_path / "no-checkpoints"
    empty.mkdir()
    shutil.copy(max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                / "trainer_state.json", empty / "trainer_state.json")
    message = _refusal(tmp_path, strategy, empty)
    assert "no checkpoints" in message and "save_strategy" in message
    # A trainer_state.json without evaluations.
    no_eval = tmp_path / "no-eval"
    (no_eval / "checkpoint-4").mkdir(parents=True)
    (no_eval / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(
        {"global_step": 4, "max_steps": 4, "log_history": [{"loss": 0.7, "step": 4}]}))
    message = _refusal(tmp_path, strategy, no_eval)
    assert "no evaluation metrics" in message and "eval_strategy" in message
    # A metric the evaluations do not report.
    message = _refusal(tmp_path, strategy, out, metric="accuracy")
    assert "'eval_accuracy'" in message and "eval_loss" in message
    # A curve with no plateau yet (the rule needs more evaluations than there are).
    message = _refusal(tmp_path, strategy, out, window=50)
    assert "no plateau yet" in message and "Train longer" in message
    # A checkpoint from another model: names the differing keys.
    message = _refusal(tmp_path, strategy, out, make_trainer=_make_trainer(strategy, 48))
    assert "not from this model (40 shapes that differ: " in message
    assert "bert.embeddings.LayerNorm.bias (checkpoint [32], model [48])" in message
    message = _refusal(tmp_path, strategy, out, make_trainer=_make_trainer(strategy, layers=3))
    assert "not from this model (16 keys of the model it lacks: " in message
    assert "bert.encoder.layer.2." in message
    # make_trainer that is not an R-Drop trainer, or ignores its overrides.
    def plain_trainer(overrides):
        args = TrainingArguments(**{**_arguments(strategy), **overrides})
        return Trainer(model=_model(), args=args, train_dataset=TRAIN, eval_dataset=EVAL)
    message = _refusal(tmp_path, strategy, out, make_trainer=plain_trainer)
    assert "must return an R-Drop trainer" in message

    def ignoring(overrides):
        return _make_trainer(strategy)({"output_dir": overrides["output_dir"]})
    message = _refusal(tmp_path, strategy, out, make_trainer=ignoring)
    assert "ignored overrides" in message and "rdrop_start_step" in message
    # A work_dir inside the user's output_dir.
    with pytest.raises(ValueError, match="inside the baseline's output_dir"):
        tryout(_make_trainer(strategy), out, work_dir=out / "tryout")
    assert not (out / "tryout").exists()
