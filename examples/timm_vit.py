"""R-Drop with a timm Vision Transformer: a tiny random-init ViT on synthetic images.

timm's ViT has two kinds of dropout: ``drop_rate`` (dropout on activations) and
``drop_path_rate`` (stochastic depth, DropPath: whole residual branches dropped per sample).
Both make the two passes differ, so both count for R-Drop (the paper's ViT setting used alpha
0.6). Wrap the model in ``rdrop.RDrop``; the lines tagged ``# [rdrop]`` are the whole change.
Offline: the model is built from timm's registry without weights, the images are synthetic
(which quadrant is bright?).

    python examples/timm_vit.py --steps 40

timm imports torchvision: install one built for your torch (``pip install timm torchvision``).
"""

from __future__ import annotations

import argparse

import timm
import torch

from rdrop import RDrop  # [rdrop]


def make_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright 16x16 quadrant; the label is the quadrant."""
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    y = torch.randint(0, 4, (n,), generator=g)
    for i, q in enumerate(y.tolist()):
        r, c = divmod(q, 2)
        x[i, :, 16 * r:16 * (r + 1), 16 * c:16 * (c + 1)] += 1.0
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--alpha", type=float, default=0.6)
    args = parser.parse_args()

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            depth=2, num_classes=4, drop_rate=0.1, drop_path_rate=0.2)
    model = RDrop(vit, alpha=args.alpha)  # [rdrop]
    optimizer = torch.optim.AdamW(vit.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    print(f"R-Drop (alpha={args.alpha}) on a timm ViT (drop_rate 0.1, drop_path_rate 0.2), "
          f"{args.steps} steps")
    model.train()
    for step in range(1, args.steps + 1):
        x, y = make_batch(32, g)
        out = model(x, target=y)  # [rdrop] one forward over [x; x]
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step % max(args.steps // 4, 1) == 0:
            print(f"step {step}: loss {out.loss.item():.4f} = task {out.task_loss.item():.4f} + "
                  f"{args.alpha} * consistency {out.consistency_loss.item():.4f}")
    model.eval()
    x, y = make_batch(512, torch.Generator().manual_seed(2))
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    print(f"held-out accuracy {accuracy:.3f} (chance 0.25)")


if __name__ == "__main__":
    main()
