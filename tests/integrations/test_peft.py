"""PEFT LoRA under RDropTrainer: the KL is exactly 0 at the first step (LoRA's B starts at 0) and
positive after; without dropout the adapters' gradient is exactly twice the plain Trainer's."""

from __future__ import annotations

import warnings

import pytest
import torch

peft = pytest.importorskip("peft")

from tiny_models import classification_data, grad_recorder, make_args, tiny_bert  # noqa: E402
from transformers import Trainer  # noqa: E402

from rdrop.integrations.hf import RDropTrainer  # noqa: E402

torch.set_num_threads(1)


def lora(model, dropout: float):
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                             target_modules=["query", "value"], modules_to_save=["classifier"])
    return peft.get_peft_model(model, config)


def test_consistency_is_exactly_zero_at_the_first_step_only(tmp_path):
    model = lora(tiny_bert(dropout=0.0), dropout=0.3)  # only the adapters have dropout
    args = make_args(tmp_path, max_steps=3, learning_rate=1e-2, remove_unused_columns=False)
    trainer = RDropTrainer(model=model, args=args, train_dataset=classification_data(12))
    trainer.train()
    cons = [h["consistency_loss"] for h in trainer.state.log_history if "loss" in h]
    assert cons[0] == 0.0  # B = 0: every adapter adds 0 whatever its dropout mask
    assert all(c > 0 for c in cons[1:])  # after one update B != 0 and the passes differ


def test_adapter_gradient_without_dropout_is_twice_the_plain_trainers(tmp_path):
    grads = {}
    for name, cls in {"rdrop": RDropTrainer, "plain": Trainer}.items():
        rec = grad_recorder()
        args = make_args(tmp_path / name, max_steps=1, learning_rate=0.0, max_grad_norm=0.0,
                         remove_unused_columns=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # no dropout: the point of the test
            trainer = cls(model=lora(tiny_bert(dropout=0.0), dropout=0.0), args=args,
                          train_dataset=classification_data(4), callbacks=[rec])
        trainer.train()
        (grads[name],) = rec.grads
    assert grads["rdrop"].keys() == grads["plain"].keys() and len(grads["plain"]) >= 4
    diff = max((grads["rdrop"][n] - 2 * g).abs().max().item() for n, g in grads["plain"].items())
    assert diff < 1e-6, diff
