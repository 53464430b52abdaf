"""RDropTrainer with ``rdrop_fused_linear=True`` under FSDP2 against one plain process (GPU only).

Not run by the CPU test suite: accelerate runs FSDP only on accelerators (on CPU the Trainer falls
back to DDP). On a machine with 2 GPUs (``tests/integrations/gpu_checks.sh``)::

    python hf_trainer_fsdp2_gpu_check.py OUT ref        # one process, logits path
    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 \\
        hf_trainer_fsdp2_gpu_check.py OUT fsdp2         # 2 processes, fused, sharded head
    python hf_trainer_fsdp2_gpu_check.py OUT compare    # prints the differences; exits 1 above 1e-5

The model is a tiny Llama without dropout (each rank draws its own masks, so with dropout the
two runs would differ by design); the check is the sharded fused head: the output layer's weight
is a DTensor that ``fused_linear_rdrop_loss`` gathers and whose gradient it reduce-scatters. SGD
with learning rate 1 makes the update minus the gradient.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import tiny_llama

from rdrop.integrations.hf import RDropTrainer, RDropTrainingArguments


def data(n: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(2, 32, (10,), generator=g)
        labels = ids.clone()
        labels[3 + i % 6:] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def run(out: Path, mode: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model = tiny_llama(dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        args = RDropTrainingArguments(
            output_dir=tmp, report_to="none", save_strategy="no", max_steps=1,
            per_device_train_batch_size=8 // world, logging_steps=1, optim="sgd",
            learning_rate=1.0, weight_decay=0.0, max_grad_norm=0.0,
            lr_scheduler_type="constant", seed=0, disable_tqdm=True,
            rdrop_fused_linear=mode == "fsdp2", rdrop_chunk_size=16)
        trainer = RDropTrainer(model=model, args=args, train_dataset=data())
        trainer.train()
    params = trainer.accelerator.unwrap_model(trainer.model).named_parameters()
    grad = {}
    for n, p in params:
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        grad[n] = (before[n] - full.detach().cpu()).flatten().tolist()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    if rank == 0:
        Path(out, f"{mode}.json").write_text(json.dumps({"grad": grad, "loss": log["loss"]}))


def compare(out: Path) -> int:
    ref = json.loads(Path(out, "ref.json").read_text())
    got = json.loads(Path(out, "fsdp2.json").read_text())
    diff = max(max(abs(a - b) for a, b in zip(got["grad"][n], g, strict=True))
               for n, g in ref["grad"].items())
    print(f"FSDP2 fused vs one process: loss {got['loss']:.6f} vs {ref['loss']:.6f}, "
          f"max gradient difference {diff:.2e}")
    return int(diff > 1e-5 or abs(got["loss"] - ref["loss"]) > 1e-5 * abs(ref["loss"]))


if __name__ == "__main__":
    out_dir, what = Path(sys.argv[1]), sys.argv[2]
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.exit(compare(out_dir) if what == "compare" else run(out_dir, what))
