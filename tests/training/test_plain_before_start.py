"""Before R-Drop starts (and on off-steps) a step is the baseline's plain step exactly: the same
loss and gradients as the unwrapped model with cross-entropy, float64, whatever ``noise=``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rdrop
from rdrop.training.noise import attach_noise


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(8 * 4, 5)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(x)).flatten(1))


def _plain_reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int):
    net.train()
    torch.manual_seed(seed)
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return loss.detach(), grads


@pytest.mark.parametrize("noise", ["dropout", "embedding:5", "dropout:0.3"])
@pytest.mark.parametrize("when", ["before_start", "off_step"])
def test_plain_step_equals_the_baseline_step(noise, when):
    torch.manual_seed(0)
    net = Net().double()
    reference = copy.deepcopy(net)
    x, y = torch.randint(0, 11, (6, 4)), torch.randint(0, 5, (6,))
    kwargs = {"start_step": 3} if when == "before_start" else {"every_k_steps": 2}
    wrapped = rdrop.RDrop(net, alpha=1.0, noise=noise, check_inputs=False, **kwargs)
    wrapped.train()
    wrapped.set_step(0 if when == "before_start" else 1)
    assert not wrapped.schedule().active
    torch.manual_seed(7)
    out = wrapped(x, target=y)
    grads = torch.autograd.grad(out.loss, list(net.parameters()))
    ref_loss, ref_grads = _plain_reference(reference, x, y, seed=7)
    assert torch.equal(out.loss.detach(), ref_loss)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)
    # ... and the noise is back for the R-Drop steps.
    wrapped.set_step(3 if when == "before_start" else 2)
    assert wrapped.schedule().active
    if noise == "dropout:0.3":
        assert net.drop.p == 0.3


def test_the_noise_is_on_during_an_rdrop_step():
    torch.manual_seed(0)
    net = Net().double()
    handle = attach_noise(net, "embedding:5")
    x = torch.randint(0, 11, (2, 4))
    net.train()
    with handle.plain():
        torch.manual_seed(1)
        a = net.embed(x)
    torch.manual_seed(1)
    b = net.embed(x)
    assert torch.equal(a, net.embed.weight[x]) and not torch.equal(a, b)
