"""Shared test set-up: the float64 reference is importable as ``reference``; an empty run fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A broken collection that finds no test must never look green (pytest's exit 5 can be
    # swallowed by wrappers); make it an ordinary failure.
    if session.testscollected == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
