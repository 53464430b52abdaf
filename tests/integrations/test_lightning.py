"""RDropLightningModule: accumulation-correct (the accumulated gradient is the full batch's), the
step schedule of rdrop_step by optimizer step, the loss parts logged."""

from __future__ import annotations

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from tiny_models import KeyedDropout  # noqa: E402
from torch import nn  # noqa: E402

from rdrop.integrations.lightning import RDropLightningModule  # noqa: E402
from rdrop.losses.functional import rdrop_loss  # noqa: E402
from rdrop.training.schedule import rdrop_step  # noqa: E402

torch.set_num_threads(1)


class KeyedNet(RDropLightningModule):
    """x (B, 4) -> logits (B, 3) through a dropout whose masks depend only on (sample, pass)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 8)
        self.drop = KeyedDropout(0.3)
        self.out = nn.Linear(8, 3)

    def forward(self, x, sample_id):
        return self.out(self.drop(torch.tanh(self.inp(x)), sample_id))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def data(n: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(4, generator=g), "sample_id": torch.tensor(i),
             "labels": torch.tensor(i % 3)} for i in range(n)]


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.logged: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in module.named_parameters()})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(module, rows, batch_size: int, accumulate: int, max_steps: int) -> Recorder:
    rec = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps,
                         accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[rec])
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=False)
    trainer.fit(module, loader)
    return rec


def test_accumulated_gradient_equals_full_batch_gradient():
    rows = data(4)
    rec = fit(KeyedNet(alpha=0.7), rows, batch_size=2, accumulate=2, max_steps=1)
    (grads,) = rec.grads
    ref = KeyedNet(alpha=0.7)  # the same weights; one forward over the full batch, [x; x]
    x = torch.stack([r["x"] for r in rows])
    ids = torch.stack([r["sample_id"] for r in rows])
    y = torch.stack([r["labels"] for r in rows])
    logits = ref(torch.cat([x, x]), torch.cat([ids, ids]))
    out = rdrop_loss(logits[:4], logits[4:], y, alpha=0.7)
    out.loss.backward()
    assert out.consistency_loss > 0
    diff = max((grads[n] - p.grad).abs().max().item() for n, p in ref.named_parameters())
    assert diff < 1e-6, diff


def test_schedule_is_rdrop_step_of_the_optimizer_step():
    module = KeyedNet(alpha=2.0, every_k_steps=2, alpha_warmup_steps=3)
    rec = fit(module, data(12), batch_size=2, accumulate=2, max_steps=3)
    rows = [len(ids) for ids in module.drop.seen]
    decisions = [rdrop_step(s, alpha=2.0, every_k_steps=2, alpha_warmup_steps=3)
                 for s in range(3) for _ in range(2)]
    assert rows == [4 if d.active else 2 for d in decisions] == [4, 4, 2, 2, 4, 4]
    for logged, d in zip(rec.logged, decisions, strict=True):
        assert logged["train/rdrop_alpha"] == pytest.approx(d.alpha)
        assert logged["train/loss"] == pytest.approx(
            logged["train/task_loss"] + d.alpha * logged["train/consistency_loss"], rel=1e-6)
        passes = 2 if d.active else 1
        assert logged["train/task_loss_per_pass"] == pytest.approx(
            logged["train/task_loss"] / passes, rel=1e-6)
    assert rec.logged[0]["train/rdrop_alpha"] == pytest.approx(2.0 / 3)


def test_invalid_hyperparameters_name_the_argument():
    with pytest.raises(ValueError, match="every_k_steps"):
        KeyedNet(every_k_steps=0)
    with pytest.raises(ValueError, match="alpha"):
        KeyedNet(alpha=-1.0)


# --------------------------------------- the wrapper's input checks (one rdrop.training.step)
class PrototypeNet(RDropLightningModule):
    """x (B, d) scored against class prototypes (C, d): logits = dropout(x) @ protos.T."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.3)

    def forward(self, x, protos):
        return self.drop(self.inp(x)) @ protos.T


class SeqFirstLSTM(RDropLightningModule):
    """A sequence-first nn.LSTM tagger: input (T, B, d), logits (T, B, C) for targets (T, B)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        torch.manual_seed(0)
        self.lstm = nn.LSTM(3, 6)  # batch_first=False
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.drop(self.lstm(x)[0]))


def test_prototypes_with_as_many_rows_as_the_batch_are_refused_as_rdrop_refuses_them():
    g = torch.Generator().manual_seed(3)
    x, protos = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)  # C == B == 3
    y = torch.tensor([0, 2, 1])
    with pytest.raises(ValueError, match="unbatched=\\[1\\]"):
        PrototypeNet(alpha=1.0).rdrop_loss(x, protos, target=y)

    # Named unbatched, the prototypes are shared by both copies: R-Drop of the [x; x] forward.
    net = PrototypeNet(alpha=1.0, unbatched=[1])
    torch.manual_seed(7)
    out = net.rdrop_loss(x, protos, target=y)
    ref_net = PrototypeNet(alpha=1.0)
    torch.manual_seed(7)
    ref_logits = ref_net.drop(ref_net.inp(torch.cat([x, x]))) @ protos.T
    ref = rdrop_loss(ref_logits[:3], ref_logits[3:], y, alpha=1.0)
    torch.testing.assert_close(out.loss, ref.loss)
    assert out.consistency_loss > 0


def test_sequence_first_lstm_input_is_refused_not_duplicated_along_time():
    # dim 0 is time (T=5): duplicated, the "second pass" is the LSTM run on over the repeated
    # sequence, and its logits (T, B, C) still match the targets (T, B).
    x = torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 2, (5, 3), generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="batch_first=True"):
        SeqFirstLSTM(alpha=1.0).rdrop_loss(x, target=y)


def test_input_check_runs_once_in_eval_mode_and_restores_training_mode():
    module = KeyedNet(alpha=1.0)
    rows = data(4)
    x = torch.stack([r["x"] for r in rows])
    ids = torch.stack([r["sample_id"] for r in rows])
    y = torch.stack([r["labels"] for r in rows])
    module.rdrop_loss(x, ids, target=y)
    module.rdrop_loss(x, ids, target=y)
    # The check's two eval-mode forwards record nothing (KeyedDropout records training calls).
    assert [len(s) for s in module.drop.seen] == [8, 8]
    assert module.training and module.drop.training


class KeyedTagger(RDropLightningModule):
    """(B, T) tokens -> (B, T, V) logits through keyed dropout (masks fixed by sample and pass)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 8)
        self.drop = KeyedDropout(0.3)
        self.out = nn.Linear(8, 7)

    def forward(self, input_ids, sample_id):
        return self.out(self.drop(torch.tanh(self.emb(input_ids)), sample_id))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_accumulation_with_padded_tokens_is_the_documented_mean_of_micro_batch_means():
    # Micro-batch 1 counts 2 + 5 tokens, micro-batch 2 counts 1 + 1: the module's docstring says
    # the accumulated gradient is the mean of the two micro-batches' token means (Lightning's
    # rule), which differs from the full batch's token mean.
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, n in enumerate([2, 5, 1, 1]):
        labels = torch.randint(0, 7, (6,), generator=g)
        labels[n:] = -100
        rows.append({"input_ids": torch.randint(0, 7, (6,), generator=g),
                     "sample_id": torch.tensor(i), "labels": labels})
    rec = fit(KeyedTagger(alpha=0.5), rows, batch_size=2, accumulate=2, max_steps=1)
    (grads,) = rec.grads

    def grad_of(loss_of_micro_batches):
        ref = KeyedTagger(alpha=0.5)
        loss_of_micro_batches(ref).backward()
        return {n: p.grad for n, p in ref.named_parameters()}

    def micro(ref, part):
        ids = torch.stack([r["input_ids"] for r in part])
        sid = torch.stack([r["sample_id"] for r in part])
        y = torch.stack([r["labels"] for r in part])
        logits = ref(torch.cat([ids, ids]), torch.cat([sid, sid]))
        return logits[:len(part)], logits[len(part):], y

    def mean_of_means(ref):
        return sum(rdrop_loss(*micro(ref, rows[k:k + 2]), alpha=0.5).loss / 2 for k in (0, 2))

    def full_batch(ref):
        parts = [micro(ref, rows[k:k + 2]) for k in (0, 2)]
        return rdrop_loss(*(torch.cat([p[i] for p in parts]) for i in range(3)), alpha=0.5).loss

    documented, full = grad_of(mean_of_means), grad_of(full_batch)
    assert max((grads[n] - documented[n]).abs().max().item() for n in grads) < 1e-6
    assert max((grads[n] - full[n]).abs().max().item() for n in grads) > 1e-3

# ------------------------------------------------------------ the cheaper schedules (issue 20)
def test_fraction_and_stop_gradient_through_the_one_step():
    from rdrop.losses.subset import subset_size

    from reference import reference_subset_loss

    rows = data(8)
    for stop_gradient in (False, True):
        module = KeyedNet(alpha=1.5, second_pass_fraction=0.5, stop_gradient=stop_gradient)
        rec = fit(module, rows, batch_size=8, accumulate=1, max_steps=1)
        n = subset_size(8, 0.5)
        seen = [len(ids) for ids in module.drop.seen]
        assert seen == ([8, n] if stop_gradient else [8 + n])
        ref = KeyedNet(alpha=1.5)
        x = torch.stack([r["x"] for r in rows])
        ids = torch.stack([r["sample_id"] for r in rows])
        y = torch.stack([r["labels"] for r in rows])
        first = ref(x, ids)
        with torch.set_grad_enabled(not stop_gradient):
            second = ref(x[:n], ids[:n])
        loss, _, _ = reference_subset_loss(first, second, y, range(n), alpha=1.5,
                                           stop_gradient=stop_gradient)
        loss.backward()
        (grads,) = rec.grads
        for name, p in ref.named_parameters():
            torch.testing.assert_close(grads[name], p.grad.float(), rtol=1e-5, atol=1e-6)
        assert rec.logged[0]["train/loss"] == pytest.approx(loss.item(), rel=1e-5)


class ValNet(KeyedNet):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(1.0))  # never improves after the first epoch


def test_start_step_and_automatic_start():
    from rdrop import AutoStart

    module = KeyedNet(start_step=2)
    fit(module, data(8), batch_size=2, accumulate=1, max_steps=4)
    assert [len(ids) for ids in module.drop.seen] == [2, 2, 4, 4]

    auto = AutoStart(patience=1)
    module = ValNet(start_step=auto)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, val_check_interval=2,
                         num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(data(12), batch_size=2)
    trainer.fit(module, loader, loader)
    # validations after steps 2 and 4: the second does not improve -> R-Drop from step 4 on
    assert auto.start_step == 4
    assert [len(ids) for ids in module.drop.seen][:6] == [2, 2, 2, 2, 4, 4]
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    restored = ValNet(start_step=AutoStart(patience=1))
    restored.on_load_checkpoint(checkpoint)
    assert restored.rdrop_start_step.start_step == 4
