"""Debian's package descriptions as a real English corpus (read from the local apt lists).

``apt-get update -o Acquire::Languages=en`` leaves, under ``/var/lib/apt/lists/``, the
``*_Packages`` lists (``Package``, ``Source``, ``Section``, ``Description-md5``) and the
``*_i18n_Translation-en`` lists (``Description-en``: a one-line synopsis, then a human-written
long description), usually lz4-compressed. :func:`load_debian_descriptions` joins them on the
description md5 and returns one :class:`DebianPackage` per binary package. Families use it for
text classification (long description -> Section), summarization (long description ->
synopsis) and language modeling (the descriptions as prose).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rdrop_experiments.data.common import cache_dir  # re-exported: its old home

__all__ = [
    "APT_LISTS_DIR",
    "TEXT_FIELDS",
    "DebianPackage",
    "cache_dir",
    "check_text_field",
    "iter_stanzas",
    "list_files",
    "load_debian_descriptions",
    "package_text",
    "read_list_file",
    "snapshot_info",
]

APT_LISTS_DIR = "/var/lib/apt/lists"
_HINT = ("Run `make data` (or `apt-get update -o Acquire::Languages=en` as root) to fetch the "
         "Debian package lists with English descriptions.")


@dataclass(frozen=True)
class DebianPackage:
    """One binary package's description record.

    Attributes:
        package: binary package name. source: source package name (the package name if the
            list gives no ``Source``). section: ``Section`` without its component prefix
            (``contrib/games`` -> ``games``). synopsis: the one-line description. long: the long
            description as plain text (paragraphs joined with a blank line).
    """

    package: str
    source: str
    section: str
    synopsis: str
    long: str


def read_list_file(path: str | os.PathLike[str]) -> str:
    """The text of an apt list file, decompressing ``.lz4``/``.gz``/``.xz``/``.bz2``.

    lz4 is read with the ``lz4`` Python package if installed, else the ``lz4`` command, else
    ``/usr/lib/apt/apt-helper cat-file`` (apt decompresses every format it writes).

    Raises:
        FileNotFoundError: the file is missing, or no lz4 decoder is available.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. {_HINT}")
    suffix = path.suffix
    if suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    if suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8", errors="replace").read()
    if suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8", errors="replace").read()
    if suffix != ".lz4":
        return path.read_text(encoding="utf-8", errors="replace")
    try:
        import lz4.frame  # type: ignore[import-not-found]

        return lz4.frame.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    except ImportError:
        pass
    for cmd in (["lz4", "-dc", str(path)], ["/usr/lib/apt/apt-helper", "cat-file", str(path)]):
        if shutil.which(cmd[0]) or Path(cmd[0]).exists():
            out = subprocess.run(cmd, capture_output=True, check=True)
            return out.stdout.decode("utf-8", errors="replace")
    raise FileNotFoundError(f"cannot decompress {path}: install the `lz4` command or the lz4 "
                            "Python package.")


def iter_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Parse deb822 text (``Field: value`` with indented continuation lines) into dicts.

    Continuation lines are kept, newline-joined, without their leading space.

    Example:
        >>> list(iter_stanzas("Package: a\\nDescription-en: short\\n long one\\n .\\n more\\n"))
        [{'Package': 'a', 'Description-en': 'short\\nlong one\\n.\\nmore'}]
    """
    stanza: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, None
        elif line[0] in " \t" and last is not None:
            stanza[last] += "\n" + line[1:]
        elif ":" in line:
            key, value = line.split(":", 1)
            stanza[key] = value.strip()
            last = key
    if stanza:
        yield stanza


def _long_text(lines: list[str]) -> str:
    # Debian's format: " ." is an empty line; paragraphs are wrapped lines.
    paras, cur = [], []
    for line in lines:
        if line.strip() == ".":
            if cur:
                paras.append(" ".join(cur))
            cur = []
        else:
            cur.append(line.strip())
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(p for p in paras if p)


def list_files(lists_dir: Path, kind: str) -> list[Path]:
    """The apt list files of ``kind`` (``"packages"``: binary Packages lists; otherwise the
    English Translation lists) in ``lists_dir``, sorted by name."""
    pattern = "*_Packages*" if kind == "packages" else "*_i18n_Translation-en*"
    files = [p for p in sorted(lists_dir.glob(pattern)) if not p.name.endswith(".diff_Index")]
    if kind == "packages":
        files = [p for p in files if "binary-" in p.name]
    return files


def snapshot_info(lists_dir: str | os.PathLike[str] = APT_LISTS_DIR) -> list[dict[str, str]]:
    """Origin, suite, version and date of each ``*InRelease``/``*Release`` in ``lists_dir``."""
    out = []
    for p in sorted(Path(lists_dir).glob("*Release")):
        text = p.read_text(errors="replace")
        if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
            text = text.split("\n\n", 1)[-1]  # skip the armor header ("Hash: ...")
        fields = next(iter_stanzas(text), {})
        keep = ("Origin", "Suite", "Version", "Codename", "Date")
        out.append({"file": p.name, **{k: fields[k] for k in keep if k in fields}})
    return out


def load_debian_descriptions(
    lists_dir: str | os.PathLike[str] = APT_LISTS_DIR, *, use_cache: bool = True
) -> tuple[list[DebianPackage], dict[str, object]]:
    """Every binary package with an English description and a Section, and snapshot metadata.

    Joins the Packages lists and the Translation-en lists of ``lists_dir`` on
    ``Description-md5``; the first occurrence of a package name wins (main suite files sort
    before -security/-updates only by file name, so record the snapshot). The result is cached
    under :func:`cache_dir` keyed by the list files' names, sizes and mtimes.

    Returns:
        ``(packages sorted by name, {"lists_dir", "files", "snapshot", "count"})``.

    Raises:
        FileNotFoundError: no Packages or Translation-en lists (see ``make data``).
    """
    lists_dir = Path(lists_dir)
    pkg_files = list_files(lists_dir, "packages")
    tr_files = list_files(lists_dir, "translations")
    if not pkg_files or not tr_files:
        raise FileNotFoundError(f"no Packages and Translation-en lists under {lists_dir}. {_HINT}")
    stat = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in pkg_files + tr_files]
    digest = hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:12]
    cache = cache_dir() / f"debian-descriptions-{digest}.json"
    if use_cache and cache.exists():
        blob = json.loads(cache.read_text())
        return [DebianPackage(**d) for d in blob["packages"]], blob["meta"]

    descriptions: dict[str, str] = {}
    for f in tr_files:
        for st in iter_stanzas(read_list_file(f)):
            if "Description-md5" in st and "Description-en" in st:
                descriptions.setdefault(st["Description-md5"], st["Description-en"])
    packages: dict[str, DebianPackage] = {}
    for f in pkg_files:
        for st in iter_stanzas(read_list_file(f)):
            name, section = st.get("Package"), st.get("Section")
            desc = descriptions.get(st.get("Description-md5", ""))
            if not name or not section or desc is None or name in packages:
                continue
            first, *rest = desc.split("\n")
            source = re.split(r"\s", st.get("Source", name).strip())[0]
            packages[name] = DebianPackage(
                package=name, source=source, section=section.split("/")[-1],
                synopsis=first.strip(), long=_long_text(rest),
            )
    result = [packages[k] for k in sorted(packages)]
    meta: dict[str, object] = {
        "lists_dir": str(lists_dir), "files": [s[0] for s in stat],
        "snapshot": snapshot_info(lists_dir), "count": len(result),
    }
    if use_cache:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "packages": [asdict(p) for p in result]}))
        os.replace(tmp, cache)
    return result, meta


TEXT_FIELDS = ("synopsis", "long", "synopsis+long")


def check_text_field(text_field: str) -> None:
    """Raise ``ValueError`` unless ``text_field`` is one of :data:`TEXT_FIELDS`."""
    if text_field not in TEXT_FIELDS:
        raise ValueError(f"text_field must be synopsis, long or synopsis+long, got {text_field!r}.")


def package_text(package: DebianPackage, text_field: str) -> str:
    """A package's text for a classifier: its ``synopsis``, its ``long`` description (the
    synopsis when it has none), or ``synopsis+long`` (``"<synopsis>. <long>"``); ``text_field``
    checked by :func:`check_text_field`.

    Example:
        >>> from types import SimpleNamespace
        >>> p = SimpleNamespace(synopsis="a tool", long="It does things.")
        >>> package_text(p, "synopsis+long"), package_text(SimpleNamespace(synopsis="s", long=""),
        ...                                                  "long")
        ('a tool. It does things.', 's')
    """
    if text_field == "synopsis":
        return package.synopsis
    if text_field == "long":
        return package.long or package.synopsis
    return f"{package.synopsis}. {package.long}".strip()
