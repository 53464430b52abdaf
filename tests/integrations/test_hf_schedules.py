"""The cheaper schedules in the Hugging Face and TRL trainers: rdrop_second_pass_fraction (the
loss against the float64 formula; accumulation against the full batch), rdrop_start_step, and
RDropAutoStartCallback (switch, log line, resume from a checkpoint)."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import (
    TokenTagger,
    classification_data,
    grad_recorder,
    make_args,
    tagging_data,
    tiny_bert,
)

from rdrop.integrations.hf import (
    RDropAutoStartCallback,
    RDropPlateauStartCallback,
    RDropTrainer,
    RDropTrainingArguments,
)
from rdrop.losses.subset import subset_size

from reference import reference_subset_loss

torch.set_num_threads(1)


class Rows:
    """Rows of every training-mode forward of the model, and its logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self.logits: list[torch.Tensor] = []
        model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        if module.training:
            logits = output["logits"] if isinstance(output, dict) else output.logits
            self.rows.append(logits.shape[0])
            self.logits.append(logits.detach().clone())


class Collate:
    def __init__(self) -> None:
        from transformers import default_data_collator

        self.collate, self.batches = default_data_collator, []

    def __call__(self, rows):
        batch = self.collate(rows)
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return batch


def _logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


def test_fraction_runs_one_forward_over_b_plus_n_rows_and_logs_the_formula(tmp_path):
    model = tiny_bert()
    rows, collate = Rows(model), Collate()
    args = make_args(tmp_path, max_steps=1, per_device_train_batch_size=8, learning_rate=0.0,
                     rdrop_second_pass_fraction=0.25, rdrop_alpha=2.0)
    trainer = RDropTrainer(model=model, args=args, train_dataset=classification_data(8),
                           data_collator=collate)
    trainer.train()
    n = subset_size(8, 0.25)
    assert rows.rows == [8 + n]
    logits, y = rows.logits[0].double(), collate.batches[0]["labels"]
    loss, task, cons = reference_subset_loss(logits[:8], logits[8:], y, range(n), alpha=2.0)
    (log,) = _logs(trainer)
    assert log["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert log["consistency_loss"] == pytest.approx(cons.item(), rel=1e-4)
    assert log["task_loss"] == pytest.approx(task.item(), rel=1e-5)
    assert log["consistency_loss"] > 0


def test_accumulated_fraction_gradient_is_the_full_batch_formula(tmp_path):
    """Keyed dropout: every sample's masks are fixed by (sample id, pass), so the reference can
    replay them. b = 4, two micro-batches, r = 0.5: S is the first 2 rows of each."""
    data = tagging_data(8)
    model = TokenTagger(seed=0)
    grads, collate = grad_recorder(), Collate()
    args = make_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                     max_steps=1, rdrop_alpha=3.0, rdrop_second_pass_fraction=0.5,
                     max_grad_norm=0.0, remove_unused_columns=False)
    trainer = RDropTrainer(model=model, args=args, train_dataset=data, data_collator=collate,
                           callbacks=[grads])
    trainer.train()
    order = [int(i) for b in collate.batches for i in b["sample_id"]]
    subset = [order[0], order[1], order[4], order[5]]
    ref_model = TokenTagger(seed=0)
    ids = torch.stack([data[i]["input_ids"] for i in order])
    labels = torch.stack([data[i]["labels"] for i in order])
    first = ref_model(ids, torch.tensor(order))["logits"]  # pass 0 of every sample
    second = ref_model(ids[[0, 1, 4, 5]], torch.tensor(subset))["logits"]  # pass 1 of S
    loss, _, cons = reference_subset_loss(first, second, labels, [0, 1, 4, 5], alpha=3.0)
    loss.backward()
    assert cons.item() > 0
    for name, p in ref_model.named_parameters():
        torch.testing.assert_close(grads.grads[0][name], p.grad.float(), rtol=1e-5, atol=1e-6)


def test_start_step_trains_plainly_before_it(tmp_path):
    model = tiny_bert()
    rows = Rows(model)
    args = make_args(tmp_path, max_steps=5, rdrop_start_step=2, rdrop_every_k_steps=2,
                     rdrop_second_pass_fraction=0.5)
    trainer = RDropTrainer(model=model, args=args, train_dataset=classification_data(20))
    trainer.train()
    assert rows.rows == [4, 4, 6, 4, 6]  # plain, plain, R-Drop on 2 + 2 rows, off-step, R-Drop
    logs = _logs(trainer)
    assert [h["consistency_loss"] > 0 for h in logs] == [False, False, True, False, True]


def _auto_trainer(tmp_path, callback, compute_metrics=None, **kw):
    model = tiny_bert()
    rows = Rows(model)
    args = make_args(tmp_path, learning_rate=0.0, eval_strategy="steps", eval_steps=1,
                     per_device_eval_batch_size=4, **kw)
    trainer = RDropTrainer(model=model, args=args, train_dataset=classification_data(24),
                           eval_dataset=classification_data(4, seed=1), callbacks=[callback],
                           compute_metrics=compute_metrics)
    return trainer, rows


def test_auto_start_switches_after_patience_evaluations_and_says_when(tmp_path, caplog):
    # lr 0: every evaluation repeats the first one, so the 3rd evaluation is the 2nd without
    # improvement: R-Drop from optimizer step 3 on.
    callback = RDropAutoStartCallback(patience=2)
    trainer, rows = _auto_trainer(tmp_path, callback, max_steps=5)
    with caplog.at_level(logging.INFO, logger="rdrop"):
        trainer.train()
    assert callback.start_step == 3
    assert rows.rows == [4, 4, 4, 8, 8]
    lines = [r.getMessage() for r in caplog.records if r.name == "rdrop"]
    assert len(lines) == 1 and "R-Drop on from optimizer step 3" in lines[0]


def test_auto_start_state_resumes_from_a_checkpoint(tmp_path):
    first, _ = _auto_trainer(tmp_path, RDropAutoStartCallback(patience=2), max_steps=4,
                             save_strategy="steps", save_steps=4)
    first.train()
    fresh = RDropAutoStartCallback(patience=2)
    second, rows = _auto_trainer(tmp_path, fresh, max_steps=6, save_strategy="no")
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    restored = second._rdrop_auto_start()
    assert restored is not None and restored.start_step == 3
    assert rows.rows == [8, 8]  # steps 5 and 6 run R-Drop without a new switch


def test_auto_start_needs_evaluation_and_no_fixed_start(tmp_path):
    with pytest.raises(ValueError, match="eval_strategy"):
        RDropTrainer(model=tiny_bert(), args=make_args(tmp_path),
                     callbacks=[RDropAutoStartCallback(patience=2)])
    with pytest.raises(ValueError, match="rdrop_start_step=5"):
        RDropTrainer(model=tiny_bert(), callbacks=[RDropAutoStartCallback(patience=2)],
                     eval_dataset=classification_data(4),
                     args=make_args(tmp_path, eval_strategy="steps", rdrop_start_step=5))


@pytest.mark.parametrize(("kw", "match"), [
    ({"rdrop_second_pass_fraction": 0.0}, r"rdrop_second_pass_fraction must lie in \(0, 1\]"),
    ({"rdrop_second_pass_fraction": 0.5, "rdrop_num_passes": 3}, "rdrop_num_passes=2"),
    ({"rdrop_second_pass_fraction": 0.5, "rdrop_fused_linear": True}, "rdrop_fused_linear"),
    ({"rdrop_start_step": -1}, "rdrop_start_step"),
])
def test_arguments_are_checked(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        RDropTrainingArguments(output_dir=str(tmp_path), report_to="none", **kw)


def test_trl_sft_trainer_takes_the_fraction(tmp_path):
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from tiny_models import sft_texts, tiny_llama, tiny_tokenizer

    from rdrop.integrations.trl import RDropSFTConfig, RDropSFTTrainer

    model = tiny_llama(dropout=0.2)
    rows = Rows(model)
    args = RDropSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                          save_strategy="no", logging_steps=1, per_device_train_batch_size=4,
                          disable_tqdm=True, seed=0, bf16=False, max_steps=2,
                          dataset_num_proc=None, learning_rate=0.0,
                          rdrop_second_pass_fraction=0.5, rdrop_start_step=1)
    trainer = RDropSFTTrainer(model=model, args=args,
                              train_dataset=datasets.Dataset.from_dict({"text": sft_texts(8)}),
                              processing_class=tiny_tokenizer())
    trainer.train()
    assert rows.rows == [4, 6]
    logs = _logs(trainer)
    assert logs[0]["consistency_loss"] == 0 and logs[1]["consistency_loss"] > 0


def _scripted_metric(values):
    """compute_metrics that reports the next value of ``values`` at each evaluation."""
    it = iter(values)
    return lambda _: {"score": next(it)}


def _plateau_trainer(tmp_path, callback, values, **kw):
    return _auto_trainer(tmp_path, callback, compute_metrics=_scripted_metric(values), **kw)


SCORES = [4.0, 2.0, 1.9, 1.85, 1.84, 1.83]  # window 1, fraction 0.5: on the plateau at eval 3


def test_plateau_start_switches_on_the_plateau_and_says_why(tmp_path, caplog):
    callback = RDropPlateauStartCallback(window=1, fraction=0.5, metric="score")
    trainer, rows = _plateau_trainer(tmp_path, callback, SCORES, max_steps=5)
    with caplog.at_level(logging.INFO, logger="rdrop"):
        trainer.train()
    assert callback.start_step == 3
    assert rows.rows == [4, 4, 4, 8, 8]
    lines = [r.getMessage() for r in caplog.records if r.name == "rdrop"]
    assert len(lines) == 1 and "plateau at optimizer step 3" in lines[0]


def test_plateau_start_fires_at_the_same_step_after_a_resume(tmp_path):
    first, _ = _plateau_trainer(tmp_path, RDropPlateauStartCallback(1, 0.5, metric="score"),
                                SCORES, max_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    fresh = RDropPlateauStartCallback(1, 0.5, metric="score")
    second, rows = _plateau_trainer(tmp_path, fresh, SCORES[2:], max_steps=5,
                                    save_strategy="no")
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert fresh.start_step == 3  # the evaluations before the kill came back from the checkpoint
    assert rows.rows == [4, 8, 8]


@pytest.mark.parametrize("name", ["alpha", "num_passes", "every_k_steps", "alpha_warmup_steps",
                                  "consistency", "chunk_size", "noise", "start_step",
                                  "second_pass_fraction", "fused_linear"])
def test_the_trainers_settings_are_read_only_after_construction(tmp_path, name):
    # the step and the schedule are built from them once: a later value would be ignored
    trainer = RDropTrainer(model=tiny_bert(), args=make_args(tmp_path, rdrop_alpha=2.0,
                                                               rdrop_second_pass_fraction=0.5),
                           train_dataset=classification_data(8))
    expected = {"alpha": 2.0, "second_pass_fraction": 0.5}
    if name in expected:
        assert getattr(trainer, f"rdrop_{name}") == expected[name]
    with pytest.raises(AttributeError, match=f"rdrop_{name} is fixed when the trainer is built"):
        setattr(trainer, f"rdrop_{name}", 3)
    assert trainer.rdrop_alpha == 2.0 and trainer.rdrop_step_options.second_pass_fraction == 0.5
