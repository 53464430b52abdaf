"""The HF trainers' step schedule (rdrop_step of the optimizer step), the number comparable to
eval_loss, and the silent-failure guards (checkpointing without the RNG state, no dropout)."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import classification_data, make_args, tiny_bert

from rdrop.integrations.hf import RDropTrainer
from rdrop.integrations.hf.guards import no_dropout_message
from rdrop.training.schedule import rdrop_step

torch.set_num_threads(1)


def train_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


class RowCounter:
    """Forward pre-hook keeping the number of rows of every training forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows: list[int] = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        if module.training:
            self.rows.append(kwargs["input_ids"].shape[0])


# ------------------------------------------------------------------------------- schedule
def test_every_k_steps_counts_optimizer_steps_under_accumulation(tmp_path):
    """Both micro-batches of an accumulated step get the same decision (step 0: R-Drop, step 1:
    plain, step 2: R-Drop), as rdrop_step says; the wrapper and Lightning ask the same function."""
    model = tiny_bert()
    rows = RowCounter(model)
    args = make_args(tmp_path, max_steps=3, gradient_accumulation_steps=2,
                     per_device_train_batch_size=2, rdrop_every_k_steps=2, learning_rate=0.0)
    RDropTrainer(model=model, args=args, train_dataset=classification_data(12)).train()
    expected = [2 * 2 if rdrop_step(s, alpha=1.0, every_k_steps=2).active else 2
                for s in range(3) for _ in range(2)]
    assert rows.rows == expected == [4, 4, 2, 2, 4, 4]


def test_alpha_warmup_follows_the_optimizer_step(tmp_path):
    args = make_args(tmp_path, max_steps=4, gradient_accumulation_steps=2,
                     per_device_train_batch_size=2, rdrop_alpha=2.0, rdrop_alpha_warmup_steps=3,
                     learning_rate=0.0)
    trainer = RDropTrainer(model=tiny_bert(), args=args, train_dataset=classification_data(16))
    trainer.train()
    logs = train_logs(trainer)
    assert [h["step"] for h in logs] == [1, 2, 3, 4]
    for s, log in enumerate(logs):
        alpha = 2.0 * min(1.0, (s + 1) / 3)  # the formula, written out
        assert log["consistency_loss"] > 0
        assert log["loss"] == pytest.approx(
            log["task_loss"] + alpha * log["consistency_loss"], rel=1e-5)


# ---------------------------------------------------------------- the eval-comparable number
def test_task_loss_per_pass_is_one_pass_cross_entropy(tmp_path):
    """Without dropout the passes are identical, so task_loss_per_pass is exactly the loss the
    model computes for itself in one pass (what eval_loss measures), and loss is twice it."""
    data = classification_data(4)
    args = make_args(tmp_path, max_steps=1, learning_rate=0.0)
    with pytest.warns(UserWarning, match="no dropout"):
        trainer = RDropTrainer(model=tiny_bert(dropout=0.0), args=args, train_dataset=data)
    trainer.train()
    (log,) = train_logs(trainer)
    batch = {"input_ids": torch.stack([r["input_ids"] for r in data]),
             "labels": torch.tensor([r["labels"] for r in data])}
    trainer.model.eval()
    with torch.no_grad():
        own = trainer.model(**batch).loss.item()
    assert log["task_loss_per_pass"] == pytest.approx(own, rel=1e-5)
    assert log["loss"] == pytest.approx(2 * own, rel=1e-5)
    evaluated = trainer.evaluate(data)["eval_loss"]
    assert log["task_loss_per_pass"] == pytest.approx(evaluated, rel=1e-5)


def test_task_loss_per_pass_is_logged_beside_loss(tmp_path):
    args = make_args(tmp_path, max_steps=2, rdrop_num_passes=3, rdrop_every_k_steps=2)
    trainer = RDropTrainer(model=tiny_bert(), args=args, train_dataset=classification_data(8))
    trainer.train()
    rdrop, plain = train_logs(trainer)
    assert rdrop["task_loss_per_pass"] == pytest.approx(rdrop["task_loss"] / 3, rel=1e-6)
    assert plain["task_loss_per_pass"] == pytest.approx(plain["task_loss"], rel=1e-6)


# ------------------------------------------------------------------------ checkpointing
@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("name", ["gradient_checkpointing", "activation_checkpointing"])
def test_checkpointing_without_rng_state_is_refused(tmp_path, name, reentrant):
    kwargs = {"preserve_rng_state": False, "use_reentrant": reentrant}
    args = make_args(tmp_path, **{name: True, f"{name}_kwargs": kwargs})
    with pytest.raises(ValueError, match=r"preserve_rng_state=False.*NEW dropout masks.*Remove"):
        RDropTrainer(model=tiny_bert(), args=args)


def test_checkpointing_enabled_on_the_model_by_hand_is_refused(tmp_path):
    model = tiny_bert()
    model.activation_checkpointing_enable({"preserve_rng_state": False, "use_reentrant": False})
    trainer = RDropTrainer(model=model, args=make_args(tmp_path, max_steps=1),
                           train_dataset=classification_data(4))
    with pytest.raises(ValueError, match=r"model's checkpointing.*preserve_rng_state=False"):
        trainer.train()


def _loss_and_grads(tmp_path, **kw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = tiny_bert(dropout=0.3)
    trainer = RDropTrainer(model=model, args=make_args(tmp_path, **kw))
    data = classification_data(4)
    batch = {"input_ids": torch.stack([r["input_ids"] for r in data]),
             "labels": torch.tensor([r["labels"] for r in data])}
    model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointing_that_preserves_the_rng_state_is_exact(tmp_path, reentrant):
    """The default (preserve_rng_state=True) replays the masks: the same loss and gradients."""
    model = tiny_bert(dropout=0.3)
    model.activation_checkpointing_enable({"use_reentrant": reentrant})
    trainer = RDropTrainer(model=model, args=make_args(tmp_path))
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    data = classification_data(4)
    batch = {"input_ids": torch.stack([r["input_ids"] for r in data]),
             "labels": torch.tensor([r["labels"] for r in data])}
    model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    ref_loss, ref_grads = _loss_and_grads(tmp_path)
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-6, atol=1e-7)
    for name, grad in ref_grads.items():
        got = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(got, grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- no dropout
def test_no_dropout_warning_names_the_config_keys(tmp_path):
    with pytest.warns(UserWarning, match="hidden_dropout_prob=0.1") as record:
        RDropTrainer(model=tiny_bert(dropout=0.0), args=make_args(tmp_path))
    assert "RDropTrainer: the model has no dropout" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        RDropTrainer(model=tiny_bert(), args=make_args(tmp_path))


def test_no_dropout_warning_for_a_plain_module():
    message = no_dropout_message(torch.nn.Linear(2, 2), "RDropTrainer")
    assert message is not None and message.startswith("RDropTrainer: the model has no dropout")
    assert "nn.Dropout" in message



def test_no_dropout_warning_for_peft_names_lora_dropout(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_bert(dropout=0.0), peft.LoraConfig(
        r=2, lora_dropout=0.0, target_modules=["query", "value"]))
    with pytest.warns(UserWarning, match=r"LoraConfig\(lora_dropout=") as record:
        RDropTrainer(model=model, args=make_args(tmp_path))
    assert "hidden_dropout_prob" not in str(record[0].message)
    with warnings.catch_warnings():  # the adapters' dropout counts
        warnings.simplefilter("error", UserWarning)
        model = peft.get_peft_model(tiny_bert(dropout=0.0), peft.LoraConfig(
            r=2, lora_dropout=0.1, target_modules=["query", "value"]))
        RDropTrainer(model=model, args=make_args(tmp_path))
