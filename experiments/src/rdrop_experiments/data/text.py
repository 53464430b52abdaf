"""Text for the generation families: a BPE tokenizer trained on the training split only,
summarization pairs (Debian long description -> synopsis), language-modeling corpora (the World
English Bible, the Debian description corpus), and the full-size formats from a local path
(``train.source``/``train.target`` files, raw text files as in Wikitext, a Hugging Face dataset
saved with ``save_to_disk``).

Every split is decided by a seeded hash of a stable key (a Debian *source* package name, a Bible
chapter), never by position, so adding data does not move examples between splits and related
items (the binary packages of one source, the verses of one chapter) stay on one side.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "LMCorpus",
    "PairData",
    "hash_split",
    "load_hf_text_splits",
    "load_lm_corpus",
    "load_summarization",
    "read_raw_text_splits",
    "read_source_target_files",
    "train_bpe",
]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3


@dataclass
class PairData:
    """Source/target text pairs per split (``train``, ``valid``, ``test``).

    Attributes:
        splits: ``{split: [(source, target), ...]}``.
        source: where the data came from (one line). meta: snapshot, sizes, split rule.
    """

    splits: dict[str, list[tuple[str, str]]]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Pairs per split."""
        return {k: len(v) for k, v in self.splits.items()}


@dataclass
class LMCorpus:
    """Language-modeling text per split: ``{split: [document or line, ...]}``."""

    splits: dict[str, list[str]]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Lines (documents) per split."""
        return {k: len(v) for k, v in self.splits.items()}


# ------------------------------------------------------------------------------------- splits
def hash_split(key: str, seed: int, valid_frac: float, test_frac: float) -> str:
    """``"train"``, ``"valid"`` or ``"test"`` for ``key``, by a seeded SHA-256 hash.

    Deterministic across processes and machines (unlike ``hash()``).

    Example:
        >>> hash_split("Genesis 1:1", 0, 0.1, 0.1) in ("train", "valid", "test")
        True
        >>> hash_split("x", 0, 0.0, 1.0)
        'test'
    """
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    if h < test_frac:
        return "test"
    if h < test_frac + valid_frac:
        return "valid"
    return "train"


# ---------------------------------------------------------------------------------- tokenizer
def train_bpe(texts: Iterable[str], vocab_size: int, *, cache_name: str | None = None,
              min_frequency: int = 2) -> Any:
    """Train a BPE tokenizer (the ``tokenizers`` library) on ``texts``: the training split only.

    NFKC normalization, Metaspace pre-tokenization (so ``decode`` restores the spaces and the
    detokenized text goes to sacrebleu/rouge as is), special tokens ``<pad> <unk> <s> </s>``
    with ids 0-3. With ``cache_name`` the tokenizer is cached as
    ``~/.cache/rdrop/tokenizers/<cache_name>-<hash of texts and vocab>.json``.

    Args:
        texts: training text (never valid/test text: the vocabulary would leak test words).
        vocab_size: target vocabulary size including the special tokens.
        cache_name: cache file stem, or None for no cache.
        min_frequency: minimum pair count for a merge.

    Returns:
        A ``tokenizers.Tokenizer``.

    Example:
        >>> tok = train_bpe(["low lower lowest"] * 20 + ["new newer"] * 20, 40)
        >>> tok.decode(tok.encode("lower newer").ids)
        'lower newer'
        >>> tok.token_to_id("<pad>"), tok.token_to_id("</s>")
        (0, 3)
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = list(texts)
    cache: Path | None = None
    if cache_name is not None:
        from rdrop_experiments.data.common import cache_dir

        digest = hashlib.sha256()
        digest.update(f"{vocab_size}:{min_frequency}:".encode())
        for t in texts:
            digest.update(t.encode())
            digest.update(b"\0")
        cache = cache_dir() / "tokenizers" / f"{cache_name}-{digest.hexdigest()[:12]}.json"
        if cache.exists():
            return Tokenizer.from_file(str(cache))
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tok.save(str(tmp))
        os.replace(tmp, cache)
    return tok


# ------------------------------------------------------------------------- local-path formats
_SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "dev", "val"),
                "test": ("test",)}


def _find_split_file(root: Path, split: str, suffix: str) -> Path | None:
    for name in _SPLIT_NAMES[split]:
        p = root / f"{name}.{suffix}"
        if p.exists():
            return p
    return None


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def read_source_target_files(path: str | os.PathLike[str], src: str = "source",
                             tgt: str = "target") -> PairData:
    """Line-aligned pairs from ``{train,valid,test}.{src}`` and ``.{tgt}`` files in ``path``.

    The layout of fairseq's CNN/DailyMail (``train.source``/``train.target``) and of IWSLT/WMT
    parallel text (``train.de``/``train.en``); ``valid`` may be named ``validation``, ``dev`` or
    ``val``. Blank pairs are dropped.

    Raises:
        FileNotFoundError: no ``train`` or ``test`` files. ValueError: line counts differ.
    """
    root = Path(path)
    splits: dict[str, list[tuple[str, str]]] = {}
    for split in ("train", "valid", "test"):
        fs, ft = _find_split_file(root, split, src), _find_split_file(root, split, tgt)
        if fs is None or ft is None:
            if split == "valid":
                continue
            raise FileNotFoundError(f"{root}: missing {split}.{src} or {split}.{tgt}.")
        a, b = _read_lines(fs), _read_lines(ft)
        if len(a) != len(b):
            raise ValueError(f"{fs} has {len(a)} lines but {ft} has {len(b)}; they must align.")
        splits[split] = [(x.strip(), y.strip()) for x, y in zip(a, b, strict=True)
                         if x.strip() and y.strip()]
    return PairData(_ensure_valid(splits), f"files:{root}",
                    {"format": f"{{split}}.{src}/{{split}}.{tgt}"})


def _ensure_valid(splits: dict[str, list[Any]], frac: float = 0.05) -> dict[str, list[Any]]:
    """Carve ``valid`` from the end of ``train`` when no validation split is given."""
    if "valid" not in splits:
        train = splits["train"]
        n = max(1, int(len(train) * frac)) if len(train) > 1 else 0
        splits = {"train": train[: len(train) - n], "valid": train[len(train) - n :],
                  "test": splits["test"]}
    return {k: splits[k] for k in ("train", "valid", "test")}


def load_hf_text_splits(path: str | os.PathLike[str], columns: Sequence[str]) -> dict[str, list]:
    """Rows of a Hugging Face ``DatasetDict`` saved with ``save_to_disk``, as tuples of columns.

    A column may be ``"translation.de"`` to read a field of a dict column (the IWSLT/WMT layout).
    Split names ``validation``/``dev`` map to ``valid``.

    Raises:
        ImportError: ``datasets`` is not installed (``pip install datasets``).
        KeyError: a column is missing.
    """
    from rdrop_experiments.data.common import import_datasets

    datasets = import_datasets()
    dd = datasets.load_from_disk(str(path))
    if isinstance(dd, datasets.Dataset):
        dd = {"train": dd}
    out: dict[str, list] = {}
    for name, ds in dd.items():
        split = next((k for k, v in _SPLIT_NAMES.items() if name in v), None)
        if split is None:
            continue
        rows = []
        for row in ds:
            vals = []
            for col in columns:
                head, _, sub = col.partition(".")
                if head not in row:
                    raise KeyError(f"saved dataset {path} has no column {head!r}; "
                                   f"columns: {sorted(row)}.")
                vals.append(str(row[head][sub] if sub else row[head]))
            rows.append(tuple(vals))
        out[split] = rows
    if "train" not in out or "test" not in out:
        raise KeyError(f"saved dataset {path} needs train and test splits, has {sorted(out)}.")
    return _ensure_valid(out)


def read_raw_text_splits(path: str | os.PathLike[str]) -> LMCorpus:
    """Raw text splits for language modeling from a folder.

    Accepts Wikitext's ``wiki.{train,valid,test}.tokens`` (or ``.raw``) and plain
    ``{train,valid,test}.txt``. Lines are kept in order (blank lines dropped): the recipe
    concatenates them into one token stream per split.

    Raises:
        FileNotFoundError: no train/test file found.
    """
    root = Path(path)
    splits: dict[str, list[str]] = {}
    for split in ("train", "valid", "test"):
        found = None
        for name in _SPLIT_NAMES[split]:
            for cand in (f"wiki.{name}.tokens", f"wiki.{name}.raw", f"{name}.txt",
                         f"{name}.tokens", f"{name}.raw"):
                if (root / cand).exists():
                    found = root / cand
                    break
            if found:
                break
        if found is None:
            if split == "valid":
                continue
            raise FileNotFoundError(f"{root}: no {split} text file (wiki.{split}.tokens, "
                                    f"{split}.txt, ...).")
        splits[split] = [ln.strip() for ln in _read_lines(found) if ln.strip()]
    return LMCorpus(_ensure_valid(splits), f"files:{root}", {"format": "raw text lines"})


# ----------------------------------------------------------------------------- summarization
def load_summarization(dataset: str = "debian", path: str | None = None, *, seed: int = 0,
                       valid_frac: float = 0.05, test_frac: float = 0.1,
                       min_words: int = 8) -> PairData:
    """Document/summary pairs.

    * ``debian``: every Debian package's long description (document) and its one-line synopsis
      (summary) from the apt lists (``path``: the lists folder, default ``/var/lib/apt/lists``).
      Split by a seeded hash of the **source** package name, so the binary packages of one
      source (whose descriptions are often near-identical) never straddle train and test.
      Descriptions shorter than ``min_words`` words are dropped.
    * ``text``: ``{split}.source``/``{split}.target`` files in ``path`` (fairseq CNN/DM layout).
    * ``hf``: a saved dataset with ``article``/``highlights`` columns (CNN/DailyMail), or
      ``document``/``summary`` (XSum).

    Raises:
        ValueError: unknown dataset or missing ``path``.
    """
    if dataset == "debian":
        from rdrop_experiments.data.debian import APT_LISTS_DIR, load_debian_descriptions

        packages, meta = load_debian_descriptions(path or APT_LISTS_DIR)
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
        seen: set[tuple[str, str]] = set()
        for p in packages:
            long = " ".join(p.long.split())
            if len(long.split()) < min_words or not p.synopsis:
                continue
            if (long, p.synopsis) in seen:  # exact duplicates (e.g. transitional packages)
                continue
            seen.add((long, p.synopsis))
            splits[hash_split(p.source, seed, valid_frac, test_frac)].append((long, p.synopsis))
        return PairData(splits, "debian:Translation-en long description -> synopsis",
                        {"snapshot": meta.get("snapshot"), "files": meta.get("files"),
                         "split": f"sha256(seed={seed}:source package) "
                                  f"valid={valid_frac} test={test_frac}"})
    if path is None:
        raise ValueError(f"summarization dataset {dataset!r} needs data_path.")
    if dataset == "text":
        return read_source_target_files(path, "source", "target")
    if dataset == "hf":
        try:
            rows = load_hf_text_splits(path, ("article", "highlights"))
        except KeyError:
            rows = load_hf_text_splits(path, ("document", "summary"))
        return PairData({k: [(a, b) for a, b in v] for k, v in rows.items()}, f"hf:{path}")
    raise ValueError(f"unknown summarization dataset {dataset!r}; use debian, text or hf.")


# ----------------------------------------------------------------------------- language model
def load_lm_corpus(dataset: str = "bible-web", path: str | None = None, *, seed: int = 0,
                   valid_frac: float = 0.05, test_frac: float = 0.05) -> LMCorpus:
    """Language-modeling text per split.

    * ``bible-web``: the World English Bible (Debian ``sword-text-web``, public domain), one
      document per chapter (its verses joined), split by a seeded hash of the chapter
      (``"Genesis 1"``), chapters kept in canonical order within a split.
    * ``debian``: the Debian long descriptions, one document per package, split by a seeded
      hash of the source package.
    * ``text``: raw text files in ``path`` (Wikitext layout, :func:`read_raw_text_splits`).
    * ``hf``: a saved dataset with a ``text`` column (``wikitext`` on the hub).

    Raises:
        ValueError: unknown dataset or missing ``path``.
    """
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    if dataset == "bible-web":
        from rdrop_experiments.data.sword import read_sword_module

        verses = read_sword_module(path or "engWEB2015eb")
        chapters: dict[str, list[str]] = {}
        for key, text in verses.items():
            chapters.setdefault(key.rsplit(":", 1)[0], []).append(text)
        for ch, texts in chapters.items():
            splits[hash_split(ch, seed, valid_frac, test_frac)].append(" ".join(texts))
        return LMCorpus(splits, "sword:engWEB2015eb (World English Bible), chapters",
                        {"split": f"sha256(seed={seed}:chapter) valid={valid_frac} "
                                  f"test={test_frac}", "chapters": len(chapters)})
    if dataset == "debian":
        from rdrop_experiments.data.debian import APT_LISTS_DIR, load_debian_descriptions

        packages, meta = load_debian_descriptions(path or APT_LISTS_DIR)
        for p in packages:
            if p.long:
                text = " ".join(p.long.split())
                splits[hash_split(p.source, seed, valid_frac, test_frac)].append(text)
        return LMCorpus(splits, "debian:Translation-en long descriptions",
                        {"snapshot": meta.get("snapshot")})
    if path is None:
        raise ValueError(f"language-modeling dataset {dataset!r} needs data_path.")
    if dataset == "text":
        return read_raw_text_splits(path)
    if dataset == "hf":
        rows = load_hf_text_splits(path, ("text",))
        return LMCorpus({k: [r[0].strip() for r in v if r[0].strip()] for k, v in rows.items()},
                        f"hf:{path}")
    raise ValueError(f"unknown language-modeling dataset {dataset!r}; use bible-web, debian, "
                     "text or hf.")


