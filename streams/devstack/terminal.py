"""``badgestream up``'s terminal: output that outlives its reader, the signals that mean "stop
everything", and log records kept in a file rather than strewn over the console."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from streams.shutdown import STOP_SIGNALS


class SurvivingStream:
    """stdout or stderr of ``up``, which outlives its reader: after the first failed write (EPIPE:
    ``| tee`` died with the Ctrl-C; EIO: the terminal is gone) everything goes nowhere instead of
    raising, so that stopping the children is never cut short by a message about it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return self._stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except OSError:
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        # What the stream still buffers is flushed again at exit: into /dev/null, not into an error.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def keep_console_optional() -> None:
    sys.stdout = SurvivingStream(sys.stdout)
    sys.stderr = SurvivingStream(sys.stderr)


def stop_on_signals() -> None:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP all mean "stop everything": the first raises
    KeyboardInterrupt wherever ``up`` is; later ones are ignored, the stop being bounded."""

    def first(signum: int, _frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda _signum, _frame: None)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, first)


def log_to_file(path: Path) -> None:
    """Every log record of ``up``'s own process (its Kafka clients' librdkafka lines included) goes to
    ``path``; the console shows warnings and errors, librdkafka's excepted."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("[up] %(levelname)s %(name)s: %(message)s"))
    # librdkafka reports what it retries by itself ("Coordinator load in progress: retrying"):
    # the file keeps it, the console is for what needs the reader.
    console.addFilter(lambda record: not record.name.startswith("badgestream.librdkafka"))
    root.addHandler(console)
