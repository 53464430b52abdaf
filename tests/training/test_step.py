"""rdrop.training.step: the one training step (plan -> passes -> loss) every entry point runs."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from rdrop.training.schedule import RDropStep, rdrop_step
from rdrop.training.step import LogitsLoss, PassPlan, TrainingStep

from reference import reference_rdrop_loss

B, D, C = 4, 3, 5


class Scripted(nn.Module):
    """logits = x @ W + table[rows seen so far]: in training, the rows of pass k (whether in one
    concat forward or in the k-th separate forward) get the noise rows k*B..(k+1)*B, so every
    way of running the passes gives the same, known, different passes. Eval adds no noise."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(D, C, generator=g, dtype=torch.float64))
        self.table = torch.randn(4 * B, C, generator=g, dtype=torch.float64)
        self.offset = 0
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.w
        if self.training:
            self.grad_enabled.append(torch.is_grad_enabled())
            out = out + self.table[self.offset: self.offset + x.shape[0]]
            self.offset += x.shape[0]
        return out

    def pass_logits(self, x: torch.Tensor, k: int, w: torch.Tensor) -> torch.Tensor:
        return x @ w + self.table[k * B:(k + 1) * B]


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    return x, torch.tensor([0, 4, -100, 2])


@pytest.mark.parametrize("mode", ["concat", "twice"])
@pytest.mark.parametrize("m", [2, 3])
def test_rdrop_step_matches_the_float64_reference_value_and_gradient(mode, m):
    x, y = _data()
    model = Scripted()
    decision = rdrop_step(1, alpha=2.0, alpha_warmup_steps=4)  # alpha 1.0 at step 1
    step = TrainingStep(num_passes=m, mode=mode, check_inputs=False)
    result = step(model, (x,), {}, y, decision)
    result.out.loss.backward()

    w = model.w.detach().clone().requires_grad_(True)
    ref = reference_rdrop_loss([model.pass_logits(x, k, w) for k in range(m)], y, alpha=1.0)
    ref["loss"].backward()
    for key in ("loss", "task_loss", "consistency_loss"):
        torch.testing.assert_close(getattr(result.out, key), ref[key])
    torch.testing.assert_close(model.w.grad, w.grad)
    assert len(result.passes) == m and result.out.logits is result.passes[0]
    assert (result.layout is not None) == (mode == "concat")


def test_plain_step_is_one_forward_and_the_task_loss_of_one_pass():
    x, y = _data()
    model = Scripted()
    step = TrainingStep(num_passes=3)
    result = step(model, (x,), {}, y, rdrop_step(1, alpha=1.0, every_k_steps=2))
    assert model.offset == B  # one forward of B rows
    w = model.w.detach()
    ref = reference_rdrop_loss([model.pass_logits(x, 0, w)] * 2, y, alpha=0.0)
    torch.testing.assert_close(result.out.loss, ref["task_loss"] / 2)
    assert float(result.out.consistency_loss) == 0.0


def test_stop_gradient_step_detaches_the_second_pass():
    x, y = _data()
    model = Scripted()
    step = TrainingStep(stop_gradient=True)
    result = step(model, (x,), {}, y, RDropStep(active=True, alpha=0.7))
    result.out.loss.backward()
    assert model.grad_enabled == [True, False]

    w = model.w.detach().clone().requires_grad_(True)
    p1, p2 = model.pass_logits(x, 0, w), model.pass_logits(x, 1, w).detach()
    both = reference_rdrop_loss([p1, p2], y, alpha=0.7)
    one = reference_rdrop_loss([p1, p1], y, alpha=0.0)
    ref = one["task_loss"] / 2 + 0.7 * both["consistency_loss"]
    ref.backward()
    torch.testing.assert_close(result.out.loss, ref)
    torch.testing.assert_close(model.w.grad, w.grad)


@pytest.mark.parametrize(("options", "decision", "expected"), [
    ({"mode": "concat", "num_passes": 3}, RDropStep(True, 1.0), [range(0, 3)]),
    ({"mode": "twice"}, RDropStep(True, 1.0), [range(0, 1), range(1, 2)]),
    ({"stop_gradient": True}, RDropStep(True, 1.0), [range(0, 1), range(1, 2)]),
    ({"mode": "concat"}, RDropStep(False, 0.0), [range(0, 1)]),
])
def test_pass_context_is_entered_around_each_forward_with_its_passes(options, decision,
                                                                     expected):
    x, y = _data()
    model = Scripted()
    seen: list[tuple[range, PassPlan, int]] = []

    @contextlib.contextmanager
    def context(passes, plan):
        before = model.offset
        yield
        seen.append((passes, plan, model.offset - before))

    step = TrainingStep(**options, pass_context=context, check_inputs=False)
    step(model, (x,), {}, y, decision)
    assert [s[0] for s in seen] == expected
    assert [s[2] for s in seen] == [len(r) * B for r in expected]  # each forward inside its own
    assert all(s[1] == step.plan(decision) for s in seen)


def test_check_batch_sees_the_inputs_as_the_model_does_and_align_maps_the_passes():
    x, y = _data()
    layouts = []
    step = TrainingStep(
        check_inputs=False,
        check_batch=lambda args, kwargs, layout: layouts.append((args[0].shape[0], layout)),
        align=lambda passes, target: ([p[1:] for p in passes], target[1:]),
    )
    result = step(Scripted(), (x,), {}, y, RDropStep(True, 1.0))
    ((rows, layout),) = layouts
    assert rows == 2 * B and layout.copies == 2 and layout.batch_size == B
    assert result.target.tolist() == y[1:].tolist()
    assert result.passes[0].shape == (B - 1, C)


def test_input_check_refuses_a_coincidentally_batched_input_once_and_restores_modes():
    class Prototypes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x, protos):
            return self.drop(x) @ protos.T

    x, protos = torch.randn(3, 4), torch.randn(3, 4)
    model = Prototypes()
    step = TrainingStep()
    with pytest.raises(ValueError, match=r"unbatched=\[1\]"):
        step(model, (x, protos), {}, torch.tensor([0, 1, 2]), RDropStep(True, 1.0))
    assert model.training and model.drop.training
    ok = TrainingStep(unbatched=[1])
    out = ok(model, (x, protos), {}, torch.tensor([0, 1, 2]), RDropStep(True, 1.0)).out
    assert out.consistency_loss > 0


def test_batch_of_one_with_batchnorm_is_refused_in_concat_mode():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.2), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="batch size 1 with BatchNorm"):
        TrainingStep(check_inputs=False)(net, (torch.randn(1, 3),), {}, torch.tensor([1]),
                                         RDropStep(True, 1.0))


def test_logits_loss_applies_the_step_alpha_after_a_fixed_alpha_loss():
    g = torch.Generator().manual_seed(2)
    p1, p2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, -100, 1])
    for alpha in (0.0, 0.3, 5.0):
        out = LogitsLoss(label_smoothing=0.1)([p1, p2], y, alpha)
        ref = reference_rdrop_loss([p1, p2], y, alpha=alpha, label_smoothing=0.1)
        torch.testing.assert_close(out.loss.double(), ref["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{"mode": "concat"}, {"mode": "twice"},
                                     {"stop_gradient": True}])
def test_an_empty_batch_is_refused_with_a_message_that_says_so(options):
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2))
    step = TrainingStep(**options)
    with pytest.raises(ValueError, match=r"the batch is empty \(target of shape \(0,\)\)"):
        step(net, (torch.randn(0, 3),), {}, torch.zeros(0, dtype=torch.long),
             RDropStep(True, 1.0))
    # a plain step of an empty batch is the plain loss of no rows: 0
    out = step(net, (torch.randn(0, 3),), {}, torch.zeros(0, dtype=torch.long),
               RDropStep(False, 0.0)).out
    assert float(out.loss.detach()) == 0.0
