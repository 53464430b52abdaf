"""The one rule for ``num_items_in_batch`` under DDP (``rdrop_loss``'s docstring): pass the global
count and multiply the loss by the world size. Two gloo CPU processes give the gradient of one
process on the whole batch; without the factor it is 1/world of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from rdrop import rdrop_loss

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import num_items_ddp_check as check  # noqa: E402


def test_documented_ddp_recipe_gives_the_full_batch_gradient(tmp_path):
    subprocess.run([sys.executable, str(HERE / "num_items_ddp_check.py"), str(tmp_path)],
                   check=True, timeout=240, capture_output=True, text=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(check.WORLD)]

    x, noise, y = check.data()
    net = check.model()
    n = x.shape[0]
    logits = net(torch.cat([x, x])) + torch.cat([noise[0], noise[1]])
    rdrop_loss(logits[:n], logits[n:], y, alpha=0.8).loss.backward()  # mean over all counted
    full = net.weight.grad

    for res in ranks:
        torch.testing.assert_close(res["recipe"], full)
        torch.testing.assert_close(res["no_factor"], full / check.WORLD)
