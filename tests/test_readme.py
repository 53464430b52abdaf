"""The README's code blocks that are marked runnable are executed, so they never rot.

Convention (README authors: follow it):

* a fenced block whose info string is exactly ``python`` runs;
* ``python norun`` (any extra word after ``python``) does not run;
* a ``diff`` block runs only if it contains the marker line ``# rdrop: runnable diff``: its "+" and
  " " (context) lines, prefix removed, are run; "-" lines and the marker line are dropped;
* every other block (``bash``, ``text``, plain fences, ``diff`` without the marker) is not run.

Each runnable block runs on its own (a fresh namespace, in a temporary working directory), so
blocks must be self-contained, offline and fast (a few seconds on one CPU core).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "# rdrop: runnable diff"
FENCE = re.compile(r"^(`{3,})(.*)$")


def diff_to_code(lines: list[str]) -> str:
    """The "+" side of a -/+ diff, prefixes removed."""
    code = []
    for line in lines:
        if line.strip() == MARKER or line.startswith("-"):
            continue
        if line.startswith(("+", " ")):
            code.append(line[1:])
        elif line.strip() == "":
            code.append("")
        else:
            raise ValueError(f"diff line without a '+', '-' or ' ' prefix: {line!r}")
    return "\n".join(code) + "\n"


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each block the convention says to run."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        end = start
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        body = lines[start:end]
        if info == "python":
            blocks.append((start + 1, "\n".join(body) + "\n"))
        elif info == "diff" and any(line.strip() == MARKER for line in body):
            blocks.append((start + 1, diff_to_code(body)))
        i = end + 1
    return blocks


def test_convention_parses_diffs_and_skips_norun():
    text = "\n".join([
        "```python", "x = 1", "```",
        "```python norun", "raise SystemExit", "```",
        "```diff", MARKER, " a = 1", "-b = 2", "+b = 3", "", "```",
        "```diff", "-nothing = 0", "```",
        "```bash", "make test", "```",
    ])
    assert runnable_blocks(text) == [(2, "x = 1\n"), (8, "a = 1\nb = 3\n\n")]


BLOCKS = runnable_blocks(README.read_text()) if README.exists() else []


def test_readme_has_runnable_blocks():
    if not README.exists():
        pytest.skip("no README.md")
    assert BLOCKS, "README.md has no runnable block: see the convention in tests/test_readme.py"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)


SUMMARY = README.parent / "results" / "summary.md"
RESULTS = README.parent / "results" / "README.md"  # the results section, moved out of README.md


def results_rows(text: str) -> list[tuple[str, str, str, str, str]]:
    """(metric, baseline, R-Drop, delta, p) of each row of the tables of results/README.md."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and "±" in cells[2]:
            rows.append(tuple(cells[1:6]))
    return rows


def summary_rows(text: str) -> set[tuple[str, str, str, str, str]]:
    """(metric, baseline, R-Drop, delta, p) of every row of ``rdrop report``'s tables."""
    rows = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and "±" in cells[3]:
            rows.add(tuple(cells[2:7]))
    return rows


def test_results_parsers_read_both_layouts():
    results = ("# Results\n| a | m | 1 ± 0 | 2 ± 0 | +1 [0, 2] | 0.1 | p | `c` |\n"
               "| x | m | 9 |")
    summary = "| e | s | m | 1 ± 0 | 2 ± 0 | +1 [0, 2] | 0.1 | 3 |"
    assert results_rows(results) == [("m", "1 ± 0", "2 ± 0", "+1 [0, 2]", "0.1")]
    assert summary_rows(summary) == {("m", "1 ± 0", "2 ± 0", "+1 [0, 2]", "0.1")}


def test_results_readme_matches_the_committed_report():
    """Every number in results/README.md's tables is a row that `rdrop report` wrote."""
    if not (RESULTS.exists() and SUMMARY.exists()):
        pytest.skip("no results/README.md or results/summary.md")
    rows = results_rows(RESULTS.read_text())
    assert rows, "results/README.md has no table rows"
    reported = summary_rows(SUMMARY.read_text())
    missing = [r for r in rows if r not in reported]
    assert not missing, (f"{RESULTS} rows not in {SUMMARY}: {missing}; regenerate with "
                         "`rdrop report --results results` and copy the rows")


HEADLINE = README.parent / "results" / "headline.md"


def test_readme_results_table_is_the_committed_headline():
    """Every row of the README's results table is a row `rdrop report` wrote to headline.md."""
    if not HEADLINE.exists():
        pytest.skip("no results/headline.md")
    text = README.read_text()
    section = text[text.index("## Results"):text.index("\n## ", text.index("## Results") + 3)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "±" not in line
            and not line.startswith("| family")]
    assert rows, "the README's Results section has no table"
    reported = set(HEADLINE.read_text().splitlines())
    missing = [r for r in rows if r not in reported]
    assert not missing, f"README rows not in {HEADLINE}: {missing}; copy them from it"
    assert len(section.splitlines()) < 25, "README Results: a table and at most three lines"
