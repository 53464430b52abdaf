"""R-Drop with PEFT LoRA: fine-tune only low-rank adapters of a tiny random-init BERT classifier.

R-Drop needs dropout in what trains: with LoRA the base model is frozen, and its dropout is
often off, so set the adapters' ``lora_dropout`` (``LoraConfig(lora_dropout=0.1)``). The
consistency term is exactly 0 at the first step: LoRA initializes ``B = 0``, so each adapter
adds ``B A dropout(x) = 0`` whatever its dropout mask, and both passes agree until the first
update makes ``B`` non-zero (here the base model's own dropout is off to show it). Offline: the
model is built from a config, the task is synthetic.

    python examples/peft_lora.py --steps 60
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from rdrop import RDrop  # [rdrop]

VOCAB, LENGTH = 60, 12


def make_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Is the first token a low id?"""
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    return ids, (ids[:, 0] < VOCAB // 2).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base = BertForSequenceClassification(config)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                      target_modules=["query", "value", "dense"],
                      modules_to_save=["classifier"])
    model = get_peft_model(base, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"R-Drop (alpha={args.alpha}) on LoRA adapters: {trainable} of {total} parameters "
          "train; the base model's dropout is off, the adapters' lora_dropout is 0.1.")

    rdrop = RDrop(model, alpha=args.alpha)  # [rdrop]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    g = torch.Generator().manual_seed(1)
    rdrop.train()
    for step in range(1, args.steps + 1):
        ids, y = make_batch(32, g)
        out = rdrop(input_ids=ids, target=y)  # [rdrop] one forward over [x; x]
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step == 1:
            print(f"step 1: consistency {out.consistency_loss.item():.1e} (exactly 0: LoRA's B "
                  "starts at 0, so the adapters add nothing yet, whatever their dropout masks)")
        elif step % max(args.steps // 4, 1) == 0:
            print(f"step {step}: loss {out.loss.item():.4f} = task {out.task_loss.item():.4f} + "
                  f"{args.alpha} * consistency {out.consistency_loss.item():.2e}")
    rdrop.eval()
    ids, y = make_batch(512, torch.Generator().manual_seed(2))
    with torch.no_grad():
        accuracy = (rdrop(input_ids=ids).logits.argmax(-1) == y).float().mean().item()
    print(f"held-out accuracy {accuracy:.3f} (chance about 0.5)")


if __name__ == "__main__":
    main()
