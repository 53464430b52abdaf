"""Result storage: the data hash (what a run saw), the git state (what code ran it), the
writability probe, stale temp files."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from rdrop_experiments.storage import check_writable, clean_stale_tmp, data_hash, git_state


def test_data_hash_is_the_content():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    texts = ["in the beginning", "was the word"]
    h = data_hash({"train": (x, texts)})
    assert h == data_hash({"train": (x.clone(), list(texts))})  # same content, new objects
    y = x.clone()
    y[2, 3] += 1e-6  # one value, slightly
    changed = [
        data_hash({"train": (y, texts)}),
        data_hash({"train": (x.double(), texts)}),  # dtype
        data_hash({"train": (x.reshape(4, 3), texts)}),  # shape
        data_hash({"train": (x, texts[::-1])}),  # order of the texts
        data_hash({"train": (x, ["in the beginning was", "the word"])}),  # where a text splits
        data_hash({"valid": (x, texts)}),  # the split's name
    ]
    assert len({h, *changed}) == len(changed) + 1


def test_data_hash_of_views_bfloat16_and_containers():
    x = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    assert data_hash(x[:, 1:3]) == data_hash(x[:, 1:3].contiguous())  # a strided view
    b = torch.linspace(0, 1, 7).to(torch.bfloat16)
    assert data_hash(b) != data_hash(b.float()) and len(data_hash(b)) == 16
    a = np.arange(6, dtype=np.int64)
    assert data_hash(a) == data_hash(a.copy()) != data_hash(a.astype(np.int32))

    @dataclass
    class Pairs:
        src: list[str]
        tgt: list[str]

    assert data_hash(Pairs(["a"], ["b"])) == data_hash(Pairs(["a"], ["b"]))
    assert data_hash(Pairs(["a"], ["b"])) != data_hash(Pairs(["b"], ["a"]))
    with pytest.raises(TypeError, match="cannot hash set"):
        data_hash({1, 2})


def test_git_state_of_this_checkout_and_outside_one(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=__file__.rsplit("/", 1)[0]).stdout.strip()
    state = git_state()
    assert state["commit"] == head and isinstance(state["dirty"], bool)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_git_state_sees_uncommitted_changes(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.py").write_text("a = 1\n")
    git("add", "f.py")
    git("commit", "-qm", "one")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "untracked.txt").write_text("not code\n")
    assert git_state(tmp_path)["dirty"] is False  # untracked files do not count
    (tmp_path / "f.py").write_text("a = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "folder")  # created
    assert (tmp_path / "new" / "folder").is_dir() and not any((tmp_path / "new" / "folder")
                                                                .iterdir())
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match=r"--out .* is not writable"):
        check_writable(tmp_path / "file" / "sub")


def test_clean_stale_tmp_keeps_a_live_write(tmp_path):
    (tmp_path / ".a-seed0-k.json.1234.tmp").write_text("{")  # no lock: its writer is gone
    (tmp_path / ".b-seed0-k.json.5678.tmp").write_text("{")  # b is locked by a live process
    (tmp_path / "b-seed0-k.json.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    (tmp_path / "c-seed0-k.json").write_text("{}")
    removed = clean_stale_tmp(tmp_path)
    assert [p.name for p in removed] == [".a-seed0-k.json.1234.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".b-seed0-k.json.5678.tmp", "b-seed0-k.json.lock", "c-seed0-k.json"]


def test_a_tryouts_continuations_are_not_the_familys_runs(tmp_path):
    """Records under <root>/tryout/ belong to `rdrop tryout`: left out of the family's records,
    and read when the tryout's own folder is the root."""
    import json

    from rdrop_experiments.storage import load_results, scan_results

    rec = {"experiment": "image", "method": "baseline", "seed": 0, "value": 0.5,
           "metric": "accuracy", "setting": "default", "config": {}, "curves": []}
    for folder in (tmp_path / "image", tmp_path / "tryout" / "image" / "image"):
        folder.mkdir(parents=True)
        (folder / "baseline-seed0-abc.json").write_text(json.dumps(rec))
    (tmp_path / "tryout" / "image" / "tryout-2seeds.json").write_text("{}")
    records, skipped = scan_results(tmp_path)
    assert [r["_path"] for r in records] == [str(tmp_path / "image" / "baseline-seed0-abc.json")]
    assert skipped == []
    assert len(load_results(tmp_path / "tryout" / "image")) == 1
