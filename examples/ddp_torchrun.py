"""R-Drop under torch DDP, launched with torchrun (gloo on CPU, nccl on GPUs).

    torchrun --standalone --nproc_per_node 2 examples/ddp_torchrun.py --steps 50

Wrap in either order; here ``RDrop`` wraps the DDP model, so DDP sees one forward over the
duplicated local batch ``[x; x]`` and each rank's consistency term compares the two passes of its
own samples (the pair is made inside the forward, never across ranks). Gradients are averaged by
DDP as usual. Without torchrun (no ``RANK`` in the environment) it runs as a single process.
Lines tagged ``# [rdrop]`` are the change from a plain DDP script.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import rdrop  # [rdrop]


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, 20, generator=torch.Generator().manual_seed(1)) * 1.5
    y = torch.randint(0, 5, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, 20, generator=g), y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts them)
    net = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 5))
    net = net.to(device)
    ddp = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if distributed else net
    model = rdrop.RDrop(ddp, alpha=args.alpha)  # [rdrop] or DDP(rdrop.RDrop(net, ...))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    data = make_data(4096, 0)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=0) \
        if distributed else None
    loader = DataLoader(data, batch_size=32, sampler=sampler, shuffle=sampler is None)

    step, epoch = 0, 0
    model.train()
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            out = model(x.to(device), target=y.to(device))  # [rdrop] RDropOutput
            optimizer.zero_grad()
            out.loss.backward()  # [rdrop] DDP all-reduces the R-Drop gradient
            optimizer.step()
            step += 1
            if step % 10 == 0 or step == args.steps:
                print(f"rank {rank}/{world} step {step}: loss {out.loss.item():.4f} "
                      f"consistency {out.consistency_loss.item():.4f}", flush=True)
            if step == args.steps:
                break
        epoch += 1

    # Parameters are identical on every rank: check it, then evaluate on rank 0.
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    if distributed:
        copies = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        spread = max((c - flat).abs().max().item() for c in copies)
        print(f"rank {rank}: max parameter difference across ranks {spread:.2e}", flush=True)
    if rank == 0:
        model.eval()
        test = make_data(1024, 1)
        with torch.no_grad():
            pred = net(test.tensors[0].to(device)).argmax(-1).cpu()
        print(f"test accuracy: {(pred == test.tensors[1]).float().mean().item():.3f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
