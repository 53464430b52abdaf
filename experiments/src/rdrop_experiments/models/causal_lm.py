"""A small pre-LN causal Transformer language model with tied input/output embeddings.

Same blocks as :mod:`rdrop_experiments.models.seq2seq` (decoder layers without cross-attention):
dropout on embeddings and residual branches (``dropout``), attention weights
(``attention_dropout``) and the feed-forward block (``activation_dropout``), all reachable by
:func:`rdrop_experiments.training.set_dropout`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdrop_experiments.models.seq2seq import DecoderLayer

__all__ = ["CausalTransformerLM"]


class CausalTransformerLM(nn.Module):
    """Decoder-only Transformer LM: ``forward(tokens (B, T)) -> logits (B, T, V)``; position
    ``t`` predicts token ``t + 1`` (the recipe shifts the targets).

    Args:
        vocab_size: vocabulary. dim, heads, ffn, layers: sizes. dropout, attention_dropout,
            activation_dropout: as in :class:`~rdrop_experiments.models.seq2seq.Seq2SeqTransformer`.
        max_len: learned position table length (the block size). pad_id: padding token.

    Example:
        >>> lm = CausalTransformerLM(vocab_size=30, dim=16, heads=2, ffn=32, layers=1, max_len=8)
        >>> lm(torch.randint(0, 30, (2, 8))).shape
        torch.Size([2, 8, 30])
    """

    def __init__(self, *, vocab_size: int, dim: int = 128, heads: int = 4, ffn: int = 512,
                 layers: int = 4, dropout: float = 0.1, attention_dropout: float = 0.1,
                 activation_dropout: float = 0.1, max_len: int = 128, pad_id: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        args = (dim, heads, ffn, dropout, attention_dropout, activation_dropout)
        self.layers = nn.ModuleList(DecoderLayer(*args, cross=False) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.shape[1] > self.pos.shape[0]:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len "
                             f"{self.pos.shape[0]}.")
        x = self.drop(self.embed(tokens) * math.sqrt(self.dim) + self.pos[: tokens.shape[1]])
        for layer in self.layers:
            x = layer(x)
        return F.linear(self.norm(x), self.embed.weight)
