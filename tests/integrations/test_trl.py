"""RDropSFTTrainer / RDropSFTConfig (TRL): TRL's defaults and metrics kept, the loss is R-Drop,
packed and padding-free batches are duplicated with consistent varlen metadata."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

import datasets
from tiny_models import (
    VarlenTagger,
    make_args,
    packed_batch,
    sft_texts,
    tiny_llama,
    tiny_tokenizer,
)
from trl import SFTConfig, SFTTrainer

from rdrop.integrations.hf import RDropTrainer
from rdrop.integrations.trl import RDropSFTConfig, RDropSFTTrainer
from rdrop.losses.functional import rdrop_loss

torch.set_num_threads(1)


def sft_args(tmp_path, cls=RDropSFTConfig, **kw):
    base = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True,
            "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 4,
            "disable_tqdm": True, "seed": 0, "bf16": False, "max_steps": 1,
            "dataset_num_proc": None}
    base.update(kw)
    return cls(**base)


def train_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


class Recorder:
    """Keeps the logits of every training forward and the labels of every batch."""

    def __init__(self, model, trainer) -> None:
        self.logits: list[torch.Tensor] = []
        self.batches: list[dict] = []
        model.register_forward_hook(self._hook)
        collate = trainer.data_collator

        def record(rows):
            batch = collate(rows)
            self.batches.append({k: v.clone() if torch.is_tensor(v) else v
                                 for k, v in batch.items()})
            return batch

        trainer.data_collator = record

    def _hook(self, module, args, output) -> None:
        logits = getattr(output, "logits", None)  # plain SFT's fused head returns none
        if module.training and logits is not None:
            self.logits.append(logits.detach().clone())


# ------------------------------------------------------------------------------- config
def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def test_config_keeps_every_sft_default():
    ours = {f.name: f for f in dataclasses.fields(RDropSFTConfig)}
    theirs = {f.name: f for f in dataclasses.fields(SFTConfig)}
    assert set(ours) - set(theirs) == {n for n in ours if n.startswith("rdrop_")}
    differ = [n for n, f in theirs.items() if _default(ours[n]) != _default(f)]
    assert differ == []
    # The four the issue saw reset by a naive subclass, on instances too.
    a = RDropSFTConfig(output_dir="out", report_to="none", use_cpu=True)
    b = SFTConfig(output_dir="out", report_to="none", use_cpu=True)
    for name in ("learning_rate", "logging_steps", "bf16", "gradient_checkpointing"):
        assert getattr(a, name) == getattr(b, name), name


def test_config_validates_rdrop_fields():
    with pytest.raises(ValueError, match="rdrop_alpha"):
        RDropSFTConfig(output_dir="out", rdrop_alpha=-1.0)


# ------------------------------------------------------------------------- loss, metrics
def test_sft_loss_is_rdrop_and_sft_metrics_are_logged(tmp_path):
    model = tiny_llama()
    args = sft_args(tmp_path, rdrop_alpha=0.7, learning_rate=0.0)
    ds = datasets.Dataset.from_dict({"text": sft_texts(4)})
    trainer = RDropSFTTrainer(model=model, args=args, train_dataset=ds,
                              processing_class=tiny_tokenizer())
    rec = Recorder(model, trainer)
    trainer.train()
    (log,) = train_logs(trainer)
    (logits,) = rec.logits
    (batch,) = rec.batches
    assert logits.shape[0] == 8  # one forward over [x; x]
    p1, p2 = logits[:4, :-1], logits[4:, :-1]
    y = batch["labels"][:, 1:]
    ref = rdrop_loss(p1, p2, y, alpha=0.7)
    assert log["loss"] == pytest.approx(ref.loss.item(), rel=1e-5)
    assert log["consistency_loss"] == pytest.approx(ref.consistency_loss.item(), rel=1e-4)
    assert log["consistency_loss"] > 0
    assert log["task_loss_per_pass"] == pytest.approx(ref.task_loss.item() / 2, rel=1e-5)
    # SFT's metrics, of the first pass, written out.
    keep = y != -100
    logp = torch.log_softmax(p1[keep].double(), -1)
    entropy = -(logp.exp() * logp).sum(-1).mean().item()
    accuracy = (p1[keep].argmax(-1) == y[keep]).double().mean().item()
    assert log["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert log["mean_token_accuracy"] == pytest.approx(accuracy, abs=1e-7)
    assert log["num_tokens"] == batch["attention_mask"].sum().item()


def _first_logged_loss(trainer_cls, args_cls, tmp_path, **kw) -> dict:
    model = tiny_llama(dropout=0.0)
    ds = datasets.Dataset.from_dict({"text": sft_texts(8)})
    args = sft_args(tmp_path, cls=args_cls, learning_rate=0.0, packing=True, max_length=24, **kw)
    trainer = trainer_cls(model=model, args=args, train_dataset=ds,
                          processing_class=tiny_tokenizer())
    rec = Recorder(model, trainer)
    trainer.train()
    return {"log": train_logs(trainer)[0], "batch": rec.batches[0], "logits": rec.logits}


def test_packed_batch_copies_do_not_see_each_other(tmp_path):
    """Packing (bfd, padding-free) through a tiny Llama without dropout: the two copies laid
    along the tokens attend only within their own sequences, so each equals plain SFT's single
    pass: consistency 0, task_loss_per_pass = plain SFT's loss, and 2x the tokens."""
    with pytest.warns(UserWarning, match="no dropout"):
        ours = _first_logged_loss(RDropSFTTrainer, RDropSFTConfig, tmp_path / "a")
    plain = _first_logged_loss(SFTTrainer, SFTConfig, tmp_path / "b")
    batch = ours["batch"]
    assert "cu_seq_lens_q" in batch and batch["input_ids"].shape[0] == 1
    (logits,) = ours["logits"]
    t = batch["input_ids"].shape[1]
    assert logits.shape[:2] == (1, 2 * t)
    torch.testing.assert_close(logits[:, :t], logits[:, t:], rtol=0, atol=1e-6)
    assert ours["log"]["consistency_loss"] == pytest.approx(0.0, abs=1e-9)
    assert ours["log"]["task_loss_per_pass"] == pytest.approx(plain["log"]["loss"], rel=1e-5)
    assert ours["log"]["num_tokens"] == plain["log"]["num_tokens"] == t
    assert ours["log"]["mean_token_accuracy"] == pytest.approx(
        plain["log"]["mean_token_accuracy"], abs=1e-6)


def test_padding_free_batch_with_dropout_is_the_reference_loss(tmp_path):
    model = tiny_llama(dropout=0.2)
    ds = datasets.Dataset.from_dict({"text": sft_texts(8)})
    args = sft_args(tmp_path, learning_rate=0.0, packing=True, max_length=24, rdrop_alpha=2.0)
    trainer = RDropSFTTrainer(model=model, args=args, train_dataset=ds,
                              processing_class=tiny_tokenizer())
    rec = Recorder(model, trainer)
    trainer.train()
    (log,) = train_logs(trainer)
    (logits,) = rec.logits
    batch = rec.batches[0]
    t = batch["input_ids"].shape[1]
    y = batch["labels"][:, 1:]
    ref = rdrop_loss(logits[:, :t - 1], logits[:, t:-1], y, alpha=2.0)
    assert log["loss"] == pytest.approx(ref.loss.item(), rel=1e-5)
    assert log["consistency_loss"] > 0


# ------------------------------------------------------------------ varlen metadata checked
def test_varlen_model_gets_consistent_metadata(tmp_path):
    """A model that reads cu_seq_lens/max_length as a varlen kernel would (and raises on
    metadata that does not describe its tokens) trains on the duplicated pack; without dropout
    the copies equal the single forward."""
    batch = packed_batch()
    model = VarlenTagger(p=0.0)
    with pytest.warns(UserWarning, match="no dropout"):
        trainer = RDropTrainer(model=model, args=make_args(tmp_path))
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    assert model.calls[-1] == {"n": 18, "cu": [0, 3, 7, 9, 12, 16, 18]}
    single = model(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
    ref = rdrop_loss(single, single, batch["labels"], alpha=1.0)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-6, atol=1e-7)

    model = VarlenTagger(p=0.3)
    trainer = RDropTrainer(model=model, args=make_args(tmp_path))
    model.train()
    out = trainer.compute_loss(model, dict(batch))
    assert math.isfinite(out.item()) and trainer._rdrop_window.sums[1] > 0


def test_padding_free_rows_without_boundaries_are_refused_for_flash_attention(tmp_path):
    model = tiny_llama()
    model.config._attn_implementation = "flash_attention_2"
    batch = packed_batch(vocab=32)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
        batch.pop(key)
    trainer = RDropTrainer(model=model, args=make_args(tmp_path))
    model.train()
    with pytest.raises(ValueError, match="flash attention finds the sequences from position_ids"):
        trainer.compute_loss(model, batch)


def test_non_nll_loss_type_is_refused(tmp_path):
    ds = datasets.Dataset.from_dict({"text": sft_texts(4)})
    with pytest.raises(ValueError, match="loss_type='dft'"):
        RDropSFTTrainer(model=tiny_llama(), args=sft_args(tmp_path, loss_type="dft"),
                        train_dataset=ds, processing_class=tiny_tokenizer())


def test_gradient_without_dropout_is_twice_plain_sfts(tmp_path):
    """With no dropout the passes are identical, the KL and its gradient vanish, and R-Drop's
    gradient is exactly twice plain SFT's (two CE terms; TRL's own loss as the reference), on
    packed batches."""
    from tiny_models import grad_recorder

    grads = {}
    for name, (trainer_cls, args_cls) in {"rdrop": (RDropSFTTrainer, RDropSFTConfig),
                                          "plain": (SFTTrainer, SFTConfig)}.items():
        rec = grad_recorder()
        ds = datasets.Dataset.from_dict({"text": sft_texts(8)})
        args = sft_args(tmp_path / name, cls=args_cls, learning_rate=0.0, packing=True,
                        max_length=24, gradient_checkpointing=True, max_grad_norm=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # no dropout: the point of the test
            trainer = trainer_cls(model=tiny_llama(dropout=0.0), args=args, train_dataset=ds,
                                  processing_class=tiny_tokenizer(), callbacks=[rec])
        trainer.train()
        (grads[name],) = rec.grads
    diff = max((grads["rdrop"][n] - 2 * g).abs().max().item() for n, g in grads["plain"].items())
    assert diff < 1e-6, diff


# ----------------------------------------------------------- label shift from the model itself
@pytest.mark.parametrize("compiled", [False, True])
def test_subclass_of_a_causal_lm_is_trained_on_shifted_labels(tmp_path, compiled):
    """A user subclass (``class MyLlama(LlamaForCausalLM)``), compiled or not, trains as the
    class it extends: without dropout R-Drop's loss is twice plain SFT's on LlamaForCausalLM
    itself (TRL's own shifted loss), the same weights and batch."""
    from transformers import LlamaForCausalLM

    class MyLlama(LlamaForCausalLM):
        pass

    def first_log(name, trainer_cls, args_cls, model_cls, **kw):
        base = tiny_llama(dropout=0.0)
        model = model_cls(base.config)
        model.load_state_dict(base.state_dict())
        ds = datasets.Dataset.from_dict({"text": sft_texts(4)})
        args = sft_args(tmp_path / name, cls=args_cls, learning_rate=0.0, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # no dropout: the point of the test
            trainer = trainer_cls(model=model, args=args, train_dataset=ds,
                                  processing_class=tiny_tokenizer())
        trainer.train()
        return train_logs(trainer)[0]

    plain = first_log("plain", SFTTrainer, SFTConfig, LlamaForCausalLM)
    kw = {"torch_compile": True, "torch_compile_backend": "eager"} if compiled else {}
    mine = first_log("rdrop", RDropSFTTrainer, RDropSFTConfig, MyLlama, **kw)
    assert mine["loss"] == pytest.approx(2 * plain["loss"], rel=1e-5)
    assert mine["task_loss_per_pass"] == pytest.approx(plain["loss"], rel=1e-5)
