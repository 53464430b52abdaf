"""RDropTrainer with ``rdrop_fused_linear=True``: the same loss, logged parts and gradients as the
logits path on the same batch and dropout masks, gradient accumulation equal to the full batch,
and a clear error for models whose logits are not their output layer's plain projection."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from tiny_models import grad_recorder, make_args, pad_collate, seq2seq_data, tiny_bart, tiny_bert
from transformers import Trainer

from rdrop.integrations.hf import (
    RDropSeq2SeqTrainer,
    RDropSeq2SeqTrainingArguments,
    RDropTrainer,
    RDropTrainingArguments,
)

torch.set_num_threads(1)
TOL = {"rtol": 1e-5, "atol": 1e-6}


# ------------------------------------------------------------------------------------ models
class RowKeys:
    """Forward pre-hook on the model: one key per row of ``input_ids``, from its content and how
    many earlier rows of the same forward had that content (its pass)."""

    def __init__(self) -> None:
        self.keys: list[int] = []

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        seen: dict[int, int] = {}
        self.keys = []
        for row in ids.tolist():
            c = zlib.crc32(str(row).encode())
            seen[c] = seen.get(c, 0) + 1
            self.keys.append(c * 8 + seen[c])


class RowKeyedDropout(nn.Dropout):
    """Dropout whose mask of a row depends only on (row key, layer): the same masks whatever the
    grouping into batches and micro-batches, while the two passes of a sample still differ."""

    def __init__(self, p: float, layer: int, keys: RowKeys) -> None:
        super().__init__(p)
        self.layer, self.keys = layer, keys

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return h
        gens = [torch.Generator().manual_seed(k * 64 + self.layer) for k in self.keys.keys]
        masks = [torch.rand(h.shape[1:], generator=g) >= self.p for g in gens]
        return h * torch.stack(masks).to(h.dtype) / (1 - self.p)


def gpt2(seed: int = 0, keyed: bool = False) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                     resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.0 if keyed else 0.3)
    model = GPT2LMHeadModel(cfg)
    if keyed:
        keys = RowKeys()
        model.register_forward_pre_hook(keys, with_kwargs=True)
        drops = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.Dropout) and m.p > 0]
        for i, (name, drop) in enumerate(drops):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, RowKeyedDropout(drop.p, i, keys))
    return model


def llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      attention_dropout=0.2, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"  # dropout through torch's RNG, reproducible by seed
    return LlamaForCausalLM(cfg)


def lm_data(n: int = 8, length: int = 7, seed: int = 0) -> list[dict]:
    """Equal-length rows with a different number of padded (-100) labels each."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(0, 40, (length,), generator=g)
        labels = ids.clone()
        labels[2 + i % (length - 2):] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def lm_batch(n: int = 4) -> dict[str, torch.Tensor]:
    rows = lm_data(n)
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def step(model_fn, tmp_path, fused: bool, batch: dict, trainer_cls=RDropTrainer,
         args_cls=RDropTrainingArguments, **kw: Any):
    """One compute_loss + backward on fresh weights and the same dropout seed."""
    model = model_fn()
    trainer = trainer_cls(model=model, args=make_args(tmp_path, args_cls, **kw),
                          rdrop_fused_linear=fused)
    model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=kw.get("n"))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), grads, trainer._rdrop_window.sums


def assert_same(fused: tuple, plain: tuple) -> None:
    loss_f, grads_f, parts_f = fused
    loss_p, grads_p, parts_p = plain
    torch.testing.assert_close(loss_f, loss_p, **TOL)
    torch.testing.assert_close(parts_f, parts_p, **TOL)  # logged task / consistency terms
    assert parts_p[1] > 0  # dropout is on: the passes differ
    assert grads_f.keys() == grads_p.keys() and len(grads_p) > 5
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], **TOL)


# ------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("model_fn", [gpt2, llama], ids=["gpt2-tied", "llama-untied"])
def test_fused_loss_and_gradients_equal_the_logits_path(tmp_path, model_fn):
    batch = lm_batch()
    kw = {"rdrop_alpha": 0.7, "label_smoothing_factor": 0.1, "rdrop_chunk_size": 5}
    assert_same(step(model_fn, tmp_path, True, batch, **kw),
                step(model_fn, tmp_path, False, batch, **kw))


def test_fused_with_collator_shift_labels(tmp_path):
    batch = lm_batch()
    batch["shift_labels"] = torch.cat([batch["labels"][:, 1:],
                                       torch.full((4, 1), -100)], dim=1)
    assert_same(step(gpt2, tmp_path, True, batch), step(gpt2, tmp_path, False, batch))


def test_fused_seq2seq_equals_the_logits_path(tmp_path):
    batch = pad_collate(seq2seq_data(4))
    kw = {"trainer_cls": RDropSeq2SeqTrainer, "args_cls": RDropSeq2SeqTrainingArguments,
          "rdrop_alpha": 5.0}
    assert_same(step(tiny_bart, tmp_path, True, batch, **kw),
                step(tiny_bart, tmp_path, False, batch, **kw))


def train(tmp_path, fused: bool, batch: int, accumulation: int, steps: int = 1, **kw: Any):
    model = gpt2(keyed=True)
    grads = grad_recorder()
    args = make_args(tmp_path, per_device_train_batch_size=batch, max_steps=steps,
                     gradient_accumulation_steps=accumulation, rdrop_alpha=3.0,
                     rdrop_fused_linear=fused, rdrop_chunk_size=7, **kw)
    trainer = RDropTrainer(model=model, args=args, train_dataset=lm_data(8 * steps),
                           callbacks=[grads])
    trainer.train()
    return grads.grads, [h for h in trainer.state.log_history if "loss" in h]


def test_fused_accumulated_gradient_equals_full_batch(tmp_path):
    (full,), (full_log,) = train(tmp_path, True, 8, 1)
    (acc,), (acc_log,) = train(tmp_path, True, 2, 4)
    (plain,), (plain_log,) = train(tmp_path, False, 8, 1)
    for name in plain:
        torch.testing.assert_close(acc[name], full[name], **TOL)
        torch.testing.assert_close(full[name], plain[name], **TOL)
    for key in ("loss", "task_loss", "consistency_loss"):
        assert acc_log[key] == pytest.approx(full_log[key], rel=1e-5)
        assert full_log[key] == pytest.approx(plain_log[key], rel=1e-5)
    assert full_log["consistency_loss"] > 0


def test_fused_every_k_steps_plain_step_equals_the_logits_path(tmp_path):
    grads_f, logs_f = train(tmp_path, True, 4, 1, steps=2, rdrop_every_k_steps=2)
    grads_p, logs_p = train(tmp_path, False, 4, 1, steps=2, rdrop_every_k_steps=2)
    assert logs_f[1]["consistency_loss"] == 0 and logs_f[0]["consistency_loss"] > 0
    for f, p in zip(logs_f, logs_p, strict=True):
        assert f["loss"] == pytest.approx(p["loss"], rel=1e-5)
        assert f["task_loss"] == pytest.approx(p["task_loss"], rel=1e-5)
    for name in grads_p[1]:
        torch.testing.assert_close(grads_f[1][name], grads_p[1][name], **TOL)


def test_fused_evaluation_is_unchanged(tmp_path):
    data = lm_data(4)
    args = make_args(tmp_path, per_device_eval_batch_size=4, rdrop_fused_linear=True)
    ours = RDropTrainer(model=gpt2(), args=args, eval_dataset=data).evaluate()
    plain = Trainer(model=gpt2(), args=args, eval_dataset=data).evaluate()
    assert ours["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)


# --------------------------------------------------------------------------------- guards
def test_logits_transformed_after_the_head_raise_at_the_first_step(tmp_path):
    model = gpt2()

    def scale_logits(module, args, output):  # e.g. a logit scale the config does not name
        output.logits = output.logits * 2.0
        return output

    model.register_forward_hook(scale_logits)
    args = make_args(tmp_path, max_steps=1, rdrop_fused_linear=True)
    trainer = RDropTrainer(model=model, args=args, train_dataset=lm_data(4))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*rdrop_fused_linear=False"):
        trainer.train()
    # The unfused path trains the same model.
    RDropTrainer(model=model, args=make_args(tmp_path, max_steps=1),
                 train_dataset=lm_data(4)).train()


def test_seq2seq_final_logits_bias_raises_at_the_first_step(tmp_path):
    model = tiny_bart()
    model.final_logits_bias.normal_()  # BART adds it after lm_head (zeros by default)
    args = make_args(tmp_path, RDropSeq2SeqTrainingArguments, max_steps=1,
                     rdrop_fused_linear=True, per_device_train_batch_size=2)
    trainer = RDropSeq2SeqTrainer(model=model, args=args, train_dataset=seq2seq_data(2),
                                  data_collator=pad_collate)
    with pytest.raises(ValueError, match=r"BartForConditionalGeneration.*not its output layer"):
        trainer.train()


def test_soft_capping_model_raises_at_construction(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                       attention_dropout=0.1, final_logit_softcapping=30.0)
    with pytest.raises(ValueError, match=r"Gemma2ForCausalLM.*final_logit_softcapping=30.0"):
        RDropTrainer(model=Gemma2ForCausalLM(cfg), args=make_args(tmp_path),
                     rdrop_fused_linear=True)


@pytest.mark.parametrize(("kw", "match"), [
    ({"rdrop_num_passes": 3}, "rdrop_num_passes=2 only"),
    ({"rdrop_consistency": "js"}, "symmetric KL only"),
    ({"rdrop_chunk_size": 0}, "rdrop_chunk_size"),
])
def test_invalid_fused_options_raise(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, rdrop_fused_linear=True, **kw)
    with pytest.raises(ValueError, match=match):
        RDropTrainer(model=gpt2(), args=make_args(tmp_path), rdrop_fused_linear=True, **kw)


def test_fused_needs_a_language_model_head(tmp_path):
    with pytest.raises(ValueError, match="BertForSequenceClassification"):
        RDropTrainer(model=tiny_bert(), args=make_args(tmp_path), rdrop_fused_linear=True)


def test_fused_options_from_args_and_constructor(tmp_path):
    args = make_args(tmp_path, rdrop_fused_linear=True, rdrop_chunk_size=64)
    trainer = RDropTrainer(model=gpt2(), args=args, rdrop_chunk_size=128)
    assert (trainer.rdrop_fused_linear, trainer.rdrop_chunk_size) == (True, 128)
    off = RDropTrainer(model=gpt2(), args=args, rdrop_fused_linear=False)
    assert off.rdrop_fused_linear is False
