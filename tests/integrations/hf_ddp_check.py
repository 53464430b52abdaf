"""RDropTrainer under torchrun (2 gloo processes) against one process on the global batch.

Run as ``torchrun --standalone --nproc_per_node 2 hf_ddp_check.py OUT_DIR`` (each rank writes its
gradient) and as ``python hf_ddp_check.py OUT_DIR`` (one process, the reference). Samples carry
uneven numbers of padded labels, so the per-rank label counts differ and only the Trainer's
global ``num_items_in_batch`` (``average_tokens_across_devices``) times the world size that
rdrop multiplies back in gives the single-process gradient. Dropout is ``KeyedDropout``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import TokenTaggerKw, tagging_data

from rdrop.integrations.hf import RDropTrainer, RDropTrainingArguments


class FirstGrad(TrainerCallback):
    def __init__(self) -> None:
        self.grad: dict[str, list] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grad is None:
            self.grad = {n: p.grad.flatten().tolist() for n, p in model.named_parameters()}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model = TokenTaggerKw(seed=0)
    grab = FirstGrad()
    with tempfile.TemporaryDirectory() as tmp:
        args = RDropTrainingArguments(
            output_dir=tmp, report_to="none", use_cpu=True, save_strategy="no",
            per_device_train_batch_size=8 // (2 * world), gradient_accumulation_steps=2,
            max_steps=1, logging_steps=1, rdrop_alpha=3.0, remove_unused_columns=False,
            disable_tqdm=True, seed=0, dataloader_drop_last=True,
        )
        trainer = RDropTrainer(model=model, args=args, train_dataset=tagging_data(8),
                               callbacks=[grab])
        trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    result = {"world": world, "seen": model.drop.seen, "grad": grab.grad, "loss": log["loss"],
              "consistency_loss": log["consistency_loss"]}
    Path(out_dir, f"world{world}_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
