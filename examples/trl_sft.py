"""R-Drop with TRL's SFTTrainer: supervised fine-tuning of a tiny random-init Llama, packed.

Change the imports (lines tagged ``# [rdrop]``) and set ``rdrop_alpha``; everything else is TRL's:
its defaults, its data preparation (here: packing into padding-free rows, whose sequence
boundaries R-Drop's duplication offsets for the second pass), and its metrics (entropy,
mean_token_accuracy, num_tokens). Offline: the model is built from a config, the tokenizer from
a word list, the data is synthetic (counting: each word is the previous one plus one).

    python examples/trl_sft.py --steps 30
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rdrop.integrations.trl import RDropSFTConfig as SFTConfig  # [rdrop]
from rdrop.integrations.trl import RDropSFTTrainer as SFTTrainer  # [rdrop]

WORDS = [f"n{i}" for i in range(40)]


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def make_texts(n: int, seed: int) -> list[str]:
    """Counting runs: 'n7 n8 n9 n10 ...' of 4 to 11 words."""
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n):
        length = int(torch.randint(4, 12, (), generator=g))
        start = int(torch.randint(0, len(WORDS) - length, (), generator=g))
        texts.append(" ".join(WORDS[start:start + length]))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, attention_dropout=0.1, pad_token_id=0,
                         eos_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(config)  # Llama's only dropout is attention dropout: set it

    with tempfile.TemporaryDirectory() as tmp:
        training_args = SFTConfig(
            output_dir=tmp,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            logging_steps=max(args.steps // 3, 1),
            packing=True,  # padding-free rows of several sequences
            max_length=64,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            rdrop_alpha=args.alpha,  # [rdrop] paper: 1 for language modeling
        )
        trainer = SFTTrainer(model=model, args=training_args, processing_class=tokenizer,
                             train_dataset=Dataset.from_dict({"text": make_texts(256, 0)}),
                             eval_dataset=Dataset.from_dict({"text": make_texts(32, 1)}))
        print(f"R-Drop (alpha={args.alpha}) in TRL's SFTTrainer, {args.steps} steps, packed "
              "batches; the loss sums both passes' NLL, task_loss_per_pass is one pass's.")
        trainer.train()
        for log in trainer.state.log_history:
            if "loss" in log:
                print(f"step {log['step']}: loss {log['loss']:.3f} = task {log['task_loss']:.3f}"
                      f" + {args.alpha} * consistency {log['consistency_loss']:.4f}; "
                      f"per pass {log['task_loss_per_pass']:.3f}; entropy {log['entropy']:.3f}, "
                      f"token accuracy {log['mean_token_accuracy']:.2f}, "
                      f"{int(log['num_tokens'])} tokens")
        metrics = trainer.evaluate()
        print(f"eval_loss {metrics['eval_loss']:.3f} (one pass, dropout off; compare with "
              f"task_loss_per_pass), eval token accuracy {metrics['eval_mean_token_accuracy']:.2f}"
              f" (chance {1 / len(WORDS):.2f})")


if __name__ == "__main__":
    main()
