"""rdrop.RDrop: one forward over [x; x], the passes split back, plain behaviour outside training."""

from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdrop import RDrop, RDropLoss, rdrop_loss

from reference import reference_rdrop_loss


def _net(p: float = 0.3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(p), nn.Linear(16, 4))


def _data(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


class DictModel(nn.Module):
    """Takes HF-style keyword inputs, returns an object with .logits (like a ModelOutput)."""

    Out = collections.namedtuple("Out", ["logits", "hidden"])

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.calls: list[int] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, scale: float = 1.0):
        self.calls.append(input_ids.shape[0])
        h = self.net(input_ids * attention_mask * scale)
        return self.Out(logits=h, hidden=h.detach())


def test_loss_equals_reference_on_the_same_masks():
    x, y = _data()
    wrapped = RDrop(_net(), alpha=2.0, label_smoothing=0.1)
    torch.manual_seed(123)
    out = wrapped(x, target=y)
    # Replay: the same RNG state gives the same dropout masks on [x; x].
    torch.manual_seed(123)
    logits = wrapped.model(torch.cat([x, x]))
    ref = reference_rdrop_loss(list(logits.chunk(2)), y, alpha=2.0, label_smoothing=0.1)
    torch.testing.assert_close(out.loss.double(), ref["loss"].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, logits.chunk(2)[0])
    assert out.consistency_loss.item() > 0  # the two copies drew different masks


def test_alpha_zero_trains_exactly_like_the_plain_loop():
    x, y = _data()
    plain = _net(seed=5)
    wrapped = RDrop(copy.deepcopy(plain), alpha=0.0)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.1)
    opt_w = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    for step in range(5):
        torch.manual_seed(step)
        l1, l2 = plain(torch.cat([x, x])).chunk(2)
        loss = F.cross_entropy(l1, y) + F.cross_entropy(l2, y)  # the paper's two CE terms
        opt_p.zero_grad()
        loss.backward()
        opt_p.step()
        torch.manual_seed(step)
        out = wrapped(x, target=y)
        opt_w.zero_grad()
        out.loss.backward()
        opt_w.step()
        torch.testing.assert_close(out.loss, loss, rtol=1e-6, atol=1e-7)
    for p, q in zip(plain.parameters(), wrapped.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_alpha_zero_without_dropout_is_the_baseline_with_both_ce_terms():
    x, y = _data()
    plain = _net(p=0.0, seed=2)
    with pytest.warns(UserWarning, match="no dropout"):
        wrapped = RDrop(copy.deepcopy(plain), alpha=0.0)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.05)
    opt_w = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    for _ in range(5):
        opt_p.zero_grad()
        (2 * F.cross_entropy(plain(x), y)).backward()
        opt_p.step()
        opt_w.zero_grad()
        wrapped(x, target=y).loss.backward()
        opt_w.step()
    for p, q in zip(plain.parameters(), wrapped.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_concat_and_twice_agree_on_a_dropout_free_model():
    x, y = _data()
    a = RDrop(_net(p=0.0), alpha=1.0, mode="concat", check_dropout=False)
    b = RDrop(copy.deepcopy(a.model), alpha=1.0, mode="twice", check_dropout=False)
    oa, ob = a(x, target=y), b(x, target=y)
    oa.loss.backward()
    ob.loss.backward()
    torch.testing.assert_close(oa.loss, ob.loss)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_nested_inputs_and_object_outputs_are_duplicated_and_split():
    model = DictModel()
    wrapped = RDrop(model, alpha=1.0, num_passes=3, check_inputs=False)
    x, y = _data()
    batch = collections.UserDict({"input_ids": x, "attention_mask": torch.ones_like(x)})
    out = wrapped(**batch, scale=0.5, target=y)  # non-tensor kwargs pass through
    assert model.calls == [3 * len(x)]  # one forward over three copies
    assert out.logits.shape == (len(x), 4)
    assert torch.isfinite(out.loss)


def test_missing_target_is_a_plain_forward_and_eval_with_target_is_one_pass():
    net = _net()
    wrapped = RDrop(net, alpha=1.0)
    x, y = _data()
    wrapped.eval()
    torch.testing.assert_close(wrapped(x), net(x))
    out = wrapped(x, target=y)  # eval with a target: one pass, an RDropOutput (not a tensor)
    ref = reference_rdrop_loss([net(x), net(x)], y, alpha=0.0)["task_loss"] / 2  # one CE term
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert out.loss is out.task_loss and float(out.consistency_loss) == 0.0
    torch.testing.assert_close(out.logits, net(x))
    wrapped.train()
    assert wrapped(x).shape == (len(x), 4)
    assert wrapped.num_steps == 0  # neither counted as an R-Drop training step


def test_every_k_steps_uses_plain_ce_between_rdrop_steps():
    x, y = _data()
    wrapped = RDrop(_net(p=0.0), alpha=1.0, every_k_steps=3, check_dropout=False)
    outs = [wrapped(x, target=y) for _ in range(6)]
    single_ce = F.cross_entropy(wrapped.model(x), y)
    for step, out in enumerate(outs):
        if step % 3 == 0:
            torch.testing.assert_close(out.task_loss, 2 * single_ce)  # two passes, identical
        else:
            torch.testing.assert_close(out.task_loss, single_ce)
            assert float(out.consistency_loss) == 0.0


def test_alpha_warmup_is_linear():
    wrapped = RDrop(_net(), alpha=4.0, alpha_warmup_steps=4)
    x, y = _data()
    seen = []
    for _ in range(6):
        seen.append(wrapped.current_alpha())
        wrapped(x, target=y)
    assert seen == [1.0, 2.0, 3.0, 4.0, 4.0, 4.0]


def test_step_counter_is_checkpointed():
    wrapped = RDrop(_net(), alpha=1.0, every_k_steps=2)
    x, y = _data()
    for _ in range(3):
        wrapped(x, target=y)
    clone = RDrop(_net(), alpha=1.0, every_k_steps=2)
    clone.load_state_dict(wrapped.state_dict())
    assert clone.num_steps == 3


def test_rdrop_loss_module_forwards_to_the_function():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 2, -100, 1])
    crit = RDropLoss(alpha=0.3, label_smoothing=0.1)
    torch.testing.assert_close(
        crit(a, b, y).loss, rdrop_loss(a, b, y, alpha=0.3, label_smoothing=0.1).loss
    )
    assert "alpha=0.3" in repr(crit)


# ---------------------------------------------------------------------------------- bad input
def test_warns_about_batchnorm():
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.1), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match="BatchNorm"):
        RDrop(net, alpha=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RDrop(net, alpha=1.0, warn_batchnorm=False)


def test_inner_model_in_eval_mode_raises():
    wrapped = RDrop(_net(), alpha=1.0)
    wrapped.model.eval()
    x, y = _data()
    with pytest.raises(ValueError, match="eval mode"):
        wrapped(x, target=y)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"alpha": -0.5}, ValueError, "alpha"),
        ({"num_passes": 1}, ValueError, "num_passes must be >= 2"),
        ({"num_passes": 2.0}, TypeError, "num_passes must be an int"),
        ({"mode": "stack"}, ValueError, "mode must be one of"),
        ({"reduction": "batchmean"}, ValueError, "reduction must be one of"),
        ({"every_k_steps": 0}, ValueError, "every_k_steps"),
        ({"consistency": "cosine"}, ValueError, "consistency"),
    ],
)
def test_bad_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RDrop(_net(), **{"alpha": 1.0, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"reduction": "batchmean"}, "reduction"),
        ({"consistency": "cosine"}, "consistency"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_rdrop_loss_module_validates_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RDropLoss(**{"alpha": 1.0, **kwargs})


def test_target_shape_mismatch_raises():
    wrapped = RDrop(_net(), alpha=1.0)
    x, y = _data()
    with pytest.raises(ValueError, match="does not match logits shape"):
        wrapped(x, target=y[:-1])


def test_model_that_changes_batch_size_points_to_twice_mode():
    class Pool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x).mean(0, keepdim=True)

    with pytest.raises(ValueError, match="mode='twice'"):
        RDrop(Pool(), alpha=1.0)(*_data()[:1], target=torch.tensor([0]))


def test_non_module_rejected():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        RDrop(lambda x: x, alpha=1.0)  # type: ignore[arg-type]


# ------------------------------------------------------ concat mode: which inputs are batched
class ClassEmbeddingHead(nn.Module):
    """CLIP-style: scores every row against class embeddings, which are not batched."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.3))

    def forward(self, x: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
        return self.proj(x) @ class_emb.T


def test_unbatched_input_with_dim0_equal_to_batch_is_named_and_the_fix_works():
    x, _ = _data(n=4)
    class_emb = torch.randn(4, 5)  # C == B == 4
    y = torch.tensor([0, 3, 1, 2])
    with pytest.raises(ValueError, match=r"unbatched=\['class_emb'\]"):
        RDrop(ClassEmbeddingHead(), alpha=1.0)(x, class_emb=class_emb, target=y)

    for names in ({"unbatched": ("class_emb",)}, {"batched": (0,)}):
        wrapped = RDrop(ClassEmbeddingHead(), alpha=1.0, **names)
        torch.manual_seed(7)
        out = wrapped(x, class_emb=class_emb, target=y)
        torch.manual_seed(7)
        l1, l2 = wrapped.model(torch.cat([x, x]), class_emb).chunk(2)
        ref = reference_rdrop_loss([l1, l2], y, alpha=1.0)
        assert out.logits.shape == (4, 4)
        torch.testing.assert_close(out.loss.double(), ref["loss"].detach(), rtol=1e-5, atol=1e-6)


def test_unknown_input_name_lists_the_inputs():
    x, y = _data()
    with pytest.raises(ValueError, match=r"unbatched= names \['mask'\].*\[0\]"):
        RDrop(_net(), alpha=1.0, unbatched=("mask",))(x, target=y)


class SeqFirstLSTM(nn.Module):
    """nn.LSTM with the default batch_first=False: inputs (T, B, F)."""

    def __init__(self, last_only: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(6, 8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 4)
        self.last_only = last_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        logits = self.head(self.drop(h))  # (T, B, 4)
        return logits[-1] if self.last_only else logits


def test_sequence_first_model_is_refused_with_the_fix():
    x = torch.randn(7, 3, 6)  # T=7, B=3: concat mode would double the time axis
    with pytest.raises(ValueError, match="batch_first"):
        RDrop(SeqFirstLSTM(last_only=True), alpha=1.0)(x, target=torch.tensor([0, 1, 2]))
    # Full sequence output: the doubled time axis splits into two "passes" of the right shape,
    # but the second half continues the first; the first-call check catches it.
    y = torch.randint(0, 4, (7, 3))
    with pytest.raises(ValueError, match=r"does not reproduce the plain forward.*batch_first"):
        RDrop(SeqFirstLSTM(last_only=False), alpha=1.0)(x, target=y)
    out = RDrop(SeqFirstLSTM(last_only=False), alpha=1.0, mode="twice")(x, target=y)
    assert out.consistency_loss.item() > 0


def test_the_first_call_check_runs_once_and_keeps_train_eval_flags():
    model = DictModel()
    model.net[2].eval()  # a user's choice the check must not undo
    wrapped = RDrop(model, alpha=1.0)
    x, y = _data()
    for _ in range(2):
        wrapped(input_ids=x, attention_mask=torch.ones_like(x), target=y)
    assert model.calls == [8, 16, 16, 16]  # check: plain + duplicated, then the training calls
    assert model.training and not model.net[2].training


def test_batch_size_one_with_batchnorm_is_refused_in_concat_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.BatchNorm1d(8), nn.Linear(8, 4))
    wrapped = RDrop(net, alpha=1.0, warn_batchnorm=False)
    x, y = _data()
    with pytest.raises(ValueError, match=r"batch size 1 with BatchNorm.*mode='twice'"):
        wrapped(x[:1], target=y[:1])
    assert int(net[2].num_batches_tracked) == 0  # refused before the forward: stats untouched
    assert torch.isfinite(wrapped(x[:2], target=y[:2]).loss)  # two samples are fine
    net[2].eval()
    assert torch.isfinite(wrapped(x[:1], target=y[:1]).loss)  # eval BatchNorm: per-sample


class LossAndLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits.logsumexp(-1).mean(), logits


@pytest.mark.parametrize("mode", ["concat", "twice"])
def test_model_returning_loss_and_logits_gets_advice_that_works(mode):
    x, y = _data()
    with pytest.raises(TypeError, match=r"logits_fn=lambda out: out\[1\]"):
        RDrop(LossAndLogits(), alpha=1.0, mode=mode)(x, target=y)
    wrapped = RDrop(LossAndLogits(), alpha=1.0, mode=mode, logits_fn=lambda out: out[1])
    torch.manual_seed(3)
    out = wrapped(x, target=y)
    torch.manual_seed(3)
    if mode == "concat":
        passes = list(wrapped.model.net(torch.cat([x, x])).chunk(2))
    else:
        passes = [wrapped.model.net(x), wrapped.model.net(x)]
    ref = reference_rdrop_loss(passes, y, alpha=1.0)
    torch.testing.assert_close(out.loss.double(), ref["loss"].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": True}, TypeError, "chunk_size"),
        ({"chunk_size": 64, "num_passes": 3}, ValueError, "chunk_size supports two passes"),
        ({"consistency": "mse", "label_smoothing": 0.1}, ValueError, "label_smoothing"),
        ({"label_smoothing": None}, TypeError, "label_smoothing"),
        ({"ignore_index": None}, TypeError, "ignore_index"),
        ({"stop_gradient": 1}, TypeError, "stop_gradient must be a bool"),
        ({"check_finite": "no"}, TypeError, "check_finite must be a bool"),
        ({"logits_fn": 3}, TypeError, "logits_fn must be callable"),
        ({"alpha_warmup_steps": -1}, ValueError, "alpha_warmup_steps"),
    ],
)
def test_more_bad_hyperparameters_fail_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RDrop(_net(), **{"alpha": 1.0, **kwargs})


def test_check_finite_switch_reaches_the_loss():
    x, y = _data()
    bad = nn.Sequential(_net(), nn.Threshold(1e9, float("nan")))  # every logit becomes NaN
    with pytest.raises(FloatingPointError):
        RDrop(bad, alpha=1.0, check_inputs=False, check_dropout=False)(x, target=y)
    out = RDrop(bad, alpha=1.0, check_inputs=False, check_dropout=False,
                check_finite=False)(x, target=y)
    assert torch.isnan(out.loss)


# ------------------------------------------------------------------------ checkpoints, no_grad
def test_a_checkpoint_of_the_wrapper_loads_into_the_plain_model_and_back():
    import rdrop

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.2), nn.Linear(6, 3))
    wrapped = rdrop.RDrop(net, warn_batchnorm=False)
    wrapped.set_step(7)
    sd = wrapped.state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key"):  # the problem the helper solves
        nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.2),
                      nn.Linear(6, 3)).load_state_dict(sd)
    plain = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.2), nn.Linear(6, 3))
    plain.load_state_dict(rdrop.unwrap_state_dict(sd))
    for key, value in net.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value)
    # the other way: a plain checkpoint into a fresh wrapper's model
    fresh = rdrop.RDrop(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.2),
                                      nn.Linear(6, 3)), warn_batchnorm=False)
    fresh.model.load_state_dict(plain.state_dict())
    x = torch.randn(5, 4)
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x))
    # the wrapper's own checkpoint keeps the step count
    again = rdrop.RDrop(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.2),
                                      nn.Linear(6, 3)), warn_batchnorm=False)
    again.load_state_dict(sd)
    assert again.num_steps == 7
    with pytest.raises(ValueError, match="not from RDrop"):
        rdrop.unwrap_state_dict(plain.state_dict())


def test_a_training_call_under_no_grad_does_not_advance_every_k_steps():
    import rdrop

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.3), nn.Linear(6, 3))
    wrapped = rdrop.RDrop(net, every_k_steps=2)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with torch.no_grad():
        probe = wrapped(x, target=y)
        wrapped(x, target=y)
    assert wrapped.num_steps == 0 and probe.consistency_loss > 0  # step 0: R-Drop, not advanced
    first = wrapped(x, target=y)   # step 0 again, now counted
    second = wrapped(x, target=y)  # step 1: the plain step of every_k_steps=2
    assert wrapped.num_steps == 2
    assert first.consistency_loss > 0 and float(second.consistency_loss) == 0.0
