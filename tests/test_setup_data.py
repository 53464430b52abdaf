"""`make data` (scripts/setup_data.sh): every input is checked, a missing Translation-en list is
fetched (with a forced re-fetch when the first update skips it), and a failure says how to fix it.
apt-get is replaced by a stub that records its calls and creates what a real update would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup_data.sh"


def _stub(tmp: Path, body: str) -> Path:
    stub = tmp / "apt-get"
    stub.write_text("#!/usr/bin/env bash\necho \"$@\" >> \"$STUB_LOG\"\n" + body)
    stub.chmod(0o755)
    return stub


def _run(tmp: Path, stub_body: str, *, packages_present: bool = True):
    lists = tmp / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "x_dists_bookworm_InRelease").write_text("release")
    (lists / "x_main_binary-amd64_Packages.lz4").write_text("p")
    fashion, sword = tmp / "fashion", tmp / "sword"
    if packages_present:
        fashion.mkdir(exist_ok=True)
        for mod in ("spaRV1909eb", "engWEB2015eb"):
            (sword / mod).mkdir(parents=True, exist_ok=True)
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "mod2imp").write_text("#!/bin/sh\n")
    (bindir / "mod2imp").chmod(0o755)
    env = dict(os.environ, RDROP_APT_LISTS=str(lists), RDROP_FASHION_DIR=str(fashion),
               RDROP_SWORD_DIR=str(sword), RDROP_APT_GET=str(_stub(tmp, stub_body)),
               STUB_LOG=str(tmp / "calls"), LISTS=str(lists),
               PATH=f"{bindir}:{os.environ['PATH']}")
    if os.geteuid() != 0:
        pytest.skip("the script calls sudo when not root")
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=60)
    calls = (tmp / "calls").read_text().splitlines() if (tmp / "calls").exists() else []
    return proc, calls, lists


def test_present_inputs_fetch_nothing(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "x_main_i18n_Translation-en.lz4").write_text("t")
    proc, calls, _ = _run(tmp_path, "")
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    assert "English descriptions present" in proc.stdout


def test_missing_translations_are_fetched_with_english_enabled(tmp_path: Path) -> None:
    proc, calls, lists = _run(tmp_path, 'touch "$LISTS/x_main_i18n_Translation-en.lz4"\n')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls == ["update -o Acquire::Languages=en"]
    assert (lists / "x_main_i18n_Translation-en.lz4").exists()


def test_update_that_skips_translations_is_forced_to_refetch(tmp_path: Path) -> None:
    # A first update that leaves no Translation-en list (as seen on fresh machines); the script
    # drops the cached Release files and updates again, which then fetches the list.
    body = ('if [ ! -e "$LISTS/x_dists_bookworm_InRelease" ]; then '
            'touch "$LISTS/x_main_i18n_Translation-en.lz4"; fi\n')
    proc, calls, _ = _run(tmp_path, body)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(calls) == 2 and "forcing a full re-fetch" in proc.stdout


def test_failure_says_what_is_missing_and_the_fix(tmp_path: Path) -> None:
    proc, calls, _ = _run(tmp_path, "exit 0\n")
    assert proc.returncode == 1 and len(calls) == 2  # the update, then the forced re-fetch
    assert "Translation-en" in proc.stderr and "Fix:" in proc.stderr
    assert "Acquire::Languages=en" in proc.stderr


def test_missing_data_packages_are_installed_or_reported(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "x_main_i18n_Translation-en.lz4").write_text("t")
    proc, calls, _ = _run(tmp_path, "exit 0\n", packages_present=False)
    assert proc.returncode == 1
    assert any(c.startswith("install -y -q dataset-fashion-mnist") for c in calls)
    assert "did not install" in proc.stderr and "Fix:" in proc.stderr
