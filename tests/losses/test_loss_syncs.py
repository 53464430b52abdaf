"""What the losses cost the device: ``check_finite=True`` reads one value per call (the fused check
of the loss, the targets and a tensor ``num_items_in_batch``), ``check_finite=False`` none, and
then every entry point traces into one ``torch.compile`` graph (``fullgraph=True``).

A read of a tensor's value is the ``aten._local_scalar_dense`` op (``.item()``, ``bool()``,
``int()``): counted with a dispatch mode, so this holds on any device without timing anything.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rdrop import RDropLoss
from rdrop.losses.functional import multi_pass_rdrop_loss, rdrop_loss, single_pass_loss


class CountReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def _inputs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 5, generator=g, requires_grad=True)
    b = torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, -100])
    return a, b, y


CALLS = {
    "kl": lambda a, b, y, **kw: rdrop_loss(a, b, y, alpha=1.0, **kw),
    "js": lambda a, b, y, **kw: rdrop_loss(a, b, y, alpha=1.0, consistency="js", **kw),
    "smoothed": lambda a, b, y, **kw: rdrop_loss(a, b, y, alpha=1.0, label_smoothing=0.1, **kw),
    "none": lambda a, b, y, **kw: rdrop_loss(a, b, y, alpha=1.0, reduction="none", **kw),
    "chunked": lambda a, b, y, **kw: rdrop_loss(a, b, y, alpha=1.0, chunk_size=2, **kw),
    "mse": lambda a, b, y, **kw: rdrop_loss(a, b, a.detach() * 0.3, alpha=1.0,
                                            consistency="mse", **kw),
    "three passes": lambda a, b, y, **kw: multi_pass_rdrop_loss([a, b, b * 0.5], y, alpha=1.0,
                                                                **kw),
    "single pass": lambda a, b, y, **kw: single_pass_loss(a, y, **kw),
    "module": lambda a, b, y, **kw: RDropLoss(alpha=1.0, **kw)(a, b, y),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_check_finite_reads_one_value_and_no_check_reads_none(name):
    a, b, y = _inputs()
    with CountReads() as checked:
        out = CALLS[name](a, b, y)
    with CountReads() as unchecked:
        CALLS[name](a, b, y, check_finite=False)
    with CountReads() as backward:
        out.loss.sum().backward()
    assert (checked.reads, unchecked.reads, backward.reads) == (1, 0, 0)


def test_tensor_num_items_in_batch_adds_no_device_read():
    # A CPU count is read once where it is checked (free: no device sync); on an accelerator it
    # is folded into the one fused check instead (tests/losses/test_loss_inputs.py, GPU only).
    a, b, y = _inputs()
    with CountReads() as plain:
        rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=9)
    with CountReads() as cpu_tensor:
        rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=torch.tensor(9))
    assert (plain.reads, cpu_tensor.reads) == (1, 2)


@pytest.mark.parametrize("name", ["kl", "js", "smoothed", "mse", "three passes", "single pass"])
@pytest.mark.parametrize("num_items_in_batch", [None, 9, "tensor"])
def test_unchecked_loss_compiles_to_one_graph(name, num_items_in_batch):
    a, b, y = _inputs()
    n = torch.tensor(9) if num_items_in_batch == "tensor" else num_items_in_batch

    def loss(p, q, t):
        return CALLS[name](p, q, t, check_finite=False, num_items_in_batch=n).loss

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="eager", fullgraph=True)  # fails on any graph break
    torch.testing.assert_close(compiled(a, b, y), loss(a, b, y))
