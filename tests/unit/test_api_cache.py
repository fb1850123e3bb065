"""The read API's TTL cache and emblems: pure pieces, tested with a fake clock and literal values."""

from __future__ import annotations

import threading

from streams.api.cache import TTLCache
from streams.api.emblems import colours, emblem_svg, initials


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_served_until_its_ttl_then_recomputed() -> None:
    clock, calls = Clock(), []
    cache = TTLCache(5.0, clock=clock)

    def compute() -> int:
        calls.append(clock.now)
        return len(calls)

    assert cache.get("k", compute) == 1
    clock.now = 4.9
    assert cache.get("k", compute) == 1
    clock.now = 5.0
    assert cache.get("k", compute) == 2
    assert calls == [0.0, 5.0]


def test_ttl_zero_recomputes_every_time() -> None:
    cache = TTLCache(0)
    values = iter(range(10))
    assert [cache.get("k", lambda: next(values)) for _ in range(3)] == [0, 1, 2]


def test_a_stale_value_is_served_while_another_caller_refreshes_it() -> None:
    clock = Clock()
    cache = TTLCache(1.0, clock=clock)
    cache.get("k", lambda: "old")
    clock.now = 2.0
    refreshing, release = threading.Event(), threading.Event()

    def slow() -> str:
        refreshing.set()
        release.wait(5)
        return "new"

    refresher = threading.Thread(target=cache.get, args=("k", slow))
    refresher.start()
    assert refreshing.wait(5)
    assert cache.get("k", lambda: "not called") == "old"  # no stampede: the stale value meanwhile
    release.set()
    refresher.join(5)
    assert cache.get("k", lambda: "not called") == "new"


def test_least_recently_used_keys_are_dropped_beyond_max_entries() -> None:
    cache = TTLCache(60, max_entries=2)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    cache.get("a", lambda: 0)  # a is now the most recently used
    cache.get("c", lambda: 3)
    assert cache.get("a", lambda: "recomputed") == 1
    assert cache.get("b", lambda: "recomputed") == "recomputed"


def test_emblems_show_initials_in_the_tier_colour_and_escape_names() -> None:
    assert initials("Quiz Master") == "QM" and initials("explorer") == "EX" and initials("daily_warrior") == "DW"
    assert colours("quiz_master", "gold")[0] == "#e0b422"
    assert colours("first_quiz", None) == colours("first_quiz", None)  # stable per badge
    assert colours("first_quiz", "gold", locked=True) != colours("first_quiz", "gold")
    svg = str(emblem_svg("x", "<script>alert(1)</script> Badge", "gold"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and svg.startswith("<svg")
