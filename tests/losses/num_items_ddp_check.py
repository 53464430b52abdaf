"""Two gloo CPU processes run the documented ``num_items_in_batch`` recipe under DDP (see
``rdrop.rdrop_loss``): each rank passes the global count of counted targets and
multiplies its loss by the world size. Writes each rank's DDP gradient, with and without that
factor, to ``OUT/rank{r}.pt``. Run: ``python num_items_ddp_check.py OUT``."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from rdrop import rdrop_loss

WORLD, B, D, V = 2, 4, 3, 5


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch: inputs, per-pass noise (a keyed stand-in for dropout), padded targets
    with a different number of counted targets on each rank."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * B, D, generator=g, dtype=torch.float64)
    noise = torch.randn(2, WORLD * B, V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (WORLD * B,), generator=g)
    y[[1, 2, 3]] = -100  # rank 0 counts 1 target, rank 1 counts 4
    return x, noise, y


def model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(D, V).double()


def worker(rank: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=WORLD)
    x, noise, y = data()
    rows = slice(rank * B, (rank + 1) * B)
    x, noise, y = x[rows], noise[:, rows], y[rows]
    net = DDP(model())
    result = {}
    for name, factor in (("recipe", WORLD), ("no_factor", 1)):
        net.zero_grad()
        count = (y != -100).sum()
        dist.all_reduce(count)  # the global count of counted targets
        logits = net(torch.cat([x, x])) + noise.reshape(2 * B, V)  # one forward, two passes
        loss = rdrop_loss(logits[:B], logits[B:], y, alpha=0.8, num_items_in_batch=count).loss
        (loss * factor).backward()
        result[name] = net.module.weight.grad.clone()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(sys.argv[1],), nprocs=WORLD)
