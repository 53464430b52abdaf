"""rdrop.training.noise on real Hugging Face and PEFT models whose dropout is 0 (as Llama ships):
each source makes the copies of a training batch differ, and eval forwards and generation stay
bit-identical to the plain model."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import tiny_llama

from rdrop.training.noise import attach_noise

torch.set_num_threads(1)


def tiny_gpt2_without_dropout():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def llama_with_lora():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(dropout=0.0), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at 0 (the adapters add nothing yet): give it a value
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return model


MODELS = {
    "llama-embedding": (lambda: tiny_llama(dropout=0.0), "embedding:5", ["model.embed_tokens"]),
    "llama-dropout": (lambda: tiny_llama(dropout=0.0), "dropout:0.3",
                      ["model.layers.0.self_attn.attention_dropout"]),
    "gpt2-dropout": (tiny_gpt2_without_dropout, "dropout:0.3", ["transformer.drop"]),
    "llama-lora": (llama_with_lora, "lora:0.3",
                   ["base_model.model.model.layers.0.self_attn.q_proj.lora_dropout.default"]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_noise_makes_the_copies_differ_and_leaves_eval_and_generation_plain(name):
    build, spec, some_targets = MODELS[name]
    model = build()
    plain = copy.deepcopy(model)
    ids = torch.randint(2, 30, (2, 6))
    model.train()
    with torch.no_grad():
        assert torch.equal(*model(input_ids=torch.cat([ids, ids])).logits.split(2))  # no noise
    handle = attach_noise(model, spec)
    assert set(some_targets) <= set(handle.targets)
    with torch.no_grad():
        first, second = model(input_ids=torch.cat([ids, ids])).logits.split(2)
    assert not torch.equal(first, second)  # each copy drew its own noise
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)
        kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(model.generate(input_ids=ids, **kwargs),
                           plain.generate(input_ids=ids, **kwargs))
    handle.remove()
    model.train()
    with torch.no_grad():
        assert torch.equal(*model(input_ids=torch.cat([ids, ids])).logits.split(2))
