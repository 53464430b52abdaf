"""fused_linear_rdrop_loss against projecting and then the float64 reference; the full logits
never exist."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import linear
from torch.utils._python_dispatch import TorchDispatchMode

from rdrop.losses.functional import rdrop_loss
from rdrop.losses.fused_linear import FusedLinearRDropLoss, fused_linear_rdrop_loss

from reference import reference_rdrop_loss

# (rtol, atol) per dtype. bf16: the projection itself runs in bf16 on both sides, the gradient
# of the logits is rounded to bf16 (as autograd does) and matmuls accumulate in another order.
TOLERANCES = {
    torch.float64: {"value": (1e-10, 1e-12), "grad": (1e-9, 1e-12)},
    torch.float32: {"value": (1e-5, 1e-6), "grad": (1e-4, 1e-6)},
    torch.bfloat16: {"value": (1e-3, 1e-4), "grad": (3e-2, 5e-3)},
}
H, V = 6, 23


def _make(lead, dtype, *, seed=0, bias=True, ignore_frac=0.25):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    h1, h2 = rnd(*lead, H), rnd(*lead, H)
    w = rnd(V, H, scale=0.8)
    b = rnd(V, scale=0.5) if bias else None
    y = torch.randint(0, V, lead, generator=g)
    y[torch.rand(lead, generator=g) < ignore_frac] = -100
    y.view(-1)[0] = 2
    return [h1, h2, w, b], y


def _leaves(params):
    return [None if p is None else p.detach().clone().requires_grad_() for p in params]


def _grads(loss, leaves):
    present = [p for p in leaves if p is not None]
    got = iter(torch.autograd.grad(loss, present))
    return [None if p is None else next(got) for p in leaves]


def _unfused(h1, h2, w, b, y, **kw):
    return rdrop_loss(linear(h1, w, b), linear(h2, w, b), y, **kw)


def _close(x, y, dtype, kind):
    rtol, atol = TOLERANCES[dtype][kind]
    torch.testing.assert_close(x.double(), y.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("lead", [(11,), (2, 5)], ids=["N", "BxT"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_reference(dtype, lead, label_smoothing, bias):
    params, y = _make(lead, dtype, bias=bias)
    kw = {"alpha": 0.7, "label_smoothing": label_smoothing}
    ours = _leaves(params)
    out = fused_linear_rdrop_loss(*ours[:3], y, bias=ours[3], chunk_size=4, **kw)  # 4 ∤ 11, 10
    g_ours = _grads(out.loss, ours)
    ref = _leaves(params)
    # The reference projects in the input dtype (as a model's head does), then float64.
    h1, h2, w, b = ref
    z1, z2 = linear(h1, w, b), linear(h2, w, b)
    ref_out = reference_rdrop_loss([z1.double(), z2.double()], y, **kw)
    g_ref = _grads(ref_out["loss"], ref)
    for key in ("loss", "task_loss", "consistency_loss"):
        _close(getattr(out, key), ref_out[key], dtype, "value")
    for a, r in zip(g_ours, g_ref, strict=True):
        if r is None:
            assert a is None
            continue
        assert a.dtype == dtype
        _close(a, r, dtype, "grad")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("num_items_in_batch", [None, 30])
def test_reductions_match_unfused(reduction, num_items_in_batch):
    params, y = _make((3, 4), torch.float32, seed=1)
    kw = {"alpha": 2.0, "reduction": reduction, "num_items_in_batch": num_items_in_batch}
    ours, ref = _leaves(params), _leaves(params)
    out = fused_linear_rdrop_loss(*ours[:3], y, bias=ours[3], chunk_size=5, **kw)
    ref_out = _unfused(*ref, y, **kw)
    for key in ("loss", "task_loss", "consistency_loss"):
        torch.testing.assert_close(getattr(out, key), getattr(ref_out, key))
    for a, r in zip(_grads(out.loss, ours), _grads(ref_out.loss, ref), strict=True):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("combo", ["task", "consistency", "mixed"])
def test_differentiating_the_parts_recomputes_correctly(combo):
    params, y = _make((9,), torch.float64, seed=2)
    ours, ref = _leaves(params), _leaves(params)
    out = fused_linear_rdrop_loss(*ours[:3], y, bias=ours[3], alpha=1.5, chunk_size=4,
                                  label_smoothing=0.1)
    ref_out = _unfused(*ref, y, alpha=1.5, label_smoothing=0.1)

    def pick(o):
        return {"task": o.task_loss, "consistency": o.consistency_loss,
                "mixed": 0.5 * o.loss - 2.0 * o.task_loss + o.consistency_loss}[combo]

    for a, r in zip(_grads(pick(out), ours), _grads(pick(ref_out), ref), strict=True):
        torch.testing.assert_close(a, r)


def test_backward_twice_with_retain_graph():
    params, y = _make((7,), torch.float64, seed=3)
    ours = _leaves(params)
    out = fused_linear_rdrop_loss(*ours[:3], y, bias=ours[3], alpha=1.0, chunk_size=3)
    first = torch.autograd.grad(out.loss * 2.0, ours, retain_graph=True)
    second = torch.autograd.grad(out.loss * 2.0, ours)  # stored grads consumed: recomputes
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    params, y = _make((5,), torch.float64, seed=4)
    leaves = _leaves(params)

    def fn(h1, h2, w, b):
        out = fused_linear_rdrop_loss(h1, h2, w, y, bias=b, alpha=0.9, label_smoothing=0.1,
                                      chunk_size=2)
        return out.loss, out.task_loss, out.consistency_loss

    assert torch.autograd.gradcheck(fn, tuple(leaves))


def test_only_weight_requires_grad():
    params, y = _make((6,), torch.float32, seed=5, bias=False)
    h1, h2, w, _ = params
    w1, w2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    fused_linear_rdrop_loss(h1, h2, w1, y, alpha=1.0, chunk_size=4).loss.backward()
    _unfused(h1, h2, w2, None, y, alpha=1.0).loss.backward()
    torch.testing.assert_close(w1.grad, w2.grad)


def test_all_ignored_gives_zero_and_zero_grads():
    params, _ = _make((4,), torch.float32)
    leaves = _leaves(params)
    y = torch.full((4,), -100)
    out = fused_linear_rdrop_loss(*leaves[:3], y, bias=leaves[3], alpha=1.0, chunk_size=3)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(not p.grad.any() for p in leaves)


def test_module_matches_function():
    params, y = _make((2, 3), torch.float32, seed=6)
    crit = FusedLinearRDropLoss(alpha=0.5, label_smoothing=0.1, chunk_size=2)
    out = crit(*params[:3], y, params[3])
    ref = fused_linear_rdrop_loss(*params[:3], y, bias=params[3], alpha=0.5,
                                  label_smoothing=0.1, chunk_size=2)
    torch.testing.assert_close(out.loss, ref.loss)
    assert "chunk_size=2" in repr(crit)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"reduction": "none"}, ValueError, "reduction"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing"),
        ({"weight": torch.zeros(V, H + 1)}, ValueError, "weight"),
        ({"weight": torch.zeros(V, H, dtype=torch.float64)}, TypeError, "dtype"),
        ({"bias": torch.zeros(V + 1)}, ValueError, "bias"),
        ({"target": torch.zeros(4)}, TypeError, "class indices"),
        ({"target": torch.zeros(3, dtype=torch.long)}, ValueError, "target shape"),
        ({"hidden2": torch.zeros(5, H)}, ValueError, "same shape"),
    ],
)
def test_invalid_inputs_raise(change, error, match):
    params, y = _make((4,), torch.float32, seed=7)
    kw = {"hidden1": params[0], "hidden2": params[1], "weight": params[2], "target": y,
          "bias": params[3], "alpha": 1.0} | change
    with pytest.raises(error, match=match):
        fused_linear_rdrop_loss(**kw)


def test_nan_hidden_states_raise():
    params, y = _make((4,), torch.float32, seed=8)
    params[0][1, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        fused_linear_rdrop_loss(*params[:3], y, bias=params[3], alpha=1.0)


def test_nan_hidden_state_at_an_ignored_row_is_refused_not_a_nan_gradient():
    # Its loss is masked to 0, so the loss stays finite; its gradient would reach the weight as
    # NaN. With check_finite (the default) the one sync names it; without, the NaN is what
    # PyTorch gives (as F.cross_entropy does), and rows that count are untouched.
    params, y = _make((6,), torch.float32, seed=9, ignore_frac=0.0)
    y[3] = -100
    for bad in (float("nan"), float("inf"), -float("inf")):
        h1 = params[0].clone()
        h1[3, 1] = bad
        with pytest.raises(FloatingPointError, match="do not count"):
            fused_linear_rdrop_loss(h1, params[1], params[2], y, bias=params[3], alpha=1.0)
    leaves = _leaves([h1, *params[1:]])
    out = fused_linear_rdrop_loss(*leaves[:3], y, bias=leaves[3], alpha=1.0, check_finite=False)
    keep = torch.arange(6) != 3
    w, b = params[2].double(), params[3].double()
    ref = reference_rdrop_loss([linear(params[0][keep].double(), w, b),
                                linear(params[1][keep].double(), w, b)], y[keep], alpha=1.0)
    torch.testing.assert_close(out.loss.double(), ref["loss"], rtol=1e-5, atol=1e-6)


def test_target_outside_the_vocabulary_is_a_clear_error_and_integer_dtypes_agree():
    params, y = _make((5,), torch.float32, seed=10, ignore_frac=0.0)
    for wrong in (V, -3):
        bad = y.clone()
        bad[2] = wrong
        with pytest.raises(ValueError, match=rf"outside \[0, {V}\)"):
            fused_linear_rdrop_loss(*params[:3], bad, bias=params[3], alpha=1.0)
    ref = fused_linear_rdrop_loss(*params[:3], y, bias=params[3], alpha=1.0)
    for dtype in (torch.uint8, torch.int32):
        out = fused_linear_rdrop_loss(*params[:3], y.to(dtype), bias=params[3], alpha=1.0)
        torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)


class _LargestOutput(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_full_logits_never_exist():
    n, v, h, chunk = 48, 40, 8, 16
    leaves = _leaves([torch.randn(n, h), torch.randn(n, h), torch.randn(v, h), torch.randn(v)])
    y = torch.randint(0, v, (n,))
    with _LargestOutput() as mode:
        out = fused_linear_rdrop_loss(*leaves[:3], y, bias=leaves[3], alpha=1.0, chunk_size=chunk)
        out.loss.backward()
    assert mode.largest <= chunk * v  # no tensor of forward or backward exceeds one chunk block


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_compiled_kernels_match_reference(monkeypatch, label_smoothing):
    from rdrop.losses.kernels import compiled as _compiled

    monkeypatch.setenv("RDROP_COMPILE", "always")
    monkeypatch.setattr(_compiled, "_broken", [])
    params, y = _make((11,), torch.float32, seed=7)
    kw = {"alpha": 1.3, "label_smoothing": label_smoothing}
    ours = _leaves(params)
    out = fused_linear_rdrop_loss(*ours[:3], y, bias=ours[3], chunk_size=5, **kw)  # 5, 5, 1 rows
    got = _grads(out.loss, ours)
    assert not _compiled._broken
    ref_leaves = _leaves([p.double() for p in params])
    z = [linear(h, ref_leaves[2], ref_leaves[3]) for h in ref_leaves[:2]]
    ref = reference_rdrop_loss(z, y, **kw)
    _close(out.loss, ref["loss"], torch.float32, "value")
    for g, r in zip(got, _grads(ref["loss"], ref_leaves), strict=True):
        _close(g, r, torch.float32, "grad")
