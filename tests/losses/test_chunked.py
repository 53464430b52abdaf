"""The chunked R-Drop loss (``rdrop_loss(..., chunk_size=...)``, rdrop.losses.kernels.chunked)
against the float64 reference, and its memory property: no (N, V) intermediate beyond the input
gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rdrop.losses.checks import CHUNK_SIZE
from rdrop.losses.functional import rdrop_loss
from rdrop.losses.kernels.chunked import chunked_rdrop_sums

from reference import naive_official_rdrop_loss, reference_rdrop_loss

# (rtol, atol) for values and gradients per input dtype. The reference sees the same rounded
# inputs in float64; the gap is float32 arithmetic and, for bf16, the gradient rounded to bf16.
TOLERANCES = {
    torch.float64: {"value": (1e-10, 1e-12), "grad": (1e-9, 1e-12)},
    torch.float32: {"value": (1e-5, 1e-6), "grad": (1e-4, 1e-6)},
    torch.bfloat16: {"value": (1e-4, 1e-5), "grad": (2e-2, 2e-3)},
}


def _make(shape, dtype, *, seed=0, ignore_frac=0.25, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    b = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    y[torch.rand(shape[:-1], generator=g) < ignore_frac] = -100
    y.view(-1)[0] = 1  # at least one counted row
    return a, b, y


def _loss_and_grads(fn, a, b, reduce_key="loss"):
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    out = fn(a, b)
    out = out if isinstance(out, dict) else vars(out)
    out[reduce_key].backward()
    return out, a.grad, b.grad


def _close(x, y, dtype, kind):
    rtol, atol = TOLERANCES[dtype][kind]
    torch.testing.assert_close(x.double(), y.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("shape", [(13, 11), (3, 5, 17)], ids=["NxC", "BxTxV"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_values_and_gradients_match_reference(dtype, shape, label_smoothing, chunk_size):
    # chunk 4 does not divide 13 or 15 rows; 64 is one chunk larger than N.
    a, b, y = _make(shape, dtype)
    kw = {"alpha": 0.7, "label_smoothing": label_smoothing}
    ours, ga, gb = _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, chunk_size=chunk_size, **kw),
                                   a, b)
    ref, ra, rb = _loss_and_grads(
        lambda p, q: reference_rdrop_loss([p.double(), q.double()], y, **kw), a, b)
    for key in ("loss", "task_loss", "consistency_loss"):
        assert ours[key].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        _close(ours[key], ref[key], dtype, "value")
    assert ga.dtype == dtype and gb.dtype == dtype
    _close(ga, ra, dtype, "grad")
    _close(gb, rb, dtype, "grad")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("num_items_in_batch", [None, 40])
def test_reductions_match_unchunked(reduction, num_items_in_batch):
    a, b, y = _make((2, 9, 10), torch.float32, seed=1)
    kw = {"alpha": 2.0, "reduction": reduction, "num_items_in_batch": num_items_in_batch,
          "label_smoothing": 0.2}
    ours, ga, gb = _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, chunk_size=5, **kw), a, b)
    ref, ra, rb = _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, **kw), a, b)
    for key in ("loss", "task_loss", "consistency_loss"):
        torch.testing.assert_close(ours[key], ref[key])
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_separate_output_scales_for_task_and_consistency():
    a, b, y = _make((7, 6), torch.float64, seed=2)
    gt, gc = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-1.7, dtype=torch.float64)
    grads = []
    for fn in (
        lambda p, q: chunked_rdrop_sums(p, q, y, ignore_index=-100, label_smoothing=0.1,
                                        chunk_size=3),
        lambda p, q: (lambda o: (o.task_loss, o.consistency_loss))(
            rdrop_loss(p, q, y, alpha=1.0, reduction="sum", label_smoothing=0.1)),
    ):
        p, q = a.clone().requires_grad_(), b.clone().requires_grad_()
        task, cons = fn(p, q)
        grads.append(torch.autograd.grad((task, cons), (p, q), grad_outputs=(gt, gc)))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref)


def test_gradcheck_float64():
    a, b, y = _make((5, 4), torch.float64, seed=3)
    a.requires_grad_(), b.requires_grad_()

    def fn(p, q):
        return chunked_rdrop_sums(p, q, y, ignore_index=-100, label_smoothing=0.15, chunk_size=2)

    assert torch.autograd.gradcheck(fn, (a, b))


def test_grad_of_one_input_only():
    a, b, y = _make((6, 5), torch.float32, seed=4)
    a.requires_grad_()
    rdrop_loss(a, b, y, alpha=1.0, chunk_size=4).loss.backward()
    ref = a.detach().clone().requires_grad_()
    rdrop_loss(ref, b, y, alpha=1.0).loss.backward()
    torch.testing.assert_close(a.grad, ref.grad)


def test_all_ignored_gives_zero_and_zero_grads():
    a, b, _ = _make((4, 6), torch.float32)
    a.requires_grad_(), b.requires_grad_()
    y = torch.full((4,), -100)
    out = rdrop_loss(a, b, y, alpha=1.0, chunk_size=3, label_smoothing=0.1)
    assert out.loss.item() == 0.0 and out.consistency_loss.item() == 0.0
    out.loss.backward()
    assert not a.grad.any() and not b.grad.any()


def test_identical_passes_have_zero_consistency():
    a, _, y = _make((9, 8), torch.float32)
    out = rdrop_loss(a, a.clone(), y, alpha=1.0, chunk_size=4)
    assert out.consistency_loss.item() == 0.0


def test_classes_masked_in_both_passes_contribute_zero():
    a, b, y = _make((6, 8), torch.float32, seed=5, ignore_frac=0.0)
    y = y.clamp_max(4)
    a[:, 5:] = -math.inf
    b[:, 5:] = -math.inf
    ours, ga, gb = _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, alpha=1.0, chunk_size=4),
                                   a, b)
    truncated = (a[:, :5], b[:, :5])
    ref, ra, rb = _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, alpha=1.0), *truncated)
    torch.testing.assert_close(ours["loss"], ref["loss"])
    torch.testing.assert_close(ga[:, :5], ra)
    torch.testing.assert_close(gb[:, :5], rb)
    assert not ga[:, 5:].any() and not gb[:, 5:].any()


# ------------------------------------------------------------------------------ memory properties
class _LargeAllocations(TorchDispatchMode):
    """Records the storages of every op output with at least ``numel`` elements (forward and
    backward), except views of the ``known`` tensors."""

    def __init__(self, numel: int, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.numel = numel
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.storages: dict[int, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() >= self.numel:
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self.known:
                    self.storages.setdefault(ptr, str(func))
        return out


def _large_ops(fn, n, v):
    a, b, y = _make((n, v), torch.float32, seed=6)
    a.requires_grad_(), b.requires_grad_()
    with _LargeAllocations(n * v, [a, b]) as mode:
        fn(a, b, y).backward()
    return list(mode.storages.values())


def test_no_full_size_intermediate_beyond_the_input_gradients():
    n, v = 64, 50
    chunked = _large_ops(lambda a, b, y: rdrop_loss(a, b, y, alpha=1.0, chunk_size=16).loss, n, v)
    naive = _large_ops(lambda a, b, y: naive_official_rdrop_loss(a, b, y, alpha=1.0), n, v)
    # The two input gradients are the only (N, V) tensors the chunked loss ever creates.
    assert len(chunked) == 2, chunked
    assert len(naive) > 6  # the property is not vacuous: the naive formula builds many


def test_saves_only_inputs_and_per_row_scalars():
    n, v = 32, 40
    a, b, y = _make((n, v), torch.float32, seed=7)
    a.requires_grad_(), b.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = rdrop_loss(a, b, y, alpha=1.0, chunk_size=8).loss
    inputs = {a.data_ptr(), b.data_ptr()}
    large = [t for t in saved if t.numel() >= n * v]
    assert large and all(t.data_ptr() in inputs for t in large)  # the inputs themselves, no copy
    assert all(t.numel() <= n for t in saved if t.data_ptr() not in inputs)
    loss.backward()


# ------------------------------------------------ compiled kernels (rdrop.losses.kernels.compiled)
@pytest.fixture
def compiled(monkeypatch):
    """Force the torch.compile kernels at any size (the default compiles large calls only)."""
    from rdrop.losses.kernels import compiled as _compiled

    monkeypatch.setenv("RDROP_COMPILE", "always")
    monkeypatch.setattr(_compiled, "_broken", [])
    return _compiled


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_compiled_kernels_match_reference_and_eager(compiled, monkeypatch, dtype,
                                                    label_smoothing):
    # 13 rows in chunks of 4: the last chunk has 1 row (the padded case).
    a, b, y = _make((13, 11), dtype, seed=5)
    kw = {"alpha": 0.7, "label_smoothing": label_smoothing}

    def ours(p, q):
        return rdrop_loss(p, q, y, chunk_size=4, **kw)

    got, ga, gb = _loss_and_grads(ours, a, b)
    assert not compiled._broken
    ref, ra, rb = _loss_and_grads(
        lambda p, q: reference_rdrop_loss([p.double(), q.double()], y, **kw), a, b)
    for key in ("loss", "task_loss", "consistency_loss"):
        _close(got[key], ref[key], dtype, "value")
    assert ga.dtype == dtype
    _close(ga, ra, dtype, "grad")
    _close(gb, rb, dtype, "grad")
    monkeypatch.setenv("RDROP_COMPILE", "never")
    eager, ea, eb = _loss_and_grads(ours, a, b)
    rtol, atol = (1e-6, 1e-7) if dtype == torch.float32 else TOLERANCES[dtype]["grad"]
    torch.testing.assert_close(got["loss"], eager["loss"], rtol=rtol, atol=atol)
    torch.testing.assert_close(ga.double(), ea.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gb.double(), eb.double(), rtol=rtol, atol=atol)


def test_compiled_kernels_one_graph_for_every_chunk_and_shape(compiled):
    from torch._dynamo.utils import counters

    def run(n, v, chunk, eps):
        a, b, y = _make((n, v), torch.float32, seed=n + v)
        _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, alpha=1.0, chunk_size=chunk,
                                                label_smoothing=eps), a, b)

    run(12, 9, 5, 0.0)  # compiles (or reuses) the float32 graphs
    before = counters["stats"]["unique_graphs"]
    for n, v, chunk, eps in [(13, 9, 4, 0.0), (9, 30, 4, 0.1), (17, 7, 8, 0.2), (1, 5, 4, 0.0)]:
        run(n, v, chunk, eps)  # other rows, V, last-chunk sizes (incl. 1 row), smoothing
    assert counters["stats"]["unique_graphs"] == before
    assert not compiled._broken


def test_compile_failure_falls_back_to_eager_with_one_warning(compiled, monkeypatch):
    def broken_kernel(name, fn):
        def fail(*args):
            raise RuntimeError("no C++ compiler found")

        return fail

    monkeypatch.setattr(compiled, "_kernel", broken_kernel)
    a, b, y = _make((10, 7), torch.float32, seed=6)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        got, ga, gb = _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, alpha=1.0, chunk_size=3),
                                      a, b)
    assert compiled._broken  # from now on eager, without trying again
    assert not compiled.compile_wanted(1 << 30)
    ref, ra, rb = _loss_and_grads(lambda p, q: rdrop_loss(p, q, y, alpha=1.0), a, b)
    torch.testing.assert_close(got["loss"], ref["loss"])
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_compile_switch(monkeypatch):
    from rdrop.losses.kernels import compiled as _compiled

    monkeypatch.setattr(_compiled, "_broken", [])
    monkeypatch.delenv("RDROP_COMPILE", raising=False)
    assert not _compiled.compile_wanted(_compiled.MIN_ELEMENTS - 1)  # auto: small stays eager
    assert _compiled.compile_wanted(_compiled.MIN_ELEMENTS)
    monkeypatch.setenv("RDROP_COMPILE", "never")
    assert not _compiled.compile_wanted(1 << 30)
    monkeypatch.setenv("RDROP_COMPILE", "1")
    assert _compiled.compile_wanted(1)
    monkeypatch.setenv("RDROP_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="RDROP_COMPILE must be one of"):
        _compiled.compile_wanted(1)


@pytest.mark.parametrize(("consistency", "reduction", "lean"), [
    ("kl", "mean", True), ("kl", "sum", True), ("js", "mean", False), ("kl", "none", False),
])
def test_large_default_calls_take_the_chunked_path(monkeypatch, consistency, reduction, lean):
    # The size rule is rdrop.losses.kernels.compiled.compile_wanted; pretend this small call is
    # large.
    import rdrop.losses.functional as functional
    import rdrop.losses.kernels.compiled

    monkeypatch.setattr(rdrop.losses.kernels.compiled, "compile_wanted", lambda numel: True)
    seen = []
    real = functional._chunked
    monkeypatch.setattr(functional, "_chunked",
                        lambda *a, **k: seen.append(k["chunk_size"]) or real(*a, **k))
    g = torch.Generator().manual_seed(3)
    l1, l2 = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g)
    y = torch.tensor([0, 3, -100, 6, 2, 1])
    out = rdrop_loss(l1, l2, y, alpha=2.0, consistency=consistency, reduction=reduction)
    assert seen == ([CHUNK_SIZE] if lean else [])
    if consistency == "kl" and reduction == "mean":
        ref = reference_rdrop_loss([l1.double(), l2.double()], y, alpha=2.0)
        torch.testing.assert_close(out.loss.double(), ref["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_at_ignored_rows_are_an_error_in_the_chunked_path_too(bad):
    # Finite loss, NaN gradient: the plain path raises; the chunked one must not stay silent.
    g = torch.Generator().manual_seed(5)
    l1 = torch.randn(7, 6, generator=g, requires_grad=True)
    l2 = torch.randn(7, 6, generator=g)
    y = torch.tensor([0, 1, 2, -100, 3, 4, 5])
    with torch.no_grad():
        l1[3, 2] = bad
    with pytest.raises(FloatingPointError, match="do not count"):
        rdrop_loss(l1, l2, y, alpha=1.0, chunk_size=2)
    # -inf in both passes at an ignored row is a masked class: fine, and equal to the plain path.
    with torch.no_grad():
        l1[3, 2] = l2[3, 2] = float("-inf")
    chunked = rdrop_loss(l1, l2, y, alpha=1.0, chunk_size=2).loss
    plain = rdrop_loss(l1, l2, y, alpha=1.0).loss
    torch.testing.assert_close(chunked, plain)
