"""Two gloo processes on CPU: the HF trainers' fused head with an FSDP2-sharded Llama.

Run as ``python hf_fused_head_fsdp2_cpu_check.py OUT_JSON``; ``test_fused_fsdp2.py`` checks the
result. A tiny
Llama without dropout (ranks draw their own masks, so with dropout the runs would differ by
design) is wrapped with ``fully_shard`` per decoder layer and at the root, so outside the forward
its output layer's weight is a DTensor shard. Each rank runs the trainer's fused path
(``forward_hidden`` over the duplicated batch, then ``fused_loss``, which hands the output layer
to ``fused_linear_rdrop_loss``) on its half of a global batch with equal label counts; one
process runs the same functions on the global batch with an unsharded copy. Each rank reports its
largest difference of loss (averaged over ranks) and of every gradient (gathered full).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import tiny_llama

from rdrop.integrations.hf.fused import check_fused_head, forward_hidden, fused_loss
from rdrop.integrations.hf.labels import align
from rdrop.training.batching import concat_inputs

WORLD, LOCAL_N, T, ALPHA = 2, 2, 8, 1.5


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32, (WORLD * LOCAL_N, T), generator=g)
    labels = ids.clone()
    labels[:, -2:] = -100  # the same count on every row
    return ids, labels


def step(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model.train()
    check_fused_head(model, {"input_ids": ids}, ids.shape[0], half_precision=False)
    _, batch, layout = concat_inputs((), {"input_ids": ids}, 2)
    _, hidden = forward_hidden(model, model, batch, layout)
    passes, target = align(hidden, labels, None, shift=True)
    out = fused_loss(model, passes, target, alpha=ALPHA, label_smoothing=0.0,
                     num_items_in_batch=None, chunk_size=5)
    out.loss.backward()
    return out.loss.detach()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def worker(rank: int, init: str, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    ids, labels = global_batch()
    ref = tiny_llama(dropout=0.0)
    ref_loss = step(ref, ids, labels)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}

    model = tiny_llama(dropout=0.0)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    rows = slice(rank * LOCAL_N, (rank + 1) * LOCAL_N)
    loss = step(model, ids[rows], labels[rows])
    dist.all_reduce(loss)
    loss = loss / WORLD
    grads = {n: _full(p.grad) for n, p in model.named_parameters()}
    weight = model.get_output_embeddings().weight
    result = {
        "weight_is_dtensor": hasattr(weight, "full_tensor"),
        "loss": float(loss), "loss_diff": float((loss - ref_loss).abs()),
        "grad_diff": max(float((grads[n] - g).abs().max()) for n, g in ref_grads.items()),
        "grad_scale": max(float(g.abs().max()) for g in ref_grads.values()),
        "head_grad_norm": float(grads["lm_head.weight"].norm()),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main(out_json: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        mp.spawn(worker, args=(init, tmp), nprocs=WORLD, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(WORLD)]
    Path(out_json).write_text(json.dumps({"ranks": ranks}))


if __name__ == "__main__":
    main(sys.argv[1])
