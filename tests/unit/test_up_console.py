"""What ``badgestream up`` shows people, and that losing its console never breaks it."""

from __future__ import annotations

import io
import os

import pytest

from schemas.catalog import load_catalog
from streams.devstack.receiver import Received, describe
from streams.devstack.terminal import SurvivingStream
from streams.devstack.up import display_names
from streams.settings import DEMO_CATALOG


def test_a_level_is_named_by_its_name_in_the_webhook_lines() -> None:
    names = display_names(load_catalog(DEMO_CATALOG))
    award = Received("/console", "w-1", "badge.awarded", {"user_id": "fay", "badge_id": "rookie"}, True, 0.0)
    assert describe(award, names) == "fay earned Rookie"
    quiz = Received("/console", "w-2", "badge.awarded", {"user_id": "fay", "badge_id": "first_quiz"}, True, 0.0)
    assert describe(quiz, names) == "fay earned First Quiz"


class ClosedPipe(io.StringIO):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self.fd


def test_a_stream_whose_reader_died_swallows_writes_and_points_its_descriptor_at_devnull() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = SurvivingStream(ClosedPipe(write_end))  # type: ignore[arg-type]
    try:
        assert stream.write("[up] stopping ...\n") == len("[up] stopping ...\n")
        stream.flush()
        assert stream.lost
        os.write(write_end, b"the flush at exit goes to /dev/null now\n")  # no EPIPE any more
    finally:
        os.close(write_end)


@pytest.mark.parametrize("text", ["", "x" * 10])
def test_a_healthy_stream_passes_everything_on(text: str) -> None:
    target = io.StringIO()
    stream = SurvivingStream(target)
    stream.write(text)
    stream.flush()
    assert target.getvalue() == text and not stream.lost
