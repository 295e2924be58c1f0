"""Progress that reads well on a terminal and in a log file.

On an interactive terminal this is a tqdm bar. Written to anything else (a log file, CI, a
pipe) a bar's carriage-return redraws become one line per update — hundreds of KB for one
``make demo`` — so there it prints a plain line at the start, at every tenth of the work
(10%, 20%, ...; about ten lines whatever the length) and at the end instead. Work of unknown
length prints a line every ``min_seconds``; a tenth that takes longer than
``stall_seconds`` gets one line in between, so a log never looks dead.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO


def interactive(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """tqdm's small API (``update``, ``set_description``, ``set_postfix_str``, ``close``,
    iteration) printing occasional plain lines."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 disable: bool = False, stream: TextIO | None = None, min_seconds: float = 30.0, initial: int = 0,
                 stall_seconds: float = 300.0, **_: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.disable = total, desc, disable
        self.stream = stream or sys.stderr
        self.min_seconds = min_seconds
        self.stall_seconds = stall_seconds
        self.n = int(initial)
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._next_frac = (int(10 * self.n / total) + 1) / 10 if total else 0.1
        self._closed = False
        if not disable:
            self._print("start")

    def _print(self, what: str) -> None:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        tail = f" {self.postfix}" if self.postfix else ""
        print(f"[{self.desc or 'progress'}] {what} {count} ({time.monotonic() - self._t0:.0f} s){tail}",
              file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable or (self.total and self.n >= self.total):
            return  # the end line comes from close()
        now = time.monotonic()
        crossed = bool(self.total) and self.n >= self._next_frac * self.total  # type: ignore[operator]
        quiet_for = now - self._last
        if (crossed and quiet_for >= 1.0) or quiet_for >= (self.stall_seconds if self.total else self.min_seconds):
            if self.total:
                self._next_frac = (int(10 * self.n / self.total) + 1) / 10
            self._last = now
            self._print("at")

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kw: Any) -> None:
        items = {**dict(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self._closed and not self.disable:
            self._print("done")
        self._closed = True

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             disable: bool = False, leave: bool = True, **kw: Any):
    """A tqdm bar on a terminal, ``PlainProgress`` elsewhere (same calls either way)."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=disable, leave=leave, **kw)
    return PlainProgress(iterable, total=total, desc=desc, disable=disable, **kw)


__all__ = ["progress", "PlainProgress", "interactive"]
