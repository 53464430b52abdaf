"""RDropLightningModule with noise= and a multi-label head: a dropout-free module's passes
differ by the noise, evaluation is the plain module's, the Bernoulli consistency is the loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_lightning")

from rdrop import multilabel_rdrop_loss
from rdrop.integrations.lightning import RDropLightningModule

torch.set_num_threads(1)


class Tagger(RDropLightningModule):
    """Token ids -> per-token logits, no dropout anywhere."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 8)
        self.out = nn.Linear(8, 11)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(ids)))


def test_embedding_noise_makes_the_passes_differ_and_eval_stays_plain():
    ids, y = torch.randint(0, 11, (4, 5)), torch.randint(0, 11, (4, 5))
    plain = Tagger()
    plain.train()
    assert float(plain.rdrop_loss(ids, target=y).consistency_loss.detach()) == 0.0
    module = Tagger(noise="embedding:5")
    module.train()
    assert float(module.rdrop_loss(ids, target=y).consistency_loss.detach()) > 0
    assert module.rdrop_noise is not None and module.rdrop_noise.targets == ("embed",)
    module.eval()
    plain.eval()
    assert torch.equal(module(ids), plain(ids))


def test_a_noise_the_module_cannot_take_fails_at_its_first_step():
    module = Tagger(noise="lora:0.1")
    module.train()
    with pytest.raises(ValueError, match=r"no LoRA layer.*'embed' \(Embedding\)"):
        module.rdrop_loss(torch.zeros(2, 3, dtype=torch.long),
                          target=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="noise kind must be one of"):
        Tagger(noise="gauss")


class MultiLabel(RDropLightningModule):
    def __init__(self) -> None:
        super().__init__(alpha=0.5, consistency="bernoulli", check_inputs=False)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_multilabel_module_trains_on_the_bernoulli_consistency():
    module = MultiLabel()
    seen = []
    module.net.register_forward_hook(lambda m, i, o: seen.append(o))
    module.train()
    x, y = torch.randn(5, 6), (torch.rand(5, 4) < 0.4).float()
    out = module.rdrop_loss(x, target=y)
    first, second = seen[-1].split(5)
    torch.testing.assert_close(out.loss, multilabel_rdrop_loss(first, second, y, alpha=0.5).loss)
