"""RDropTrainer / RDropSeq2SeqTrainer: the loss they log is rdrop's functional loss on the same
forward, gradient accumulation gives the full-batch gradient, evaluation is unchanged."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import (
    KeyedDropout,
    TokenTagger,
    TokenTaggerKw,
    VarlenTagger,
    classification_data,
    grad_recorder,
    make_args,
    packed_batch,
    pad_collate,
    seq2seq_data,
    tagging_data,
    tiny_bart,
    tiny_bert,
    tiny_gpt2,
)
from transformers import Trainer, TrainingArguments

from rdrop.integrations.hf import (
    RDropSeq2SeqTrainer,
    RDropSeq2SeqTrainingArguments,
    RDropTrainer,
    RDropTrainingArguments,
)
from rdrop.losses.functional import multi_pass_rdrop_loss, rdrop_loss

torch.set_num_threads(1)


class LogitsRecorder:
    """Forward hook keeping the logits of every training forward (the model's real outputs)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.logits: list[torch.Tensor] = []
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        if module.training:
            logits = output["logits"] if isinstance(output, dict) else output.logits
            self.logits.append(logits.detach().clone())


class RecordingCollator:
    """The collator of the run, keeping each batch's labels (the order the sampler chose)."""

    def __init__(self, collate=None) -> None:
        from transformers import default_data_collator

        self.collate = collate or default_data_collator
        self.labels: list[torch.Tensor] = []

    def __call__(self, rows):
        batch = self.collate(rows)
        self.labels.append(batch["labels"].clone())
        return batch


def train_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------------------------- imports
def test_missing_transformers_names_the_extra():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import rdrop, rdrop.integrations\n"
        "try:\n    import rdrop.integrations.hf\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert "pip install 'torch-rdrop[hf]'" in out.stdout


# ------------------------------------------------------------------------ loss equals functional
def test_classification_logged_loss_is_the_functional_loss(tmp_path):
    model = tiny_bert()
    rec = LogitsRecorder(model)
    data = classification_data(8)
    args = make_args(tmp_path, gradient_accumulation_steps=2, max_steps=1, learning_rate=0.0,
                     rdrop_alpha=0.7, label_smoothing_factor=0.1)
    collate = RecordingCollator()
    trainer = RDropTrainer(model=model, args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    (log,) = train_logs(trainer)
    assert len(rec.logits) == 2 and rec.logits[0].shape == (8, 3)  # 2 micro-batches of [x; x]
    p1 = torch.cat([x[:4] for x in rec.logits])
    p2 = torch.cat([x[4:] for x in rec.logits])
    y = torch.cat(collate.labels)
    ref = rdrop_loss(p1, p2, y, alpha=0.7, label_smoothing=0.1)  # smoothing applied once
    assert log["loss"] == pytest.approx(ref.loss.item(), rel=1e-5)
    assert log["task_loss"] == pytest.approx(ref.task_loss.item(), rel=1e-5)
    assert log["consistency_loss"] == pytest.approx(ref.consistency_loss.item(), rel=1e-4)
    assert log["consistency_loss"] > 0


def test_regression_head_uses_mse_consistency(tmp_path):
    model = tiny_bert(num_labels=1)
    rec = LogitsRecorder(model)
    data = classification_data(4, regression=True)
    args = make_args(tmp_path, max_steps=1, learning_rate=0.0, rdrop_alpha=2.0)
    collate = RecordingCollator()
    trainer = RDropTrainer(model=model, args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    (log,) = train_logs(trainer)
    (y,) = collate.labels
    (logits,) = rec.logits
    ref = rdrop_loss(logits[:4], logits[4:], y, alpha=2.0, consistency="mse")
    assert log["loss"] == pytest.approx(ref.loss.item(), rel=1e-5)
    assert log["consistency_loss"] > 0


def test_causal_lm_logits_and_labels_are_shifted(tmp_path):
    model = tiny_gpt2()
    rec = LogitsRecorder(model)
    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(4):
        ids = torch.randint(0, 40, (7,), generator=g)
        labels = ids.clone()
        labels[4 + i % 3:] = -100
        data.append({"input_ids": ids, "labels": labels})
    args = make_args(tmp_path, max_steps=1, learning_rate=0.0, rdrop_alpha=1.0)
    collate = RecordingCollator()
    trainer = RDropTrainer(model=model, args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    (log,) = train_logs(trainer)
    (y,) = collate.labels
    (logits,) = rec.logits
    ref = rdrop_loss(logits[:4, :-1], logits[4:, :-1], y[:, 1:], alpha=1.0)
    assert log["loss"] == pytest.approx(ref.loss.item(), rel=1e-5)


def test_seq2seq_trains_with_accumulation_and_evaluates_with_generate(tmp_path):
    model = tiny_bart()
    rec = LogitsRecorder(model)
    data = seq2seq_data(8)
    args = make_args(tmp_path, RDropSeq2SeqTrainingArguments, gradient_accumulation_steps=2,
                     max_steps=2, rdrop_alpha=5.0, per_device_train_batch_size=2,
                     predict_with_generate=True, generation_max_length=8,
                     per_device_eval_batch_size=4, learning_rate=0.0)
    collate = RecordingCollator(pad_collate)
    trainer = RDropSeq2SeqTrainer(model=model, args=args, train_dataset=data, eval_dataset=data[:4],
                                  data_collator=collate)
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 2 and all(log["consistency_loss"] > 0 for log in logs)
    # Step 1 = the first two micro-batches; labels align with the decoder logits (no shift).
    labels = collate.labels[:2]
    n = sum(int(y.ne(-100).sum()) for y in labels)
    task = cons = 0.0
    for logits, y in zip(rec.logits[:2], labels, strict=True):
        out = rdrop_loss(logits[:2], logits[2:], y, alpha=5.0, num_items_in_batch=n)
        task, cons = task + out.task_loss.item(), cons + out.consistency_loss.item()
    assert logs[0]["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs[0]["loss"] == pytest.approx(task + 5.0 * cons, rel=1e-5)
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    preds = trainer.predict(data[:2]).predictions
    assert preds.shape[0] == 2


# --------------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("model_cls", [TokenTagger, TokenTaggerKw], ids=["count-by-rdrop",
                                                                       "count-by-trainer"])
def test_accumulated_gradient_equals_full_batch_gradient(tmp_path, model_cls):
    data = tagging_data(8)
    counts = [int(r["labels"].ne(-100).sum()) for r in data]
    assert len(set(counts)) > 1  # uneven padding: per-micro-batch means would be wrong

    def run(batch: int, accumulation: int) -> tuple[dict, dict]:
        model = model_cls(seed=0)
        grads = grad_recorder()
        args = make_args(tmp_path, per_device_train_batch_size=batch, max_steps=1,
                         gradient_accumulation_steps=accumulation, rdrop_alpha=3.0,
                         remove_unused_columns=False)
        trainer = RDropTrainer(model=model, args=args, train_dataset=data, callbacks=[grads])
        trainer.train()
        seen = sorted(i for ids in model.drop.seen for i in ids)
        assert seen == sorted(list(range(8)) * 2)  # every sample, twice, once per step
        return grads.grads[0], train_logs(trainer)[0]

    full, full_log = run(8, 1)
    acc, acc_log = run(2, 4)
    for name in full:
        torch.testing.assert_close(acc[name], full[name], rtol=1e-5, atol=1e-6)
    assert acc_log["loss"] == pytest.approx(full_log["loss"], rel=1e-5)
    assert acc_log["consistency_loss"] == pytest.approx(full_log["consistency_loss"], rel=1e-5)
    assert full_log["consistency_loss"] > 0


class KeyedRegressor(torch.nn.Module):
    """(B, F) features -> (B, D) predictions, with keyed dropout (masks fixed per sample and
    pass, so micro-batches draw the full batch's masks)."""

    def __init__(self, features: int = 5, outputs: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = torch.nn.Linear(features, 8)
        self.drop = KeyedDropout(0.3)
        self.out = torch.nn.Linear(8, outputs)

    def forward(self, x, sample_id, labels=None):
        return {"logits": self.out(self.drop(torch.tanh(self.hidden(x)), sample_id))}


class KeyedRegressorKw(KeyedRegressor):
    """The same with ``**kwargs``: the HF Trainer counts num_items_in_batch itself, as
    ``labels.ne(-100).sum()``, which is ``N * D`` for ``(N, D)`` float labels."""

    def forward(self, x, sample_id, labels=None, **kwargs):
        return super().forward(x, sample_id)


@pytest.mark.parametrize("model_cls", [KeyedRegressor, KeyedRegressorKw],
                         ids=["count-by-rdrop", "count-by-trainer"])
def test_regression_head_with_several_outputs_is_a_mean_over_samples(tmp_path, model_cls):
    n, d, alpha = 4, 3, 2.0
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(5, generator=g), "sample_id": torch.tensor(i),
             "labels": torch.randn(d, generator=g)} for i in range(n)]

    def run(batch: int, accumulation: int) -> tuple[dict, dict]:
        model = model_cls()
        grads = grad_recorder()
        args = make_args(tmp_path, per_device_train_batch_size=batch, max_steps=1,
                         gradient_accumulation_steps=accumulation, rdrop_alpha=alpha,
                         remove_unused_columns=False, max_grad_norm=0.0)  # no clipping
        trainer = RDropTrainer(model=model, args=args, train_dataset=data, callbacks=[grads])
        trainer.train()
        return grads.grads[0], train_logs(trainer)[0]

    # Literal float64 formula over the whole batch, on the masks the trainer draws (pass 0 then
    # pass 1 of each sample): (1/N) sum_i [mean_d (p1-y)^2 + mean_d (p2-y)^2
    #                                       + alpha mean_d (p1-p2)^2]
    ref_model = model_cls().double()
    x = torch.stack([r["x"] for r in data]).double()
    ids = torch.arange(n)
    y = torch.stack([r["labels"] for r in data]).double()
    logits = ref_model(torch.cat([x, x]), torch.cat([ids, ids]))["logits"]
    p1, p2 = logits[:n], logits[n:]
    total = 0.0
    for i in range(n):
        total = total + (sum((p1[i, j] - y[i, j]) ** 2 for j in range(d)) / d
                         + sum((p2[i, j] - y[i, j]) ** 2 for j in range(d)) / d
                         + alpha * sum((p1[i, j] - p2[i, j]) ** 2 for j in range(d)) / d)
    ref_loss = total / n
    ref_loss.backward()

    full, full_log = run(4, 1)
    acc, acc_log = run(2, 2)
    assert full_log["loss"] == pytest.approx(ref_loss.item(), rel=1e-5)
    assert acc_log["loss"] == pytest.approx(ref_loss.item(), rel=1e-5)
    assert full_log["consistency_loss"] > 0
    for name, param in ref_model.named_parameters():
        torch.testing.assert_close(full[name].double(), param.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(acc[name].double(), param.grad, rtol=1e-5, atol=1e-7)


def test_packed_batch_seq_idx_reaches_the_model_renumbered_for_the_second_copy(tmp_path):
    received = []

    class SeqIdxTagger(VarlenTagger):
        def forward(self, *args, seq_idx=None, **kwargs):
            received.append(seq_idx)
            return super().forward(*args, **kwargs)

    batch = packed_batch()  # sequences of 3, 4, 2 tokens, as TRL's padding-free collator
    batch["seq_idx"] = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]], dtype=torch.int32)
    model = SeqIdxTagger()
    trainer = RDropTrainer(model=model, args=make_args(tmp_path))
    model.train()
    trainer.compute_loss(model, dict(batch))
    (seq_idx,) = received
    assert seq_idx.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5]]
    assert model.calls[-1] == {"n": 18, "cu": [0, 3, 7, 9, 12, 16, 18]}


def test_num_items_in_batch_halves_the_loss(tmp_path):
    model = tiny_bert()
    trainer = RDropTrainer(model=model, args=make_args(tmp_path))
    batch = pad_collate([{"input_ids": r["input_ids"].tolist(), "labels": [r["labels"]]}
                         for r in classification_data(4)])
    batch["labels"] = batch["labels"][:, 0]
    model.train()
    losses = []
    for n in (4, 8):
        torch.manual_seed(0)  # the same dropout masks in both calls
        losses.append(trainer.compute_loss(model, dict(batch), num_items_in_batch=n))
    torch.testing.assert_close(losses[1], losses[0] / 2)
    torch.manual_seed(0)
    local = trainer.compute_loss(model, dict(batch))  # None: the local count (4)
    torch.testing.assert_close(local, losses[0])


# ------------------------------------------------------------------------ hyperparameters
def test_hyperparameters_from_args_and_constructor(tmp_path):
    args = make_args(tmp_path, rdrop_alpha=0.3, rdrop_num_passes=3, rdrop_every_k_steps=2)
    trainer = RDropTrainer(model=tiny_bert(), args=args, rdrop_alpha=0.9)
    assert (trainer.rdrop_alpha, trainer.rdrop_num_passes, trainer.rdrop_every_k_steps) == (
        0.9, 3, 2)  # the constructor wins over the arguments
    plain = RDropTrainer(model=tiny_bert(), args=TrainingArguments(str(tmp_path),
                                                                   report_to="none"))
    assert (plain.rdrop_alpha, plain.rdrop_num_passes, plain.rdrop_consistency) == (1.0, 2, None)


def test_arguments_keep_output_dir_first():
    for cls in (RDropTrainingArguments, RDropSeq2SeqTrainingArguments):
        args = cls("some_dir", report_to="none", rdrop_alpha=2.0)
        assert (args.output_dir, args.rdrop_alpha) == ("some_dir", 2.0)


@pytest.mark.parametrize(("kw", "err", "match"), [
    ({"rdrop_alpha": -1.0}, ValueError, "rdrop_alpha"),
    ({"rdrop_alpha": "1"}, TypeError, "rdrop_alpha"),
    ({"rdrop_num_passes": 1}, ValueError, "rdrop_num_passes must be >= 2"),
    ({"rdrop_every_k_steps": 0}, ValueError, "rdrop_every_k_steps"),
    ({"rdrop_consistency": "l2"}, ValueError, "rdrop_consistency"),
])
def test_invalid_hyperparameters_raise(tmp_path, kw, err, match):
    with pytest.raises(err, match=match):
        make_args(tmp_path, **kw)
    with pytest.raises(err, match=match):
        RDropTrainer(model=tiny_bert(), args=make_args(tmp_path), **kw)


def test_compute_loss_func_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compute_loss_func"):
        RDropTrainer(model=tiny_bert(), args=make_args(tmp_path),
                     compute_loss_func=lambda *a, **k: 0)


def test_every_k_steps_and_num_passes(tmp_path):
    model = tiny_bert()
    rec = LogitsRecorder(model)
    args = make_args(tmp_path, max_steps=2, rdrop_every_k_steps=2, rdrop_num_passes=3)
    collate = RecordingCollator()
    trainer = RDropTrainer(model=model, args=args, train_dataset=classification_data(8),
                           data_collator=collate)
    trainer.train()
    assert [x.shape[0] for x in rec.logits] == [12, 4]  # 3 passes, then a plain step
    logs = train_logs(trainer)
    assert logs[0]["consistency_loss"] > 0 and logs[1]["consistency_loss"] == 0
    p = rec.logits[0]
    y = collate.labels[0]
    ref = multi_pass_rdrop_loss([p[:4], p[4:8], p[8:]], y, alpha=1.0)
    assert logs[0]["loss"] == pytest.approx(ref.loss.item(), rel=1e-5)


def test_logs_average_over_the_logging_window(tmp_path):
    args = make_args(tmp_path, max_steps=4, logging_steps=2, learning_rate=0.0)
    trainer = RDropTrainer(model=tiny_bert(), args=args, train_dataset=classification_data(16))
    trainer.train()
    logs = train_logs(trainer)
    assert [h["step"] for h in logs] == [2, 4]
    for log in logs:  # loss is averaged over 2 steps by the Trainer; the parts the same way
        assert log["loss"] == pytest.approx(log["task_loss"] + log["consistency_loss"], rel=1e-5)


# -------------------------------------------------------------------------------- checks
def test_no_dropout_warns(tmp_path):
    with pytest.warns(UserWarning, match="no dropout"):
        RDropTrainer(model=tiny_bert(dropout=0.0), args=make_args(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        RDropTrainer(model=tiny_bert(), args=make_args(tmp_path))


class NoLogits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x, labels=None):
        return {"hidden": self.drop(self.lin(x))}


def test_model_without_logits_raises(tmp_path):
    data = [{"x": torch.randn(4), "labels": 1} for _ in range(4)]
    trainer = RDropTrainer(model=NoLogits(), args=make_args(tmp_path, max_steps=1),
                           train_dataset=data)
    with pytest.raises(TypeError, match="no logits"):
        trainer.train()


def test_evaluation_is_unchanged(tmp_path):
    data = classification_data(8)
    args = make_args(tmp_path, per_device_eval_batch_size=4)
    ours = RDropTrainer(model=tiny_bert(), args=args, eval_dataset=data).evaluate()
    plain = Trainer(model=tiny_bert(), args=args, eval_dataset=data).evaluate()
    assert ours["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)
