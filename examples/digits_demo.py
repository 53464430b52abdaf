"""R-Drop vs plain dropout on scikit-learn's digits (real 8x8 images shipped inside the wheel).

What it shows: a small dropout MLP trained from the same seeds with and without R-Drop, for the
same number of optimizer steps. R-Drop's consistency term makes the model's dropout passes agree:
the "disagreement" columns give the symmetric KL between two dropout passes (the quantity R-Drop
penalizes, lower = more consistent) on the training images and on held-out images. Held-out
accuracy (mean ± std over seeds, and the paired difference) and the valid - train loss gap are
printed beside them; on a dataset this small their differences are within seed noise in the quick
run, so read them from the long run.

    python examples/digits_demo.py            # quick: 3 seeds x 15 epochs, seconds on one core
    python examples/digits_demo.py --full     # 5 seeds x 60 epochs, a minute or two on one core
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import rdrop

QUICK = {"seeds": 3, "epochs": 15}
FULL = {"seeds": 5, "epochs": 60}


def load_splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Digits, standardized with train statistics, split 60/20/20 by a fixed permutation."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train, n_valid = int(0.6 * len(y)), int(0.2 * len(y))
    idx = {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid],
           "test": perm[n_train + n_valid:]}
    mean, std = x[idx["train"]].mean(0), x[idx["train"]].std(0).clamp_min(1e-3)
    return {k: ((x[v] - mean) / std, y[v]) for k, v in idx.items()}


def make_model(dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(256, 256), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(256, 10),
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


@torch.no_grad()
def pass_disagreement(model: nn.Module, x: torch.Tensor, seed: int) -> float:
    """Mean symmetric KL between two dropout passes (train mode) over ``x``: R-Drop's penalty."""
    model.train()
    torch.manual_seed(10_000 + seed)  # the same dropout masks for both methods of a seed
    return rdrop.symmetric_kl(model(x), model(x)).item()


def train_one(method: str, seed: int, data: dict, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    net = make_model(args.dropout)
    model = rdrop.RDrop(net, alpha=args.alpha) if method == "rdrop" else net  # [rdrop]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    x, y = data["train"]
    g = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(y), generator=g).split(args.batch_size):
            if method == "rdrop":
                loss = model(x[batch], target=y[batch]).loss  # [rdrop]
            else:
                loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    train_loss, _ = evaluate(net, *data["train"])
    valid_loss, _ = evaluate(net, *data["valid"])
    _, test_acc = evaluate(net, *data["test"])
    return {"test_acc": test_acc, "gap": valid_loss - train_loss,
            "dis_train": pass_disagreement(net, data["train"][0], seed),
            "dis_valid": pass_disagreement(net, data["valid"][0], seed)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help=f"the long run: {FULL['seeds']} seeds x {FULL['epochs']} epochs "
                             f"(default: {QUICK['seeds']} x {QUICK['epochs']})")
    parser.add_argument("--seeds", type=int, default=None, help="overrides --full/quick")
    parser.add_argument("--epochs", type=int, default=None, help="overrides --full/quick")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    preset = FULL if args.full else QUICK
    args.seeds = preset["seeds"] if args.seeds is None else args.seeds
    args.epochs = preset["epochs"] if args.epochs is None else args.epochs
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # One thread: the model is tiny, and extra threads only contend on a shared machine.
    torch.set_num_threads(1)
    data = load_splits()
    methods = ("baseline", "rdrop")
    print(f"Training a dropout MLP on scikit-learn digits, with and without R-Drop "
          f"(alpha={args.alpha}): {args.seeds} seed(s) x {args.epochs} epoch(s) per method"
          f"{'' if args.full else '; --full for the long run'}.", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for method in methods:
            r = train_one(method, seed, data, args)
            results[method].append(r)
            print(f"  seed {seed} {method:<8}: test accuracy {100 * r['test_acc']:.2f}%, "
                  f"disagreement train {r['dis_train']:.4f} valid {r['dis_valid']:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)

    def fmt(vals: list[float], scale: float = 1.0, digits: int = 2) -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{scale * statistics.mean(vals):.{digits}f} ± {scale * sd:.{digits}f}"

    print(f"\nscikit-learn digits, dropout MLP, {args.seeds} seeds, {args.epochs} epochs, "
          f"R-Drop alpha={args.alpha} ({time.perf_counter() - start:.0f} s)\n")
    print("| method   | test accuracy (%) | valid - train loss | disagreement, train | "
          "disagreement, valid |")
    print("|----------|-------------------|--------------------|---------------------|"
          "---------------------|")
    for m in methods:
        acc = fmt([r["test_acc"] for r in results[m]], 100)
        gap = fmt([r["gap"] for r in results[m]])
        dis_train = fmt([r["dis_train"] for r in results[m]], digits=4)
        dis_valid = fmt([r["dis_valid"] for r in results[m]], digits=4)
        print(f"| {m:<8} | {acc:>17} | {gap:>18} | {dis_train:>19} | {dis_valid:>19} |")
    diffs = [r["test_acc"] - b["test_acc"] for r, b in zip(results["rdrop"], results["baseline"],
                                                           strict=True)]
    print(f"\npaired accuracy difference (rdrop - baseline): {fmt(diffs, 100)} points")
    for split in ("train", "valid"):
        base = statistics.mean(r[f"dis_{split}"] for r in results["baseline"])
        ours = statistics.mean(r[f"dis_{split}"] for r in results["rdrop"])
        print(f"disagreement between two dropout passes on the {split} images (symmetric KL, "
              f"lower = more consistent): baseline {base:.4f}, rdrop {ours:.4f} "
              f"(ratio {base / max(ours, 1e-12):.2f})")


if __name__ == "__main__":
    main()
