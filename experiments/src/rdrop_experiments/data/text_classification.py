"""Sentence (and sentence-pair) classification data.

* ``debian-sections``: Debian package description -> Section, from the local apt lists
  (:mod:`rdrop_experiments.data.debian`), the top ``num_classes`` sections, split by a seeded
  hash of the *source* package name (binary packages of one source share descriptions, so they
  stay in one split).
* ``csv``: a CSV/TSV file, or a folder with ``train``/``valid``|``validation``|``dev``/``test``
  files (GLUE's TSVs, for example).
* ``hf``: a Hugging Face dataset saved with ``save_to_disk`` (e.g. a GLUE task saved once).

Texts are strings, or ``(a, b)`` pairs when two text columns are named (``text_column=a,b``).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TextClassificationData",
    "hash_split",
    "load_debian_sections",
    "load_hf_text_dataset",
    "load_text_classification",
    "load_text_csv",
]

Text = str | tuple[str, str]
_SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "dev", "val"),
                "test": ("test",)}


@dataclass
class TextClassificationData:
    """Splits of a text classification set.

    Attributes:
        splits: ``{"train"|"valid"|"test": (texts, labels)}``, labels are ints in
            ``range(len(classes))``.
        classes: label names. source: where the data came from. meta: snapshot, counts, ...
    """

    splits: dict[str, tuple[list[Text], list[int]]]
    classes: list[str]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        return {k: len(v[1]) for k, v in self.splits.items()}


def hash_split(key: str, seed: int, valid_frac: float, test_frac: float) -> str:
    """``"train"``, ``"valid"`` or ``"test"`` from a seeded hash of ``key`` (stable across runs,
    machines and Python versions).

    Example:
        >>> hash_split("python3-numpy", 0, 0.1, 0.1) in ("train", "valid", "test")
        True
    """
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + valid_frac:
        return "valid"
    return "train"


def load_debian_sections(
    *,
    num_classes: int = 10,
    sections: tuple[str, ...] = (),
    text_field: str = "synopsis+long",
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    split_seed: int = 0,
    lists_dir: str | os.PathLike[str] | None = None,
) -> TextClassificationData:
    """Debian package descriptions labelled with their Section.

    Args:
        num_classes: keep the ``num_classes`` most frequent sections (after de-duplication),
            unless ``sections`` names them.
        sections: explicit section names (their order is the label order).
        text_field: ``synopsis``, ``long`` or ``synopsis+long`` (``"<synopsis>. <long>"``).
        valid_frac, test_frac: shares of source packages in valid/test (seeded hash).
        split_seed: seed of the hash split.
        lists_dir: apt lists folder (default ``/var/lib/apt/lists``).

    Raises:
        FileNotFoundError: no apt lists with English descriptions.
        ValueError: bad ``text_field`` or unknown section names.
    """
    from rdrop_experiments.data.debian import (
        APT_LISTS_DIR,
        check_text_field,
        load_debian_descriptions,
        package_text,
    )

    check_text_field(text_field)
    packages, meta = load_debian_descriptions(lists_dir or APT_LISTS_DIR)

    seen: set[str] = set()
    rows = []
    for p in packages:  # identical texts (arch variants, transitional copies) count once
        t = package_text(p, text_field)
        if t and t not in seen:
            seen.add(t)
            rows.append((p, t))
    counts = Counter(p.section for p, _ in rows)
    if sections:
        missing = [s for s in sections if s not in counts]
        if missing:
            raise ValueError(f"unknown Debian sections {missing}; most common: "
                             f"{[s for s, _ in counts.most_common(15)]}.")
        classes = list(sections)
    else:
        classes = [s for s, _ in counts.most_common(num_classes)]
    index = {s: i for i, s in enumerate(classes)}
    splits: dict[str, tuple[list[Text], list[int]]] = {k: ([], []) for k in _SPLIT_NAMES}
    for p, t in rows:
        if p.section in index:
            part = hash_split(p.source, split_seed, valid_frac, test_frac)
            splits[part][0].append(t)
            splits[part][1].append(index[p.section])
    meta = {**meta, "class_counts": {c: counts[c] for c in classes}, "text_field": text_field,
            "split": f"sha256('{split_seed}:' + source package) -> {1 - valid_frac - test_frac:.2f}"
                     f"/{valid_frac:.2f}/{test_frac:.2f}"}
    return TextClassificationData(splits, classes, f"debian-sections:{meta['lists_dir']}", meta)


def _sniff_delimiter(path: Path) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    with open(path, newline="", encoding="utf-8") as f:
        head = f.readline()
    return "\t" if head.count("\t") > head.count(",") else ","


def _read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=_sniff_delimiter(path), quoting=csv.QUOTE_MINIMAL))


def _columns(text_column: str) -> list[str]:
    cols = [c.strip() for c in text_column.split(",") if c.strip()]
    if len(cols) not in (1, 2):
        raise ValueError(f"text_column names one column or two (a pair): got {text_column!r}.")
    return cols


def _encode_labels(raw: dict[str, list[Any]]) -> tuple[dict[str, list[int]], list[str]]:
    values = sorted({str(v) for vs in raw.values() for v in vs})
    if all(v.lstrip("-").isdigit() for v in values):
        values = [str(v) for v in sorted(int(v) for v in values)]
    index = {v: i for i, v in enumerate(values)}
    return {k: [index[str(v)] for v in vs] for k, vs in raw.items()}, values


def _rows_to_examples(rows: list[dict[str, Any]], cols: list[str], label_column: str,
                      where: str) -> tuple[list[Text], list[Any]]:
    if rows:
        missing = [c for c in [*cols, label_column] if c not in rows[0]]
        if missing:
            raise ValueError(f"{where}: missing column(s) {missing}; columns are "
                             f"{sorted(rows[0])}. Set text_column= / label_column=.")
    texts: list[Text] = [r[cols[0]] if len(cols) == 1 else (r[cols[0]], r[cols[1]]) for r in rows]
    return texts, [r[label_column] for r in rows]


def _carve(texts: list[Text], labels: list[Any], seed: int, valid_frac: float,
           test_frac: float) -> dict[str, tuple[list[Text], list[Any]]]:
    out: dict[str, tuple[list[Text], list[Any]]] = {k: ([], []) for k in _SPLIT_NAMES}
    for i, (t, y) in enumerate(zip(texts, labels, strict=True)):
        part = hash_split(f"{i}:{t}", seed, valid_frac, test_frac)
        out[part][0].append(t)
        out[part][1].append(y)
    return out


def load_text_csv(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str = "label",
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    split_seed: int = 0,
) -> TextClassificationData:
    """A CSV/TSV file (split by a seeded hash of row and text) or a folder of split files
    (``train.tsv``, ``dev.tsv``/``valid.csv``/``validation.csv``, ``test.tsv``; a missing test
    split falls back to the validation split, as for GLUE, whose test labels are hidden).

    Raises:
        FileNotFoundError: nothing readable at ``path``. ValueError: missing columns.
    """
    path = Path(path)
    cols = _columns(text_column)
    raw: dict[str, tuple[list[Text], list[Any]]] = {}
    if path.is_dir():
        for split, names in _SPLIT_NAMES.items():
            for name in names:
                f = next((path / f"{name}{ext}" for ext in (".tsv", ".csv", ".txt")
                          if (path / f"{name}{ext}").exists()), None)
                if f is not None:
                    raw[split] = _rows_to_examples(_read_table(f), cols, label_column, str(f))
                    break
        if "train" not in raw:
            raise FileNotFoundError(f"no train.tsv/train.csv in {path}.")
        if "valid" not in raw:
            carved = _carve(*raw["train"], split_seed, valid_frac, 0.0)
            raw["train"], raw["valid"] = carved["train"], carved["valid"]
        raw.setdefault("test", raw["valid"])
    elif path.is_file():
        raw = _carve(*_rows_to_examples(_read_table(path), cols, label_column, str(path)),
                     split_seed, valid_frac, test_frac)
    else:
        raise FileNotFoundError(f"text classification data {path} does not exist.")
    labels, classes = _encode_labels({k: v[1] for k, v in raw.items()})
    splits = {k: (raw[k][0], labels[k]) for k in raw}
    return TextClassificationData(splits, classes, f"csv:{path}")


def load_hf_text_dataset(
    path: str | os.PathLike[str],
    *,
    text_column: str = "sentence",
    label_column: str = "label",
    valid_frac: float = 0.1,
    split_seed: int = 0,
) -> TextClassificationData:
    """A Hugging Face ``DatasetDict`` saved with ``save_to_disk`` (``train``, ``validation``,
    ``test``; test rows with label -1, as in GLUE, are replaced by the validation split).

    Raises:
        ImportError: the ``datasets`` package is not installed.
    """
    from rdrop_experiments.data.common import import_datasets

    datasets = import_datasets()
    dd = datasets.load_from_disk(str(path))
    if isinstance(dd, datasets.Dataset):
        dd = datasets.DatasetDict({"train": dd})
    cols = _columns(text_column)
    raw: dict[str, tuple[list[Text], list[Any]]] = {}
    for split, names in _SPLIT_NAMES.items():
        name = next((n for n in names if n in dd), None)
        if name is not None:
            raw[split] = _rows_to_examples(list(dd[name]), cols, label_column, f"{path}[{name}]")
    if "valid" not in raw:
        carved = _carve(*raw["train"], split_seed, valid_frac, 0.0)
        raw["train"], raw["valid"] = carved["train"], carved["valid"]
    if "test" not in raw or any(int(y) < 0 for y in raw["test"][1]):
        raw["test"] = raw["valid"]
    names = getattr(dd["train"].features.get(label_column), "names", None)
    if names:
        classes = list(names)
        splits = {k: (v[0], [int(y) for y in v[1]]) for k, v in raw.items()}
    else:
        labels, classes = _encode_labels({k: v[1] for k, v in raw.items()})
        splits = {k: (raw[k][0], labels[k]) for k in raw}
    return TextClassificationData(splits, classes, f"hf:{path}")


def load_text_classification(dataset: str, path: str | None = None, **kwargs: Any
                             ) -> TextClassificationData:
    """Dispatch on ``dataset``: ``debian-sections`` (``path`` = apt lists folder), ``csv``
    (``path`` = file or folder) or ``hf`` (``path`` = saved dataset). ``kwargs`` go to the loader.

    Raises:
        ValueError: unknown dataset, or ``csv``/``hf`` without ``path``.
    """
    if dataset == "debian-sections":
        keep = ("num_classes", "sections", "text_field", "valid_frac", "test_frac", "split_seed")
        return load_debian_sections(lists_dir=path, **{k: v for k, v in kwargs.items()
                                                       if k in keep})
    if dataset in ("csv", "hf"):
        if not path:
            raise ValueError(f"dataset={dataset} needs data_path=<path>.")
        if dataset == "csv":
            keep = ("text_column", "label_column", "valid_frac", "test_frac", "split_seed")
            return load_text_csv(path, **{k: v for k, v in kwargs.items() if k in keep})
        keep = ("text_column", "label_column", "valid_frac", "split_seed")
        return load_hf_text_dataset(path, **{k: v for k, v in kwargs.items() if k in keep})
    raise ValueError(f"unknown text dataset {dataset!r}; use debian-sections, csv or hf.")
