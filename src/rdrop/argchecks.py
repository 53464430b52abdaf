"""The argument checks, kept importable here: they live in :mod:`rdrop.checks` (with the tensor
checks and the one-sync diagnosis) since issue 18."""

from __future__ import annotations

from rdrop.checks import (
    CONSISTENCIES,
    REDUCTIONS,
    check_alpha,
    check_chunk_size,
    check_consistency,
    check_ignore_index,
    check_label_smoothing,
    check_loss_combination,
    check_num_items_in_batch,
    check_positive_int,
    check_reduction,
)

__all__ = [
    "CONSISTENCIES",
    "REDUCTIONS",
    "check_alpha",
    "check_chunk_size",
    "check_consistency",
    "check_ignore_index",
    "check_label_smoothing",
    "check_loss_combination",
    "check_num_items_in_batch",
    "check_positive_int",
    "check_reduction",
]
