"""Two gloo processes on CPU: rdrop.RDrop under torch DDP, in both nesting orders.

Run as ``python ddp_check.py OUT_JSON``; ``test_distributed.py`` runs it and checks the result.
Each rank trains a few SGD steps on its half of a global batch. Dropout is ``KeyedDropout``
(masks seeded by sample id and pass), so a single process on the concatenated global batch draws
the very same masks, and the DDP gradient can be compared with its gradient exactly. The dropout
layer also records which sample ids every forward saw: that is the proof that the duplicated pair
of a sample never crosses a rank boundary.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import KeyedDropout

import rdrop

WORLD, LOCAL_B, DIM, CLASSES, STEPS, ALPHA = 2, 4, 6, 5, 3, 2.0
LAYOUTS = ("rdrop(ddp(net))", "ddp(rdrop(net))", "ddp(rdrop(net), twice)",
           "rdrop(ddp(net), twice)")


class KeyedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(DIM, 16)
        self.drop = KeyedDropout(0.3)
        self.out = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.inp(x)), ids))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    n = WORLD * LOCAL_B
    x = torch.randn(n, DIM, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return x, y, torch.arange(n) + step * n  # fresh sample ids (so fresh masks) each step


def build(layout: str, distributed: bool) -> tuple[nn.Module, KeyedNet]:
    net = KeyedNet()
    mode = "twice" if "twice" in layout else "concat"
    if not distributed:
        return rdrop.RDrop(net, alpha=ALPHA, mode=mode), net
    if layout.startswith("rdrop"):
        return rdrop.RDrop(DDP(net), alpha=ALPHA, mode=mode), net
    return DDP(rdrop.RDrop(net, alpha=ALPHA, mode=mode)), net


def train(model: nn.Module, rows: slice) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """STEPS SGD steps on rows ``rows`` of each global batch; returns grads and losses."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads, losses = [], []
    model.train()
    for step in range(STEPS):
        x, y, ids = global_batch(step)
        out = model(x[rows], ids[rows], target=y[rows])
        opt.zero_grad()
        out.loss.backward()
        grads.append({n.replace("module.", "").replace("model.", ""): p.grad.clone()
                      for n, p in model.named_parameters()})
        losses.append((out.loss.item(), out.consistency_loss.item()))
        opt.step()
    return grads, losses


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    result = {}
    for layout in LAYOUTS:
        model, net = build(layout, distributed=True)
        grads, losses = train(model, slice(rank * LOCAL_B, (rank + 1) * LOCAL_B))
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        ref_model, ref_net = build(layout, distributed=False)
        ref_grads, _ = train(ref_model, slice(None))
        ref_flat = torch.cat([p.detach().flatten() for p in ref_net.parameters()])
        result[layout] = {
            "seen": net.drop.seen,
            "param_spread": (gathered[0] - gathered[1]).abs().max().item(),
            "param_vs_single": (flat - ref_flat).abs().max().item(),
            "grad_vs_single": max((grads[s][k] - ref_grads[s][k]).abs().max().item()
                                  for s in range(STEPS) for k in ref_grads[s]),
            "grad_scale": max(g.abs().max().item() for g in ref_grads[0].values()),
            "loss_and_consistency": losses,
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main(out_json: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(init_file, tmp), nprocs=WORLD, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(WORLD)]
    Path(out_json).write_text(json.dumps({"world": WORLD, "local_batch": LOCAL_B,
                                          "steps": STEPS, "ranks": ranks}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
