"""R-Drop with the Hugging Face Trainer: sequence classification with a tiny random-init BERT.

Change the imports (lines tagged ``# [rdrop]``), set ``rdrop_alpha``; the rest is an ordinary
Trainer script. Runs offline (no download): the model is built from a config and the task is
synthetic (is the sequence mostly made of low token ids?).

    python examples/hf_trainer_classification.py --steps 60
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from rdrop.integrations.hf import RDropTrainer as Trainer  # [rdrop]
from rdrop.integrations.hf import RDropTrainingArguments as TrainingArguments  # [rdrop]

VOCAB, LENGTH = 100, 16


def make_data(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (LENGTH,), generator=g)
        label = int((ids < VOCAB // 2).sum() > LENGTH // 2)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                     "labels": label})
    return rows


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                        num_labels=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = BertForSequenceClassification(config)

    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=args.output_dir or tmp,
            max_steps=args.steps,
            per_device_train_batch_size=16,
            gradient_accumulation_steps=2,
            learning_rate=1e-3,
            logging_steps=max(args.steps // 4, 1),
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            rdrop_alpha=args.alpha,  # [rdrop] paper: 0.1-1.0 on GLUE
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=make_data(1024, 0),
                          eval_dataset=make_data(256, 1), compute_metrics=accuracy)
        trainer.train()
        for log in trainer.state.log_history:
            if "loss" in log:  # the parts are logged next to loss
                print(f"step {log['step']}: loss {log['loss']:.4f} task {log['task_loss']:.4f} "
                      f"consistency {log['consistency_loss']:.5f} "
                      f"per pass {log['task_loss_per_pass']:.4f}")
        metrics = trainer.evaluate()  # one pass, dropout off: unchanged by R-Drop
        # loss sums both passes' cross-entropy; eval_loss is one pass's, like task_loss_per_pass.
        print(f"eval loss {metrics['eval_loss']:.4f} (one pass: compare with per pass) "
              f"accuracy {metrics['eval_accuracy']:.3f}")


if __name__ == "__main__":
    main()
