"""R-Drop in a plain PyTorch training loop: wrap the model, pass the target, use ``out.loss``.

What it shows: the wrapper runs the model's two dropout passes in one forward (over ``[x; x]``) and
returns ``loss = task + alpha * consistency``, both parts logged, with the consistency (the
symmetric KL between the passes) falling as training goes; in eval mode the wrapped model is the
plain model. The lines that differ from an ordinary loop are tagged ``# [rdrop]``. Synthetic data,
one CPU thread, a few seconds:

    python examples/plain_pytorch.py --steps 200
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import rdrop  # [rdrop]


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Five Gaussian blobs in 20 dimensions."""
    centers = torch.randn(5, 20, generator=torch.Generator().manual_seed(1)) * 1.5
    y = torch.randint(0, 5, (n,), generator=generator)
    return centers[y] + torch.randn(n, 20, generator=generator), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: more threads only contend

    print(f"R-Drop (alpha={args.alpha}) in a plain PyTorch loop, {args.steps} steps on five "
          "Gaussian blobs; loss = task (CE of both passes) + alpha * consistency (their KL).")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = make_data(2048, g)
    x_test, y_test = make_data(512, g)

    net = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 5))
    model = rdrop.RDrop(net, alpha=args.alpha)  # [rdrop] one forward over [x; x]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=g)
        model.train()
        out = model(x_train[idx], target=y_train[idx])  # [rdrop] RDropOutput
        optimizer.zero_grad()
        out.loss.backward()  # [rdrop] task + alpha * consistency
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}: loss {out.loss.item():.4f} = task {out.task_loss.item():.4f} "
                  f"+ {args.alpha} * consistency {out.consistency_loss.item():.4f}")

    model.eval()  # eval mode: the plain model, one pass, no dropout
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
    with torch.no_grad():
        same = torch.equal(model(x_test), net(x_test))
    print(f"test accuracy: {accuracy:.3f} (eval mode: the wrapped model's output equals the plain "
          f"model's: {same})")


if __name__ == "__main__":
    main()
