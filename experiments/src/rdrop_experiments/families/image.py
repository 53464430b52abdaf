"""Image classification: a small ViT (patch embedding + pre-LN Transformer encoder + LayerNorm,
no BatchNorm) trained from scratch on Fashion-MNIST, baseline vs R-Drop at equal optimizer steps.

The paper fine-tunes ViT-B/16 and ViT-L/16 on CIFAR-100 and ImageNet with alpha = 0.6; we keep
its alpha and train a small ViT from scratch on a subset of Fashion-MNIST, on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdrop_experiments.config import (
    CommonConfig,
    ConfigError,
    apply_overrides,
    check_heads,
    check_rates,
)
from rdrop_experiments.protocol import cheaper_grid, plateau_grid, protocol_grid, run_task
from rdrop_experiments.registry import ArmRun, Experiment, RunResult, register
from rdrop_experiments.task import Task
from rdrop_experiments.training import resolve_device

__all__ = ["ImageConfig", "SmallViT", "run_image"]


@dataclass(frozen=True)
class ImageConfig(CommonConfig):
    """Image family config (see :class:`CommonConfig` for the shared fields).

    Attributes:
        dataset: ``fashion-mnist`` | ``digits`` | ``folder`` | ``hf``; data_path: its location
            (``fashion-mnist`` defaults to the Debian package's folder).
        train_size, valid_size, test_size: examples per split (0 = all available).
        image_size: resize side for ``folder``/``hf`` data; channels: 1 or 3.
        patch_size, dim, depth, heads, mlp_dim, dropout: the ViT.
        eval_batch_size: batch size of evaluation forwards.
    """

    dataset: str = "fashion-mnist"
    data_path: str | None = None
    train_size: int = 10000
    valid_size: int = 5000
    test_size: int = 0
    image_size: int | None = None
    channels: int = 1
    patch_size: int = 7
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.1
    eval_batch_size: int = 1000
    alpha: float = 0.6
    max_steps: int = 2000
    eval_every: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100

    def validate(self) -> None:
        super().validate()
        check_heads(self)
        check_rates(self, "dropout")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}.")


class SmallViT(nn.Module):
    """ViT: non-overlapping patches -> linear embedding + [CLS] + learned positions -> pre-LN
    Transformer encoder (dropout on attention weights, MLP and residual branches) -> LayerNorm ->
    linear head on [CLS]. No BatchNorm, so R-Drop's duplicated batch changes no statistics."""

    def __init__(self, *, image_shape: tuple[int, int, int], num_classes: int, patch_size: int,
                 dim: int, depth: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        c, h, w = image_shape
        if h % patch_size or w % patch_size:
            raise ConfigError(f"image {h}x{w} is not divisible by patch_size={patch_size}.")
        n_patches = (h // patch_size) * (w // patch_size)
        self.patch = nn.Conv2d(c, dim, kernel_size=patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.encoder(self.drop(tokens)))[:, 0])


@lru_cache(maxsize=4)
def _data(dataset: str, path: str | None, train_size: int, valid_size: int, test_size: int,
          image_size: int | None, channels: int):  # type: ignore[no-untyped-def]
    from rdrop_experiments.data.images import load_images

    return load_images(dataset, path, train_size=train_size, valid_size=valid_size,
                       test_size=test_size, image_size=image_size, channels=channels)


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> dict[str, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        loss += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
        correct += (logits.argmax(-1) == y[i : i + batch_size]).sum().item()
    return {"loss": loss / len(y), "accuracy": correct / len(y)}


def run_image(cfg: ImageConfig, ctx: ArmRun) -> RunResult:
    """One seed of one arm: the normalized images, the ViT, accuracy (:func:`run_task`)."""
    data = _data(cfg.dataset, cfg.data_path, cfg.train_size, cfg.valid_size, cfg.test_size,
                 cfg.image_size, cfg.channels)
    mean, std = data.splits["train"][0].mean(), data.splits["train"][0].std()
    device = resolve_device(cfg.device)
    x_tr, y_tr = ((data.splits["train"][0] - mean) / std).to(device), data.splits["train"][1]
    x_va, y_va = (data.splits["valid"][0] - mean) / std, data.splits["valid"][1]
    x_te, y_te = (data.splits["test"][0] - mean) / std, data.splits["test"][1]
    x_va, x_te, y_tr, y_va, y_te = (t.to(device) for t in (x_va, x_te, y_tr, y_va, y_te))
    # Train loss on the curves: eval mode, on a fixed slice of at most 500 training images.
    n_probe = min(len(y_tr), 500)
    ctx.record_data(x_tr, y_tr, x_va, y_va, x_te, y_te)
    splits = {"train": (x_tr[:n_probe], y_tr[:n_probe]), "valid": (x_va, y_va),
              "test": (x_te, y_te)}

    def model() -> nn.Module:
        return SmallViT(image_shape=data.shape, num_classes=len(data.classes),
                        patch_size=cfg.patch_size, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                        mlp_dim=cfg.mlp_dim, dropout=cfg.dropout)

    def batch(idx: Tensor) -> tuple[tuple[Tensor], Tensor]:
        idx = idx.to(device)
        return (x_tr[idx],), y_tr[idx]

    return run_task(Task(
        model=model, batch=batch, n_train=len(y_tr), device=device, metric="accuracy",
        evaluate=lambda net, split: _evaluate(net, *splits[split], cfg.eval_batch_size),
        report_valid=True,
        extra={"data": data.source, "sizes": data.sizes(), "classes": data.classes}), cfg, ctx)


# Second protocol (docs/EXPERIMENTS.md): 500 training images and a 2-layer d=32 ViT from
# scratch, so the baseline reaches its validation optimum within a few hundred steps on a
# shared CPU core and then overfits (with 1,000 images it was still improving slowly after
# 15 epochs); 1,000 valid, 2,000 test images (the official test set's first 2k).
PROTOCOL = {"train_size": 500, "valid_size": 1000, "test_size": 2000, "dim": 32, "depth": 2,
            "mlp_dim": 64, "batch_size": 32, "lr": 2e-3, "eval_every": 16, "patience": 5,
            "max_sample_passes": 32 * 1500, "max_steps": 5000, "warmup_steps": 30}
# The cheaper-schedule arms (issue 20; docs/EXPERIMENTS.md, amendment of 2026-12-04 in the
# afternoon) use alpha 1.0, full R-Drop's alpha chosen on validation in the committed results.
ALPHA_GRID = (0.3, 1.0)
DROPOUT_GRID = (0.1, 0.3)

register(Experiment(
    name="image",
    config=apply_overrides(ImageConfig(), PROTOCOL),
    recipe=run_image,
    metric="accuracy",
    metrics=("accuracy", "test_loss", "loss_gap"),
    description="small ViT (2 layers, d=32) from scratch on Fashion-MNIST (500 train subset), "
                "trained to best validation accuracy",
    data="Fashion-MNIST, Debian dataset-fashion-mnist: 500 of the 60k train images (seeded), "
         "1k valid from the rest, the first 2k of the official test set",
    paper="ViT-B/16 fine-tuned, alpha 0.6: CIFAR-100 ≈ +0.6, ImageNet ≈ +0.4 (Table 6)",
    variants={
        "quick": {"dataset": "digits", "patch_size": 4, "train_size": 600, "valid_size": 300,
                  "test_size": 300, "eval_every": 10, "patience": 1, "max_sample_passes": 64 * 20,
                  "seeds": 1, "eval_batch_size": 500, "warmup_steps": 5, "dim": 32, "depth": 1,
                  "mlp_dim": 64},
    },
    grid=protocol_grid(dropout_key="dropout", dropout_grid=DROPOUT_GRID, alpha_grid=ALPHA_GRID)
    + cheaper_grid(alpha=1.0, alpha_grid=ALPHA_GRID) + plateau_grid(),
))
