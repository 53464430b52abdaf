"""Multi-label text classification on real data: Debian package descriptions -> their debtags.

The ``Tag:`` field of the apt ``*_Packages`` lists holds each package's debtags (about 30k of
bookworm main's 63k binary packages carry them, several each: ``devel::lang:python,
devel::library, role::program``). Joined on the package name with the English descriptions of
:func:`rdrop_experiments.data.debian.load_debian_descriptions`, they give ``description -> set
of tags``. The label set is the ``num_tags`` most frequent tags over the de-duplicated texts
(fixed by this rule before any run); a package counts when it carries at least one of them.
Splits by a seeded hash of the *source* package, as for Debian sections (binary packages of one
source share descriptions, so they stay in one split).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MultiLabelData", "load_debtags", "read_debtags"]


@dataclass
class MultiLabelData:
    """Splits of a multi-label text set.

    Attributes:
        splits: ``{"train"|"valid"|"test": (texts, label_sets)}``; each label set is a sorted
            list of indices into ``labels``.
        labels: label (tag) names, most frequent first. source: where the data came from.
        meta: snapshot, counts, the split rule.
    """

    splits: dict[str, tuple[list[str], list[list[int]]]]
    labels: list[str]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        return {k: len(v[0]) for k, v in self.splits.items()}


def read_debtags(lists_dir: str | os.PathLike[str]) -> dict[str, list[str]]:
    """``{package: [tags]}`` from the ``Tag:`` fields of the Packages lists in ``lists_dir``
    (the first list that names a package wins, as in
    :func:`~rdrop_experiments.data.debian.load_debian_descriptions`).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "x_main_binary-amd64_Packages").write_text(
        ...     "Package: a\\nTag: role::program,\\n use::editing\\n\\nPackage: b\\n")
        >>> read_debtags(d)
        {'a': ['role::program', 'use::editing']}
    """
    from rdrop_experiments.data.debian import iter_stanzas, list_files, read_list_file

    tags: dict[str, list[str]] = {}
    for f in list_files(Path(lists_dir), "packages"):
        for st in iter_stanzas(read_list_file(f)):
            name, raw = st.get("Package"), st.get("Tag")
            if name and raw and name not in tags:
                tags[name] = sorted({t.strip() for t in raw.replace("\n", " ").split(",")
                                     if t.strip()})
    return tags


def load_debtags(
    *,
    num_tags: int = 20,
    text_field: str = "synopsis+long",
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    split_seed: int = 0,
    lists_dir: str | os.PathLike[str] | None = None,
) -> MultiLabelData:
    """Debian package descriptions labelled with their most frequent debtags.

    Args:
        num_tags: keep the ``num_tags`` most frequent tags (counted once per distinct text;
            ties broken by name); packages with none of them are left out.
        text_field: ``synopsis``, ``long`` or ``synopsis+long`` (``"<synopsis>. <long>"``).
        valid_frac, test_frac: shares of source packages in valid/test (seeded hash).
        split_seed: seed of the hash split.
        lists_dir: apt lists folder (default ``/var/lib/apt/lists``).

    Raises:
        FileNotFoundError: no apt lists with English descriptions.
        ValueError: bad ``text_field``, ``num_tags < 1``, or no tagged package found.
    """
    from rdrop_experiments.data.debian import (
        APT_LISTS_DIR,
        check_text_field,
        load_debian_descriptions,
        package_text,
    )
    from rdrop_experiments.data.text_classification import hash_split

    check_text_field(text_field)
    if num_tags < 1:
        raise ValueError(f"num_tags must be >= 1, got {num_tags}.")
    lists_dir = lists_dir or APT_LISTS_DIR
    packages, meta = load_debian_descriptions(lists_dir)
    tags = read_debtags(lists_dir)
    if not tags:
        raise ValueError(f"no package in the Packages lists of {lists_dir} carries a Tag: field "
                         "(debtags); a Debian main suite has about 30k tagged packages.")

    seen: set[str] = set()
    rows = []
    for p in packages:  # identical texts (arch variants, transitional copies) count once
        t = package_text(p, text_field)
        if t and t not in seen and p.package in tags:
            seen.add(t)
            rows.append((p, t, tags[p.package]))
    counts = Counter(tag for _, _, ts in rows for tag in ts)
    labels = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:num_tags]]
    index = {t: i for i, t in enumerate(labels)}
    splits: dict[str, tuple[list[str], list[list[int]]]] = {
        k: ([], []) for k in ("train", "valid", "test")}
    for p, t, ts in rows:
        label_set = sorted(index[x] for x in ts if x in index)
        if label_set:
            part = hash_split(p.source, split_seed, valid_frac, test_frac)
            splits[part][0].append(t)
            splits[part][1].append(label_set)
    meta = {**meta, "tag_counts": {t: counts[t] for t in labels}, "text_field": text_field,
            "tagged_texts": len(rows), "distinct_tags": len(counts),
            "label_rule": f"the {num_tags} most frequent tags over distinct texts; packages "
                          "with none of them left out",
            "split": f"sha256('{split_seed}:' + source package) -> {1 - valid_frac - test_frac:.2f}"
                     f"/{valid_frac:.2f}/{test_frac:.2f}"}
    return MultiLabelData(splits, labels, f"debtags:{meta['lists_dir']}", meta)
