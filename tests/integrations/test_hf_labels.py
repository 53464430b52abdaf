"""Causal-LM label shifting is decided from the model itself: a user subclass of a causal LM, a
compiled model and a PEFT model shift their labels (and the fused head with them); classifiers and
encoder-decoder models do not."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import make_args, tiny_bart, tiny_bert, tiny_gpt2, tiny_llama
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from rdrop.integrations.hf import RDropTrainer
from rdrop.integrations.hf.labels import base_model, shifts_labels

torch.set_num_threads(1)


class MyGPT2(GPT2LMHeadModel):
    """A user subclass: its name is in no transformers mapping."""


class MyLlama(LlamaForCausalLM):
    pass


def _my_gpt2(dropout: float = 0.1) -> MyGPT2:
    cfg = tiny_gpt2().config
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(cfg, key, dropout)
    torch.manual_seed(0)
    return MyGPT2(cfg)


def test_subclasses_compiled_and_peft_causal_lms_shift_their_labels():
    gpt2 = _my_gpt2()
    llama = MyLlama(tiny_llama().config)
    assert shifts_labels(gpt2) and shifts_labels(llama)
    assert shifts_labels(torch.compile(tiny_gpt2(), backend="eager"))
    assert shifts_labels(torch.compile(gpt2, backend="eager"))
    assert base_model(torch.compile(gpt2, backend="eager")) is gpt2
    assert not shifts_labels(tiny_bert()) and not shifts_labels(tiny_bart())
    assert not shifts_labels(torch.compile(tiny_bart(), backend="eager"))


def test_peft_wrapped_subclass_shifts_its_labels():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_my_gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"],
                                                            fan_in_fan_out=True))
    assert shifts_labels(model)
    assert shifts_labels(torch.compile(model, backend="eager"))


def _lm_data(n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(0, 40, (7,), generator=g)
        labels = ids.clone()
        labels[4 + i % 3:] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_trainer_trains_a_subclass_on_shifted_labels(tmp_path, compiled, fused):
    # Without dropout both passes are the plain forward, so R-Drop's loss is twice the model's
    # own (shifted) loss: an independent reference for the labels the trainer used.
    data = _lm_data()
    ref_model = _my_gpt2(dropout=0.0).eval()
    batch = {k: torch.stack([r[k] for r in data]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        own = ref_model(**batch).loss.item()  # HF shifts inside its loss
        logits = ref_model(input_ids=batch["input_ids"]).logits
        unshifted = torch.nn.functional.cross_entropy(
            logits.reshape(-1, 40), batch["labels"].reshape(-1)).item()
    assert abs(own - unshifted) > 0.05  # the two readings differ on these data

    kw = {"torch_compile": True, "torch_compile_backend": "eager"} if compiled else {}
    args = make_args(tmp_path, max_steps=1, learning_rate=0.0, rdrop_alpha=1.0,
                     rdrop_fused_linear=fused, **kw)
    if compiled and fused:  # the fused head's hook and a compiled graph: refused, said why
        with pytest.raises(ValueError, match=r"torch\.compile-d model"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            RDropTrainer(model=_my_gpt2(dropout=0.0), args=args, train_dataset=data)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no dropout: the point of the test
        trainer = RDropTrainer(model=_my_gpt2(dropout=0.0), args=args, train_dataset=data)
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "loss" in h]
    assert log["loss"] == pytest.approx(2 * own, rel=1e-5)
    assert log["task_loss_per_pass"] == pytest.approx(own, rel=1e-5)
