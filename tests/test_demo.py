"""The digits demo (examples/digits_demo.py) runs end to end and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_digits_demo_prints_the_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits_demo.py"), "--seeds=2", "--epochs=2"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    lines = out.stdout.splitlines()
    rows = [line for line in lines if line.startswith(("| baseline", "| rdrop"))]
    assert len(rows) == 2, out.stdout
    for row in rows:
        acc = float(row.split("|")[2].split("±")[0])
        assert 10.0 < acc <= 100.0  # better than chance after two epochs
    assert any("paired accuracy difference" in line for line in lines)
