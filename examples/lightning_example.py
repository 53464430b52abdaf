"""R-Drop with PyTorch Lightning: subclass ``RDropLightningModule`` instead of ``LightningModule``.

Its ``training_step`` runs one forward over ``[x; x]``, logs ``train/loss``, ``train/task_loss``,
``train/consistency_loss``, ``train/task_loss_per_pass`` and ``train/rdrop_alpha``, and asks
``rdrop.training.schedule.rdrop_step`` at the optimizer step, so ``accumulate_grad_batches``
gives every micro-batch of a step the same decision (here: an alpha warm-up over the first steps).
Offline, synthetic data (which of 3 directions is the point closest to?).

    python examples/lightning_example.py --steps 30
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from torch import nn

from rdrop.integrations.lightning import RDropLightningModule  # [rdrop]


class Classifier(RDropLightningModule):  # [rdrop] was pl.LightningModule
    def __init__(self, alpha: float) -> None:
        super().__init__(alpha=alpha, alpha_warmup_steps=10)  # [rdrop]
        self.net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def make_data(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    directions = torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    x = torch.randn(n, 2, generator=g)
    return torch.utils.data.TensorDataset(x, (x @ directions.T).argmax(1))


class PrintLogs(pl.Callback):
    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 and step % self.every == 0:
            m = {k: float(v) for k, v in trainer.callback_metrics.items()}
            print(f"step {step}: loss {m['train/loss']:.4f} = task {m['train/task_loss']:.4f} + "
                  f"{m['train/rdrop_alpha']:.2f} * consistency "
                  f"{m['train/consistency_loss']:.4f}; "
                  f"per pass {m['train/task_loss_per_pass']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    model = Classifier(args.alpha)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.steps,
                         accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[PrintLogs(max(args.steps // 3, 1))])
    print(f"R-Drop (alpha={args.alpha}, warm-up 10 optimizer steps) in Lightning, {args.steps} "
          "optimizer steps of 2 accumulated micro-batches")
    trainer.fit(model, torch.utils.data.DataLoader(make_data(2048, 0), batch_size=32,
                                                   shuffle=True))
    test = make_data(1024, 1)
    model.eval()
    with torch.no_grad():
        accuracy = (model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean().item()
    print(f"held-out accuracy {accuracy:.3f} (chance 0.33)")


if __name__ == "__main__":
    main()
