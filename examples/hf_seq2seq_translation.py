"""R-Drop with the Hugging Face Seq2SeqTrainer: a tiny random-init BART-style translator.

The "language pair" is synthetic (each target token is the source token shifted by one), so it
runs offline in about half a minute and learns it; swap in your tokenized WMT/IWSLT data and a
real checkpoint for the real thing. Lines tagged ``# [rdrop]`` are the whole change.

    python examples/hf_seq2seq_translation.py --steps 150

The logged ``loss`` sums both passes' cross-entropy (plus alpha times the consistency), so it is
about twice ``eval_loss``; ``task_loss_per_pass`` is the number to compare with ``eval_loss``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import BartConfig, BartForConditionalGeneration

from rdrop.integrations.hf import RDropSeq2SeqTrainer as Seq2SeqTrainer  # [rdrop]
from rdrop.integrations.hf import (  # [rdrop]
    RDropSeq2SeqTrainingArguments as Seq2SeqTrainingArguments,
)

BOS, PAD, EOS, FIRST, VOCAB = 0, 1, 2, 3, 40


def make_pairs(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (), generator=g))
        src = torch.randint(FIRST, VOCAB - 1, (length,), generator=g).tolist()
        tgt = [t + 1 for t in src]
        rows.append({"input_ids": [*src, EOS], "labels": [*tgt, EOS]})
    return rows


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Pad sources with PAD (attention mask 0) and labels with -100 (ignored by the loss)."""
    width = max(len(r["input_ids"]) for r in rows)
    label_width = max(len(r["labels"]) for r in rows)
    batch = {"input_ids": torch.full((len(rows), width), PAD),
             "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
             "labels": torch.full((len(rows), label_width), -100)}
    for i, r in enumerate(rows):
        batch["input_ids"][i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        batch["attention_mask"][i, :len(r["input_ids"])] = 1
        batch["labels"][i, :len(r["labels"])] = torch.tensor(r["labels"])
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
                        dropout=0.1, attention_dropout=0.0, pad_token_id=PAD,
                        bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
                        forced_eos_token_id=None,
                        init_std=0.1)  # a larger init than BART's 0.02 trains a tiny model fast
    model = BartForConditionalGeneration(config)

    with tempfile.TemporaryDirectory() as tmp:
        training_args = Seq2SeqTrainingArguments(
            output_dir=args.output_dir or tmp,
            max_steps=args.steps,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=32,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            label_smoothing_factor=0.1,  # applied to R-Drop's CE terms, once
            logging_steps=max(args.steps // 4, 1),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            predict_with_generate=True,
            generation_max_length=12,
            rdrop_alpha=args.alpha,  # [rdrop] paper: 5 for translation
        )
        trainer = Seq2SeqTrainer(model=model, args=training_args, data_collator=collate,
                                 train_dataset=make_pairs(2048, 0), eval_dataset=make_pairs(64, 1))
        trainer.train()
        for log in trainer.state.log_history:
            if "loss" in log:
                print(f"step {log['step']}: loss {log['loss']:.4f} = task {log['task_loss']:.4f} "
                      f"+ {args.alpha} * consistency {log['consistency_loss']:.5f}; "
                      f"per pass {log['task_loss_per_pass']:.4f}")
        eval_pairs = make_pairs(64, 1)
        out = trainer.predict(eval_pairs)  # generation: one pass, dropout off
        exact = 0
        for pred, row in zip(out.predictions, eval_pairs, strict=True):
            tokens = [int(t) for t in pred if t not in (BOS, PAD, EOS) and t >= 0]
            exact += tokens == row["labels"][:-1]
        print(f"eval_loss {out.metrics['test_loss']:.4f} (one pass, dropout off: compare with "
              f"per pass), greedy translations exactly right: {exact}/{len(eval_pairs)}")
        src, pred = eval_pairs[0]["input_ids"][:-1], out.predictions[0]
        print(f"example: source {src} -> {[int(t) for t in pred if t not in (BOS, PAD, EOS)]} "
              f"(reference {eval_pairs[0]['labels'][:-1]})")

if __name__ == "__main__":
    main()
