"""A dependency-free progress bar for training epochs.

On a terminal it redraws one line in place (at most ten times a second); elsewhere (a log file, CI) it
prints a plain line every ``log_every`` seconds so logs stay short. Disabled bars cost nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75.2 -> '1:15'``, ``3725 -> '1:02:05'``."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """``bar.update(steps_done, images_done, **stats)`` after a step (``bar.due(steps_done)`` says whether it
    would draw, so stats that cost a device sync are computed only then); ``bar.close()`` at the end."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        width: int = 24,
        log_every: float = 30.0,
    ) -> None:
        self.total = max(1, total)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.log_every = log_every
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        # A log gets its first line after log_every seconds, a terminal at once.
        self.last_draw = -1.0 if self.tty else self.start
        self.line = ""

    def due(self, done: int) -> bool:
        """Whether ``update(done, ...)`` would draw: callers skip computing stats (and syncing) otherwise."""
        if not self.enabled:
            return False
        interval = 0.1 if self.tty else self.log_every
        return done >= self.total or time.perf_counter() - self.last_draw >= interval

    def update(self, done: int, images: int, **stats: float) -> None:
        if not self.due(done):
            return
        now = time.perf_counter()
        self.last_draw = now
        elapsed = now - self.start
        rate = images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.total - done) if done else 0.0
        filled = self.width * done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        shown = " ".join(f"{k} {v:.4g}" for k, v in stats.items())
        self.line = (
            f"{self.desc} [{bar}] {done}/{self.total} {shown} {rate:.0f} img/s "
            f"{format_duration(elapsed)}<{format_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + self.line + "\x1b[K")
        else:
            self.stream.write(self.line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.line:
            self.stream.write("\n")
            self.stream.flush()
