"""RDrop(stop_gradient=True): CE of pass 1 + alpha * symmetric KL against a detached pass 2."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdrop import RDrop


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 5))


def _data(n: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 5, (n,), generator=g)
    y[2] = -100  # one ignored row
    return x, y


def reference_stop_gradient_loss(
    logits1: torch.Tensor, logits2: torch.Tensor, target: torch.Tensor, *, alpha: float,
    label_smoothing: float = 0.0, ignore_index: int = -100,
) -> torch.Tensor:
    """Literal float64, one row at a time; gradient flows into ``logits1`` only.

    loss = mean_i [ CE(P1_i, y_i) + alpha * 0.5 * (KL(P1_i || sg P2_i) + KL(sg P2_i || P1_i)) ]
    over the rows with y_i != ignore_index.
    """
    rows = []
    for i in range(target.shape[0]):
        yi = int(target[i])
        if yi == ignore_index:
            continue
        z1, z2 = logits1[i].double(), logits2[i].detach().double()
        logp = z1 - torch.log(torch.exp(z1 - z1.max()).sum()) - z1.max()
        logq = z2 - torch.log(torch.exp(z2 - z2.max()).sum()) - z2.max()
        p, q = torch.exp(logp), torch.exp(logq)
        ce = (1 - label_smoothing) * -logp[yi] + label_smoothing * -logp.mean()
        kl_pq = (p * (logp - logq)).sum()
        kl_qp = (q * (logq - logp)).sum()
        rows.append(ce + alpha * 0.5 * (kl_pq + kl_qp))
    return torch.stack(rows).sum() / len(rows)


@pytest.mark.parametrize(("alpha", "label_smoothing"), [(1.0, 0.0), (4.0, 0.1)])
def test_value_and_gradients_match_the_float64_reference(alpha, label_smoothing):
    x, y = _data()
    wrapped = RDrop(_net(), alpha=alpha, stop_gradient=True, label_smoothing=label_smoothing)
    torch.manual_seed(11)
    out = wrapped(x, target=y)
    out.loss.backward()
    # Replay the same two forwards (same RNG stream: pass 1, then pass 2) by hand.
    replay = copy.deepcopy(wrapped.model)
    replay.zero_grad()
    torch.manual_seed(11)
    l1 = replay(x)
    l2 = replay(x).detach()
    ref = reference_stop_gradient_loss(l1, l2, y, alpha=alpha, label_smoothing=label_smoothing)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, l1)
    assert out.consistency_loss.item() > 0
    for p, q in zip(wrapped.model.parameters(), replay.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_second_pass_runs_without_gradient_in_two_forwards():
    net = _net()
    seen: list[tuple[int, bool]] = []
    net.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[0], torch.is_grad_enabled())))
    x, y = _data()
    RDrop(net, alpha=1.0, stop_gradient=True)(x, target=y)  # mode="concat" is the default
    assert seen == [(len(x), True), (len(x), False)]


def test_alpha_zero_is_single_pass_cross_entropy_training():
    x, y = _data()
    plain = _net(seed=4)
    wrapped = RDrop(copy.deepcopy(plain), alpha=0.0, stop_gradient=True)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.1)
    opt_w = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    for step in range(4):
        torch.manual_seed(step)
        loss = F.cross_entropy(plain(x), y)
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


def test_chunked_consistency_matches_the_plain_one():
    x, y = _data()
    a = RDrop(_net(), alpha=2.0, stop_gradient=True)
    b = RDrop(copy.deepcopy(a.model), alpha=2.0, stop_gradient=True, chunk_size=4)
    torch.manual_seed(5)
    oa = a(x, target=y)
    torch.manual_seed(5)
    ob = b(x, target=y)
    oa.loss.backward()
    ob.loss.backward()
    torch.testing.assert_close(oa.loss, ob.loss, rtol=1e-6, atol=1e-6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_needs_two_passes():
    with pytest.raises(ValueError, match="num_passes must be 2"):
        RDrop(_net(), alpha=1.0, stop_gradient=True, num_passes=3)
