"""Integrations with other people's frameworks, each loaded on first use.

* :mod:`rdrop.integrations.hf`: ``RDropTrainer`` / ``RDropSeq2SeqTrainer`` for Hugging Face
  ``transformers`` (``pip install 'torch-rdrop[hf]'``).
* :mod:`rdrop.integrations.trl`: ``RDropSFTTrainer`` / ``RDropSFTConfig`` for TRL's supervised
  fine-tuning.
* :mod:`rdrop.integrations.lightning`: ``RDropLightningModule``, a PyTorch Lightning module
  mixin that logs the loss parts and follows the optimizer-step schedule.

Plain PyTorch, torch DDP (``torchrun``), Accelerate, PEFT and timm need no integration: wrap the
model in :class:`rdrop.RDrop` (see ``docs/INTEGRATIONS.md``).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {"hf", "lightning", "trl"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"rdrop.integrations.{name}")
    raise AttributeError(f"module 'rdrop.integrations' has no attribute {name!r}")
