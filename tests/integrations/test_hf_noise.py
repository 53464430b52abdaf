"""The HF trainers with ``rdrop_noise=`` (a dropout-free Llama, as shipped) and a multi-label
head (``problem_type="multi_label_classification"``): the passes differ where they must,
evaluation is the plain model's, the fused-linear path and packed batches take the noise, and a
model without randomness gets the warning naming the options."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import (
    VarlenTagger,
    classification_data,
    make_args,
    packed_batch,
    tiny_bert,
    tiny_llama,
)
from transformers import Trainer, TrainingArguments

from rdrop import multilabel_rdrop_loss
from rdrop.integrations.hf import RDropTrainer

torch.set_num_threads(1)


def lm_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 32, (3, 8), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def lm_rows(n: int = 6) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(2, 32, (n, 8), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()}
            for r in ids]


def test_dropout_free_llama_gets_noise_in_training_and_plain_evaluation(tmp_path):
    model = tiny_llama(dropout=0.0)
    plain = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # randomness given: no "no dropout" warning
        trainer = RDropTrainer(model=model, args=make_args(tmp_path),
                               rdrop_noise="embedding:5")
    model.train()
    trainer.compute_loss(model, lm_batch())
    assert trainer._rdrop_window.sums[1] > 0  # the consistency: the two passes differ
    rows = lm_rows()
    ours = trainer.evaluate(rows)["eval_loss"]
    theirs = Trainer(model=plain, args=make_args(tmp_path, cls=TrainingArguments)).evaluate(
        rows)["eval_loss"]
    assert ours == theirs  # evaluation: bit for bit the plain model


def test_a_model_without_randomness_is_warned_with_the_noise_options(tmp_path):
    with pytest.warns(UserWarning, match=r"no dropout with p > 0.*rdrop_noise=: "
                                         r"'embedding:5'.*'dropout:0.1'.*'lora:0.1'"):
        RDropTrainer(model=tiny_llama(dropout=0.0), args=make_args(tmp_path))


def test_a_noise_the_model_cannot_take_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"no LoRA layer.*looked at the model's modules: "
                                         r"'bert' \(BertModel\)"):
        RDropTrainer(model=tiny_bert(), args=make_args(tmp_path), rdrop_noise="lora:0.1")
    with pytest.raises(ValueError, match=r"rdrop_noise='lora' needs a rate"):
        make_args(tmp_path, rdrop_noise="lora")


def test_neftune_beside_embedding_noise_is_refused(tmp_path):
    args = make_args(tmp_path, neftune_noise_alpha=5.0, rdrop_noise="embedding:5")
    with pytest.raises(ValueError, match=r"neftune_noise_alpha=5.0 and rdrop_noise="
                                         r"'embedding:5' would both"):
        RDropTrainer(model=tiny_llama(dropout=0.0), args=args)


def test_fused_linear_with_embedding_noise_equals_the_logits_path(tmp_path):
    losses = {}
    for fused in (False, True):
        model = tiny_llama(dropout=0.0)
        trainer = RDropTrainer(model=model, args=make_args(tmp_path), rdrop_fused_linear=fused,
                               rdrop_noise="embedding:5")
        model.train()
        torch.manual_seed(3)  # the same embedding noise for both paths
        losses[fused] = trainer.compute_loss(model, lm_batch())
        assert trainer._rdrop_window.sums[1] > 0
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)


def test_a_packed_batch_gets_one_copys_noise_scale(tmp_path):
    """The pack's copies lie along its tokens (one row of 2T); each copy's embedding noise has
    NEFTune's scale for the plain pack, alpha / sqrt(T d), not alpha / sqrt(2T d)."""
    batch = packed_batch()
    model = VarlenTagger(p=0.0)
    trainer = RDropTrainer(model=model, args=make_args(tmp_path), rdrop_noise="embedding:5")
    seen = []
    model.emb.register_forward_hook(lambda m, i, o: seen.append((i[0], o.detach())))
    model.train()
    trainer.compute_loss(model, dict(batch))
    ids, out = seen[-1]
    t, d = batch["input_ids"].shape[1], model.emb.embedding_dim
    assert ids.shape == (2 * t,)  # the model embeds the one row of the duplicated pack
    noise = out - model.emb.weight[ids].detach()
    bound = 5.0 / math.sqrt(t * d)
    assert float(noise.abs().max()) <= bound + 1e-6
    assert float(noise.abs().max()) > 0.75 * bound  # 2Td draws; alpha/sqrt(2Td) = 0.71 bound
    assert trainer._rdrop_window.sums[1] > 0


def test_multilabel_head_trains_on_the_bernoulli_consistency(tmp_path):
    model = tiny_bert(num_labels=4)
    model.config.problem_type = "multi_label_classification"
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.logits))
    trainer = RDropTrainer(model=model, args=make_args(tmp_path, rdrop_alpha=0.7))
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1, 50, (4, 8), generator=g),
             "labels": (torch.rand(4, 4, generator=g) < 0.4).float()}
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    first, second = seen[-1].split(4)
    ref = multilabel_rdrop_loss(first, second, batch["labels"], alpha=0.7)
    torch.testing.assert_close(loss, ref.loss)
    assert float(ref.consistency_loss) > 0
    rows = [{"input_ids": r["input_ids"], "labels": [float(i == r["labels"]) for i in range(4)]}
            for r in classification_data(8)]
    trainer = RDropTrainer(model=model, args=make_args(tmp_path, max_steps=2))
    trainer.train_dataset = rows
    trainer.train()
    logs = [h for h in trainer.state.log_history if "consistency_loss" in h]
    assert len(logs) == 2 and all(h["consistency_loss"] > 0 for h in logs)


def test_trl_packed_sft_with_embedding_noise_and_neftune_refused(tmp_path):
    """TRL SFT with packing (padding-free rows, copies laid along the tokens) on a dropout-free
    Llama: with rdrop_noise the two copies differ (consistency > 0); SFTConfig's own
    neftune_noise_alpha beside it is refused; a bad option names rdrop_noise."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from tiny_models import sft_texts, tiny_tokenizer

    from rdrop.integrations.trl import RDropSFTConfig, RDropSFTTrainer

    def config(**kw):
        return RDropSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                              save_strategy="no", logging_steps=1, per_device_train_batch_size=4,
                              disable_tqdm=True, seed=0, bf16=False, max_steps=1,
                              dataset_num_proc=None, packing=True, max_length=24, **kw)

    ds = datasets.Dataset.from_dict({"text": sft_texts(8)})
    trainer = RDropSFTTrainer(model=tiny_llama(dropout=0.0), args=config(
        rdrop_noise="embedding:5"), train_dataset=ds, processing_class=tiny_tokenizer())
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "loss" in h]
    assert log["consistency_loss"] > 0
    with pytest.raises(ValueError, match="would both add noise"):
        RDropSFTTrainer(model=tiny_llama(dropout=0.0), args=config(
            rdrop_noise="embedding:5", neftune_noise_alpha=5.0), train_dataset=ds,
            processing_class=tiny_tokenizer())
    with pytest.raises(ValueError, match=r"rdrop_noise kind must be one of"):
        config(rdrop_noise="gauss")
