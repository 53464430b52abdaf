"""A dropout-free causal LM (as Llama-family configs ship): the language-modeling family's model and
protocol with every dropout at 0, and R-Drop given other randomness (:mod:`rdrop.training.noise`).

Arms (each a grid of two points, fixed before the runs; docs/EXPERIMENTS.md, issue 17):

* ``baseline``: no randomness at all; weight decay 0.01 / 0.1 (its only regularizer).
* ``baseline+embedding`` (NEFTune alone): one pass with uniform embedding noise
  ``alpha / sqrt(L d)``, noise alpha 1 / 5.
* ``rdrop+embedding``: R-Drop whose two passes differ by their embedding noise (noise alpha 5),
  consistency alpha 0.5 / 2.0.
* ``rdrop+dropout``: R-Drop with every dropout slot switched on at 0.1 for the training passes
  (``noise=dropout:0.1``), consistency alpha 0.5 / 2.0.
"""

from __future__ import annotations

from typing import Any

from rdrop_experiments.config import apply_overrides
from rdrop_experiments.families.language_modeling import base
from rdrop_experiments.registry import register

__all__ = ["GRID"]

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
GRID: list[dict[str, Any]] = [
    *({"methods": ("baseline",), "weight_decay": wd} for wd in (0.01, 0.1)),
    *({"methods": ("baseline",), "noise": f"embedding:{a:g}"} for a in (1.0, 5.0)),
    *({"methods": ("rdrop",), "noise": "embedding:5", "alpha": a} for a in (0.5, 2.0)),
    *({"methods": ("rdrop",), "noise": "dropout:0.1", "alpha": a} for a in (0.5, 2.0)),
]

register(base.derive(
    "language-modeling-dropout-free",
    config=apply_overrides(base.config, {**NO_DROPOUT, "seeds": 5}),
    variants={"quick": {**base.variants["quick"], "max_sample_passes": 16 * 10}},
    grid=GRID,
    description="the language-modeling family's causal LM with every dropout at 0: baseline, "
                "NEFTune embedding noise alone, R-Drop with embedding noise, R-Drop with "
                "dropout switched on for the passes",
    paper="NEFTune (Jain et al. 2023): embedding noise alpha 5-15 for instruction tuning; "
          "R-Drop's TPAMI 2024 extension: consistency over other training randomness",
))
