"""Integrations with other people's frameworks, each loaded on first use.

* :mod:`rdrop.integrations.hf`: ``RDropTrainer`` / ``RDropSeq2SeqTrainer`` for Hugging Face
  ``transformers`` (``pip install rdrop[hf]``).

Plain PyTorch, torch DDP (``torchrun``) and Accelerate need no integration: wrap the model in
:class:`rdrop.RDrop` (see ``docs/INTEGRATIONS.md``).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {"hf"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"rdrop.integrations.{name}")
    raise AttributeError(f"module 'rdrop.integrations' has no attribute {name!r}")
