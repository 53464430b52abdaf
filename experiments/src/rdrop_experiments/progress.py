"""Progress that suits its stream: a tqdm bar on a terminal, one plain line per interval in a log.

A tqdm bar redraws itself with carriage returns; written to a file (``rdrop run ... > log``,
CI, ``nohup``) every redraw becomes a line. :func:`progress_bar` draws a bar only when the stream
is a terminal, and otherwise prints ``desc: 300/1500 (20%) 41 s valid_acc=0.81`` at most once per
``interval`` seconds (``$RDROP_LOG_INTERVAL``, default 60), plus a last line at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["LogProgress", "progress_bar"]


def _log_interval() -> float:
    try:
        return float(os.environ.get("RDROP_LOG_INTERVAL", "60"))
    except ValueError:
        return 60.0


class LogProgress:
    """The part of tqdm's interface the harness uses, printed as plain lines.

    Args:
        iterable: what to iterate over (may be ``None`` when driven by :meth:`update`).
        desc: the line's prefix. total: number of items (default ``len(iterable)``).
        initial: items already done. interval: seconds between lines (0: a line per update).
        file: where to print (default ``sys.stderr``). disable: print nothing.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> for _ in LogProgress(range(3), desc="demo", interval=0, file=out):
        ...     pass
        >>> out.getvalue().splitlines()[-1].split()[:3]
        ['demo:', '3/3', '(100%)']
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, desc: str = "",
                 total: float | None = None, initial: int = 0, interval: float | None = None,
                 file: IO[str] | None = None, disable: bool = False, **_ignored: Any) -> None:
        self.iterable = iterable
        self.desc = desc
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.n = initial
        self.interval = _log_interval() if interval is None else interval
        self.file = file
        self.disable = disable
        self.postfix = ""
        self._start = time.monotonic()
        self._last = self._start
        self._printed_at = -1

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LogProgress was created without an iterable.")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        """Text after the counts, as ``key=value`` pairs (like tqdm)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text after the counts, verbatim (like tqdm)."""
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Change the line's prefix (like tqdm)."""
        self.desc = desc or ""

    def update(self, n: float = 1) -> None:
        """Count ``n`` more items; print a line if ``interval`` seconds passed since the last."""
        self.n += int(n)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def _print(self) -> None:
        if self.disable or self._printed_at == self.n:
            return
        self._printed_at = self.n
        done = f"{self.n}/{int(self.total)}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = time.monotonic() - self._start
        line = f"{self.desc}: {done}{pct} {elapsed:.0f} s {self.postfix}".rstrip()
        print(line, file=self.file or sys.stderr, flush=True)

    def write(self, s: str) -> None:
        """Print a message line (like ``tqdm.write``), unless disabled."""
        if not self.disable:
            print(s, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        """Print the final line (once)."""
        self._print()
        self.disable = True

    def refresh(self) -> None:
        """Print a line now."""
        self._print()


def progress_bar(iterable: Iterable[Any] | None = None, *, file: IO[str] | None = None,
                 **kwargs: Any) -> Any:
    """tqdm on a terminal, :class:`LogProgress` otherwise (same calls: iterate, ``update``,
    ``set_postfix``, ``close``).

    Args:
        iterable: what to iterate over. file: the stream (default ``sys.stderr``), whose
            ``isatty()`` decides. **kwargs: tqdm arguments (``desc``, ``total``, ``initial``,
            ``disable``, ``leave``, ...); those a log line has no use for are ignored there.
    """
    stream = file or sys.stderr
    if stream.isatty():
        from tqdm.auto import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=stream, **kwargs)
    return LogProgress(iterable, file=stream, **kwargs)
