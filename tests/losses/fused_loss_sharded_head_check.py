"""Two gloo processes on CPU: fused_linear_rdrop_loss with an FSDP2-sharded output layer.

Run as ``python fused_loss_sharded_head_check.py OUT_JSON``; ``test_fused_linear_fsdp.py`` runs
it and checks the result. A small body (Linear + tanh) and an output layer ``head`` (V = 37,
which does not split evenly over 2 ranks) are wrapped with ``torch.distributed.fsdp.fully_shard``
in three layouts:

* ``head_sharded``: ``fully_shard(head)`` then ``fully_shard(net)``; the loss gets the module;
* ``head_in_root``: ``fully_shard(net)`` only (the head's parameters belong to the root group);
* ``weight_tensors``: as ``head_sharded``, but the loss gets ``head.weight`` and ``bias=``.

Outside the net's forward the head's parameters are ``DTensor`` shards. Each rank computes the
hidden states of its half of a global batch for both passes (the second pass perturbed, as
dropout would), the fused loss, backward, and an SGD step, for STEPS steps. One process runs the
same steps on the global batch with an unsharded copy; every rank reports the largest difference
of its loss (averaged over ranks), its gradients (gathered full) and its parameters after the
step. Both halves count the same number of rows, so the mean of the per-rank means is the global
mean, as FSDP's gradient average assumes.
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

from rdrop.losses.fused_linear import fused_linear_rdrop_loss

WORLD, LOCAL_N, DIM, HID, V, STEPS, ALPHA = 2, 6, 5, 8, 37, 2, 1.5
LAYOUTS = ("head_sharded", "head_in_root", "weight_tensors")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(DIM, HID)
        self.head = nn.Linear(HID, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x))  # hidden states only; the loss applies the head


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + step)
    n = WORLD * LOCAL_N
    x = torch.randn(n, DIM, generator=g)
    noise = 0.3 * torch.randn(n, DIM, generator=g)  # the second pass differs, as with dropout
    y = torch.randint(0, V, (n,), generator=g)
    y.view(WORLD, LOCAL_N)[:, 0] = -100  # one ignored row per rank: equal counts
    return x, x + noise, y


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def train(net: Net, rows: slice, layout: str) -> list[dict]:
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    record = []
    for step in range(STEPS):
        x1, x2, y = global_batch(step)
        hidden = net(torch.cat([x1[rows], x2[rows]]))
        h1, h2 = hidden.chunk(2)
        if layout == "weight_tensors":
            out = fused_linear_rdrop_loss(h1, h2, net.head.weight, y[rows], bias=net.head.bias,
                                          alpha=ALPHA)
        else:
            out = fused_linear_rdrop_loss(h1, h2, net.head, y[rows], alpha=ALPHA)
        opt.zero_grad()
        out.loss.backward()
        record.append({
            "loss": out.loss.detach().clone(),
            "weight_is_dtensor": type(net.head.weight).__name__ == "DTensor",
            "grads": {n: _full(p.grad).clone() for n, p in net.named_parameters()},
        })
        opt.step()
        record[-1]["params"] = {n: _full(p.detach()).clone() for n, p in net.named_parameters()}
    return record


def worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    result = {}
    for layout in LAYOUTS:
        net = Net()
        if layout != "head_in_root":
            fully_shard(net.head)
        fully_shard(net)
        ours = train(net, slice(rank * LOCAL_N, (rank + 1) * LOCAL_N), layout)
        ref = train(Net(), slice(None), layout)
        losses = torch.stack([r["loss"] for r in ours])
        dist.all_reduce(losses)
        result[layout] = {
            "weight_is_dtensor": all(r["weight_is_dtensor"] for r in ours),
            "loss_diff": (losses / WORLD - torch.stack([r["loss"] for r in ref])).abs().max()
            .item(),
            "grad_diff": max((a["grads"][k] - b["grads"][k]).abs().max().item()
                             for a, b in zip(ours, ref, strict=True) for k in b["grads"]),
            "param_diff": max((a["params"][k] - b["params"][k]).abs().max().item()
                              for a, b in zip(ours, ref, strict=True) for k in b["params"]),
            "grad_scale": max(g.abs().max().item() for g in ref[0]["grads"].values()),
            "head_grad_norm": ref[0]["grads"]["head.weight"].norm().item(),
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main(out_json: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(init_file, tmp), nprocs=WORLD, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(WORLD)]
    Path(out_json).write_text(json.dumps({"world": WORLD, "ranks": ranks}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
