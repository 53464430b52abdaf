"""rdrop.training.inspection: stochastic depth counts as dropout; the no-dropout warning names the
fix."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from rdrop import RDrop
from rdrop.training.inspection import active_dropout_rates, no_dropout_advice


class DropPath(nn.Module):
    """Named and shaped like timm.layers.DropPath (drop_prob)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        keep = (torch.rand(x.shape[0], 1) >= self.drop_prob).to(x.dtype)
        return x * keep / (1 - self.drop_prob)


class StochasticDepth(nn.Module):
    """Named and shaped like torchvision.ops.StochasticDepth (p, mode)."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p, self.mode = p, mode


class Block(nn.Module):
    def __init__(self, drop_path: float) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop_path = DropPath(drop_path)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.drop(self.fc(x)))


class VisionTransformer(nn.Module):
    """A timm-like model: defined in a ``timm`` module, drop_rate=0, drop_path_rate as given."""

    def __init__(self, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(drop_path_rate), Block(drop_path_rate))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


VisionTransformer.__module__ = "timm.models.vision_transformer"


class Config:
    """Stands in for a transformers PretrainedConfig."""

    def __init__(self, **values: float) -> None:
        self.values = {"hidden_size": 4, "use_cache": True, **values}

    def to_dict(self) -> dict:
        return dict(self.values)


class HFModel(nn.Module):
    def __init__(self, **dropouts: float) -> None:
        super().__init__()
        self.config = Config(**dropouts)
        self.dense = nn.Linear(4, 3)
        self.dropout = nn.Dropout(0.0)


class LoraLinear(nn.Module):
    """Shaped like peft.tuners.lora.Linear: lora_dropout is a ModuleDict (Identity when 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.base_layer = nn.Linear(4, 4)
        self.lora_dropout = nn.ModuleDict({"default": nn.Identity()})


class PeftModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base_model = HFModel(hidden_dropout_prob=0.0)
        self.base_model.dense = LoraLinear()


def test_drop_path_and_stochastic_depth_count_as_dropout():
    assert active_dropout_rates(VisionTransformer(drop_path_rate=0.4)) == {
        "blocks.0.drop_path": 0.4, "blocks.1.drop_path": 0.4}
    assert active_dropout_rates(VisionTransformer(drop_path_rate=0.0)) == {}
    assert active_dropout_rates(nn.Sequential(StochasticDepth(0.2))) == {"0": 0.2}
    assert active_dropout_rates(nn.Sequential(StochasticDepth(0.0))) == {}


def test_a_vit_with_only_drop_path_gets_no_warning_and_a_nonzero_consistency():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped = RDrop(VisionTransformer(drop_path_rate=0.4), alpha=1.0)
    torch.manual_seed(0)
    out = wrapped(torch.randn(16, 4), target=torch.randint(0, 3, (16,)))
    assert out.consistency_loss.item() > 0


@pytest.mark.parametrize(
    ("model", "advice"),
    [
        (PeftModel(), r"LoraConfig\(lora_dropout="),
        (VisionTransformer(), r"drop_rate=0\.1, drop_path_rate=0\.1"),
        (HFModel(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
         r"\['attention_probs_dropout_prob', 'hidden_dropout_prob'\]"),
        (HFModel(attention_dropout=0.0), r"\['attention_dropout'\].*attention_dropout=0\.1"),
        (nn.Linear(4, 3), r"nn\.Dropout"),
    ],
    ids=["peft", "timm", "bert", "llama", "plain"],
)
def test_the_no_dropout_warning_names_the_fix_for_the_model(model, advice):
    with pytest.warns(UserWarning, match=r"no dropout layer with p > 0.*" + advice):
        RDrop(model, alpha=1.0)


def test_peft_advice_does_not_quote_the_base_config():
    assert "hidden_dropout_prob" not in no_dropout_advice(PeftModel())
