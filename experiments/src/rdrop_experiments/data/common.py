"""What every data loader shares: the cache folder and the optional ``datasets`` import."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "import_datasets"]


def cache_dir() -> Path:
    """Where processed data sets are cached: ``$RDROP_CACHE`` or ``~/.cache/rdrop`` (created).

    Example:
        >>> cache_dir().is_dir()
        True
    """
    path = Path(os.environ.get("RDROP_CACHE", Path.home() / ".cache" / "rdrop"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def import_datasets() -> Any:
    """The Hugging Face ``datasets`` module, needed only to read a saved dataset from a path.

    Raises:
        ImportError: ``datasets`` is not installed (the message says how to install it).
    """
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError("reading a saved Hugging Face dataset needs the `datasets` package "
                          "(pip install datasets); it is not an rdrop dependency.") from exc
    return datasets
