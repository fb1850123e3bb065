"""A one-line progress bar on stderr for long work (replay, simulate, benchmarks): done/total, rate, ETA."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A one-line progress bar on stderr: done/total, rate, ETA."""

    def __init__(self, total: int, label: str, every: float = 0.5, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.every = every
        self.stream = stream or sys.stderr
        self.began = time.monotonic()
        self.last = 0.0
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last >= self.every or done >= self.total:
            self.last = now
            elapsed = max(now - self.began, 1e-9)
            rate = done / elapsed
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            width = 30
            filled = int(width * min(done, self.total) / self.total)
            bar = "#" * filled + "-" * (width - filled)
            eta_text = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
            end = "\n" if done >= self.total else "\r"
            print(f"{self.label} [{bar}] {done}/{self.total} {rate:,.0f}/s ETA {eta_text}", end=end,
                  file=self.stream, flush=True)

    def finish(self) -> None:
        if self.done < self.total:
            print(file=self.stream, flush=True)
