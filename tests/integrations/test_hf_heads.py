"""Heads beyond sequence classification under RDropTrainer, checked against the literal float64
references (tests/reference.py), values and gradients: token classification (per-token KL over
the labelled tokens, -100 elsewhere) and regression (MSE)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import make_args, tiny_bert

from rdrop.integrations.hf import RDropTrainer

from reference import reference_mse_rdrop_loss, reference_rdrop_loss

torch.set_num_threads(1)


def tiny_token_tagger(num_labels: int = 5):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=num_labels,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return BertForTokenClassification(cfg)


def loss_and_logits(trainer, model, batch):
    """The trainer's training loss of ``batch`` and the logits of its forward (gradient kept)."""
    seen = []

    def keep(module, args, output):
        output.logits.retain_grad()
        seen.append(output.logits)

    handle = model.register_forward_hook(keep)
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    handle.remove()
    loss.backward()
    return loss, seen[-1]


def check_against(loss, logits, reference):
    leaf = logits.detach().double().requires_grad_()
    ref = reference(leaf)
    torch.testing.assert_close(loss.double(), ref["loss"], rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(ref["loss"], leaf)
    torch.testing.assert_close(logits.grad.double(), grad, rtol=1e-4, atol=1e-7)
    assert float(ref["consistency_loss"].detach()) > 0


def test_token_classification_is_the_per_token_rdrop_loss(tmp_path):
    model = tiny_token_tagger()
    trainer = RDropTrainer(model=model, args=make_args(tmp_path, rdrop_alpha=0.7))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (3, 7), generator=g)
    labels = torch.randint(0, 5, (3, 7), generator=g)
    labels[:, 0] = -100  # [CLS]
    labels[0, 4:] = -100  # padding, and a word's later sub-tokens
    labels[2, 2] = -100
    loss, logits = loss_and_logits(trainer, model, {"input_ids": ids, "labels": labels})
    check_against(loss, logits, lambda z: reference_rdrop_loss([z[:3], z[3:]], labels, 0.7))


def test_regression_is_the_mse_rdrop_loss(tmp_path):
    model = tiny_bert(num_labels=1)
    trainer = RDropTrainer(model=model, args=make_args(tmp_path, rdrop_alpha=2.0))
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1, 50, (4, 8), generator=g),
             "labels": torch.randn(4, generator=g)}
    loss, logits = loss_and_logits(trainer, model, batch)
    check_against(loss, logits, lambda z: reference_mse_rdrop_loss(z[:4], z[4:],
                                                                   batch["labels"], 2.0))
