"""fused_linear_rdrop_loss with an FSDP2-sharded output layer (``fully_shard``, 2 gloo processes
on CPU) equals the unsharded single-process run: loss, every gradient, parameters after SGD.

``fused_loss_sharded_head_check.py`` does the distributed work (see its docstring); here we check
what it measured, and on one process that the module form equals the weight form.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rdrop.losses.fused_linear import fused_linear_rdrop_loss

HERE = Path(__file__).resolve().parent
TOL = 1e-6  # float32 reduction order only (measured: loss 4.8e-7 on a loss of ~7, grads 3e-8)
LAYOUTS = ["head_sharded", "head_in_root", "weight_tensors"]

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover - builds without distributed
    pytest.skip("torch.distributed is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def fsdp_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fsdp") / "fsdp.json"
    script = HERE / "fused_loss_sharded_head_check.py"
    proc = subprocess.run([sys.executable, str(script), str(out)],
                          timeout=300, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_head_equals_unsharded_single_process(fsdp_result, layout):
    for res in fsdp_result["ranks"]:
        r = res[layout]
        assert r["weight_is_dtensor"]  # the case that failed before: the weight is a shard
        assert r["loss_diff"] <= TOL
        assert r["grad_diff"] <= TOL * max(1.0, r["grad_scale"])
        assert r["param_diff"] <= TOL
        assert r["head_grad_norm"] > 1e-3  # the head really receives a gradient


def test_module_equals_weight_and_bias():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 19)
    h1, h2 = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    y = torch.randint(0, 19, (2, 5))
    y[0, 1] = -100
    grads = []
    for form in ("module", "tensors"):
        head.zero_grad()
        w = head if form == "module" else head.weight
        b = None if form == "module" else head.bias
        out = fused_linear_rdrop_loss(h1, h2, w, y, bias=b, alpha=0.8, chunk_size=3)
        out.loss.backward()
        grads.append((out.loss.detach(), head.weight.grad.clone(), head.bias.grad.clone()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_module_without_bias_and_bad_modules():
    head = torch.nn.Linear(4, 7, bias=False)
    h = torch.randn(3, 4)
    y = torch.tensor([1, 2, 3])
    ref = fused_linear_rdrop_loss(h, h * 0.5, head.weight, y, alpha=1.0).loss
    got = fused_linear_rdrop_loss(h, h * 0.5, head, y, alpha=1.0).loss
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="bias is taken from the module"):
        fused_linear_rdrop_loss(h, h, head, y, bias=torch.zeros(7), alpha=1.0)
    with pytest.raises(TypeError, match=r"without a \.weight tensor"):
        fused_linear_rdrop_loss(h, h, torch.nn.ReLU(), y, alpha=1.0)
