"""Parallel text for translation: the Bible (Reina-Valera 1909 Spanish and the World English
Bible, Debian packages ``sword-text-sparv`` and ``sword-text-web``, both public domain), read with
``mod2imp`` (``libsword-utils``) and aligned on the verse key; plus the full-size formats from a
local path (``train.de``/``train.en`` files as for IWSLT/WMT, a saved Hugging Face dataset).

The Bible split is a seeded hash of the verse key (``"Genesis 1:1"``); verses repeated word for
word (Kings/Chronicles, Psalms 14/53) take the key of their first occurrence, so no source or
target sentence is in two splits. Near-repeated formulae ("And the LORD spoke to Moses, saying")
remain, as in any real corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rdrop_experiments.data.common import cache_dir
from rdrop_experiments.data.sword import SWORD_MODULES_DIR, clean_osis, read_sword_module
from rdrop_experiments.data.text import (
    PairData,
    hash_split,
    load_hf_text_splits,
    read_source_target_files,
)

__all__ = [
    "clean_osis",
    "load_bible_pairs",
    "load_parallel",
    "read_parallel_files",
    "read_sword_module",
]

def load_bible_pairs(src_module: str = "spaRV1909eb", tgt_module: str = "engWEB2015eb",
                     *, use_cache: bool = True) -> list[tuple[str, str, str]]:
    """``(verse key, source text, target text)`` for every verse present in both modules.

    Cached as JSON under ``~/.cache/rdrop/`` keyed by the module names and the modules' files.
    """
    stamp = []
    for m in (src_module, tgt_module):
        d = Path(SWORD_MODULES_DIR) / m.lower()
        stamp.append([m, sorted((p.name, p.stat().st_size) for p in d.glob("*"))
                      if d.exists() else []])
    digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:12]
    cache = cache_dir() / f"bible-{src_module}-{tgt_module}-{digest}.json"
    if use_cache and cache.exists():
        return [tuple(x) for x in json.loads(cache.read_text())]  # type: ignore[misc]
    src, tgt = read_sword_module(src_module), read_sword_module(tgt_module)
    pairs = [(k, s, tgt[k]) for k, s in src.items() if k in tgt]
    if use_cache:
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(pairs, ensure_ascii=False))
        os.replace(tmp, cache)
    return pairs


def read_parallel_files(path: str | os.PathLike[str], src_lang: str, tgt_lang: str) -> PairData:
    """Line-aligned ``{train,valid,test}.{src_lang}`` / ``.{tgt_lang}`` files (IWSLT/WMT after
    the usual preparation scripts; ``valid`` may be ``dev``/``validation``/``val``).

    Raises:
        FileNotFoundError: no train or test files. ValueError: line counts differ.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for s in ("train", "test"):
        ...     _ = (d / f"{s}.de").write_text("hallo welt\\nguten tag\\n")
        ...     _ = (d / f"{s}.en").write_text("hello world\\ngood day\\n")
        >>> read_parallel_files(d, "de", "en").splits["test"]
        [('hallo welt', 'hello world'), ('guten tag', 'good day')]
    """
    return read_source_target_files(path, src_lang, tgt_lang)


def load_parallel(dataset: str = "bible", path: str | None = None, *, src_lang: str = "es",
                  tgt_lang: str = "en", src_module: str = "spaRV1909eb",
                  tgt_module: str = "engWEB2015eb", seed: int = 0, valid_frac: float = 0.03,
                  test_frac: float = 0.05) -> PairData:
    """Translation pairs per split.

    * ``bible``: SWORD modules ``src_module`` -> ``tgt_module`` (default Spanish RV1909 ->
      English WEB), split by a seeded hash of the verse key (exact repeats grouped).
    * ``text``: ``{split}.{src_lang}``/``{split}.{tgt_lang}`` files in ``path``.
    * ``hf``: a saved ``DatasetDict`` with a ``translation`` dict column (IWSLT/WMT on the hub)
      or plain ``src_lang``/``tgt_lang`` columns.

    Raises:
        ValueError: unknown dataset or missing ``path``. ImportError: ``hf`` without ``datasets``.
    """
    if dataset == "bible":
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
        # Verses repeated word for word (Kings/Chronicles, Psalms 14/53, ...) share the key of
        # their first occurrence, so a repeated source or target never straddles two splits.
        first: dict[str, str] = {}
        for key, s, t in load_bible_pairs(src_module, tgt_module):
            group = first.get("s:" + s) or first.get("t:" + t) or key
            first.setdefault("s:" + s, group)
            first.setdefault("t:" + t, group)
            splits[hash_split(group, seed, valid_frac, test_frac)].append((s, t))
        return PairData(splits, f"sword:{src_module}->{tgt_module} (verse-aligned)",
                        {"split": f"sha256(seed={seed}:verse key) valid={valid_frac} "
                                  f"test={test_frac}"})
    if path is None:
        raise ValueError(f"translation dataset {dataset!r} needs data_path.")
    if dataset == "text":
        return read_parallel_files(path, src_lang, tgt_lang)
    if dataset == "hf":
        try:
            rows = load_hf_text_splits(path, (f"translation.{src_lang}",
                                              f"translation.{tgt_lang}"))
        except KeyError:
            rows = load_hf_text_splits(path, (src_lang, tgt_lang))
        return PairData({k: [(a, b) for a, b in v] for k, v in rows.items()}, f"hf:{path}")
    raise ValueError(f"unknown translation dataset {dataset!r}; use bible, text or hf.")
