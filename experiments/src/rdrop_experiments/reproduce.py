"""Deprecated name of :mod:`rdrop_experiments.compare` (the module behind ``rdrop compare``).

Importing from here still works and warns once; import from ``rdrop_experiments.compare``.
"""

from __future__ import annotations

import warnings

from rdrop_experiments.compare import Pair, compare_folders, format_comparison, pair_records

__all__ = ["Pair", "compare_folders", "format_comparison", "pair_records"]

warnings.warn("rdrop_experiments.reproduce is renamed rdrop_experiments.compare (the module "
              "behind `rdrop compare`); import from there.", DeprecationWarning, stacklevel=2)
