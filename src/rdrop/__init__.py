"""rdrop: R-Drop (Regularized Dropout, Liang et al., NeurIPS 2021) for PyTorch.

``import rdrop`` loads torch and nothing heavier; integrations load on first use. Two wings:
:mod:`rdrop.losses` (how the passes are compared) and :mod:`rdrop.training` (when R-Drop runs
and how the passes are produced), with :class:`rdrop.RDrop` over both and
:mod:`rdrop.integrations` for other frameworks.
"""

from __future__ import annotations

import importlib
from typing import Any

from rdrop.losses.ctc import ctc_rdrop_loss
from rdrop.losses.functional import (
    RDropLoss,
    RDropOutput,
    multi_pass_rdrop_loss,
    rdrop_loss,
    symmetric_kl,
)
from rdrop.losses.multilabel import multilabel_rdrop_loss
from rdrop.losses.subset import subset_rdrop_loss
from rdrop.training.autostart import AutoStart, PlateauStart, plateau_step
from rdrop.training.schedule import Schedule
from rdrop.training.tryout import TryoutResult, tryout
from rdrop.wrapper import RDrop, unwrap_state_dict

__all__ = [
    "AutoStart",
    "PlateauStart",
    "RDrop",
    "RDropLoss",
    "RDropOutput",
    "Schedule",
    "TryoutResult",
    "ctc_rdrop_loss",
    "multi_pass_rdrop_loss",
    "multilabel_rdrop_loss",
    "plateau_step",
    "rdrop_loss",
    "subset_rdrop_loss",
    "symmetric_kl",
    "tryout",
    "unwrap_state_dict",
]
__version__ = "0.1.0"

_LAZY_SUBMODULES = {"integrations"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"rdrop.{name}")
    if name == "experiments":
        # The evidence suite is its own distribution (experiments/ in the repository).
        raise AttributeError(
            "rdrop.experiments moved: the evidence suite is the separate package "
            "`rdrop_experiments` (from a checkout: pip install -e ./experiments)."
        )
    raise AttributeError(f"module 'rdrop' has no attribute {name!r}")
