"""RDropTrainer under DeepSpeed ZeRO-1/2 against one plain process on the same global batch.

Run as ``torchrun --standalone --nproc_per_node N deepspeed_check.py OUT_DIR STAGE`` (ZeRO stage
1 or 2: optimizer states and, at stage 2, gradients in ZeRO's partitions and buckets) and as
``python deepspeed_check.py OUT_DIR 0`` (no DeepSpeed: the reference). On CPU
(``DS_ACCELERATOR=cpu``) the tests run N=1: accelerate gives a CPU DeepSpeed run one process
per rank (``num_processes=1``), so with N=2 both ranks would train on the same samples. On a
machine with 2 GPUs, N=2 partitions over the ranks (``scripts/gpu_checks.sh``). The optimizer
is SGD with learning rate 1 and no momentum or weight decay, so the parameter update is exactly
minus the accumulated gradient (ZeRO-2 keeps gradients in partitions, not in ``.grad``).
Clipping is off in both (``max_grad_norm=0``, DeepSpeed ``gradient_clipping: 0``): DeepSpeed
clips by its config's ``gradient_clipping``, which differs from an unclipped plain run.
Samples carry uneven numbers of padded labels; dropout is ``KeyedDropout``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import TokenTaggerKw, tagging_data

from rdrop.integrations.hf import RDropTrainer, RDropTrainingArguments


def skip_cpu_shm_op() -> None:
    """DeepSpeed JIT-compiles a shared-memory all-reduce for CPU runs on first use (minutes on a
    fresh machine); it only speeds up communication, which one process does not need."""
    if os.environ.get("DS_ACCELERATOR") == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        import importlib

        # by sys.modules: the package deepspeed.comm also binds the name torch to torch itself
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def main(out_dir: str, stage: int) -> None:
    torch.set_num_threads(1)
    if stage:
        skip_cpu_shm_op()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model = TokenTaggerKw(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds_config = None
    if stage:
        ds_config = {"zero_optimization": {"stage": stage},
                     "train_micro_batch_size_per_gpu": "auto",
                     "gradient_accumulation_steps": "auto", "gradient_clipping": 0.0,
                     "zero_allow_untested_optimizer": True}
    with tempfile.TemporaryDirectory() as tmp:
        args = RDropTrainingArguments(
            output_dir=tmp, report_to="none", save_strategy="no",
            use_cpu=not stage and not torch.cuda.is_available(),
            per_device_train_batch_size=8 // (2 * world), gradient_accumulation_steps=2,
            max_steps=1, logging_steps=1, rdrop_alpha=3.0, remove_unused_columns=False,
            disable_tqdm=True, seed=0, dataloader_drop_last=True, optim="sgd",
            learning_rate=1.0, weight_decay=0.0, max_grad_norm=0.0, lr_scheduler_type="constant",
            deepspeed=ds_config,
            ddp_backend="gloo" if stage and not torch.cuda.is_available() else None,
        )
        trainer = RDropTrainer(model=model, args=args, train_dataset=tagging_data(8))
        trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    # SGD, lr 1: update = -gradient.
    grad = {n: (before[n] - p.detach().cpu()).flatten().tolist()
            for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
    result = {"world": world, "stage": stage, "grad": grad, "loss": log["loss"],
              "seen": model.drop.seen, "steps": trainer.state.global_step,
              "distributed_type": str(trainer.accelerator.distributed_type),
              "consistency_loss": log["consistency_loss"]}
    Path(out_dir, f"stage{stage}_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
