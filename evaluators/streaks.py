"""The streak rule kind: N consecutive active days or ISO weeks, with an optional freeze budget.

Order-insensitive however late an event arrives: the periods a user was active in are kept as
bitmaps (:data:`evaluators.state.Stretches`) until the streak is met, and each event examines only
the periods within reach of its own (docs/engine.md, "Streak periods").
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import date
from operator import itemgetter
from typing import Any

from evaluators.compiled import CompiledBadge, Progress
from evaluators.facts import EventFacts
from evaluators.state import BadgeState, Stretches
from schemas.catalog import Badge, StreakRule

STREAK_SPLIT_GAP = 128
"""Active periods at least this many inactive periods apart are kept as separate bitmaps.

One bitmap from the first active period costs a bit per period however far apart they are: an
event dated decades away (events may carry any year from 1970 to 9000) would cost kilobytes per
streak badge. A new bitmap costs a few bytes, so a long gap starts one. Bitmaps are also at least
``freezes + 1`` periods apart, so no range within the budget crosses from one to the next and each
is examined on its own.
"""


def _with_period(stretches: Stretches, point: int, gap: int) -> tuple[Stretches, tuple[int, int]] | None:
    """The active periods with ``point`` added and the stretch now holding it; None if it was already active.

    ``point`` joins the stretch before it and the one after it when fewer than ``gap`` inactive
    periods lie between (both, when it closes the gap between them); before the first period of a
    stretch, it becomes the new first period and the bitmap shifts up to make room.
    """
    after = bisect_right(stretches, point, key=itemgetter(0))
    first, bits = point, 1
    start = stop = after
    if after:
        left_first, left_bits = stretches[after - 1]
        offset = point - left_first
        if left_bits >> offset & 1:
            return None
        if offset - left_bits.bit_length() < gap:  # inactive periods between its last one and ``point``
            first, bits = left_first, left_bits | 1 << offset
            start = after - 1
    if after < len(stretches):
        right_first, right_bits = stretches[after]
        if right_first - point - 1 < gap:
            bits |= right_bits << (right_first - first)
            stop = after + 1
    holding = (first, bits)
    return (*stretches[:start], holding, *stretches[stop:]), holding


def _longest_around(active: int, at: int, length: int, freezes: int) -> int:
    """The most active periods, capped at ``length``, in a range holding bit ``at`` with <= ``freezes`` inactive ones.

    Only ranges that hold ``at`` can have grown when it arrived. One that reaches ``length`` can be
    trimmed, keeping ``at``, to exactly ``length`` active periods, so it spans at most ``length +
    freezes`` periods; a shorter best range spans fewer. So a window of ``length + freezes - 1``
    periods either side of ``at`` suffices, and the cost does not grow with the history. In the
    window, the best range that skips ``k`` inactive periods on the left and ``freezes - k`` on the
    right runs from just after the (k+1)-th inactive period left of ``at`` to just before the
    (freezes-k+1)-th one on its right (ends need not be active: trimming inactive ends changes
    nothing). Capping at ``length`` makes the stored maximum the same in any arrival order.
    """
    reach = length + freezes - 1
    low = at - reach if at > reach else 0
    centre = at - low
    width = centre + reach + 1
    window = (active >> low) & ((1 << width) - 1)
    # Inactive periods left of the centre, nearest first: the highest zero bits below it. -1 (the
    # window's start) once there are no more.
    lefts: list[int] = []
    below = ~window & ((1 << centre) - 1)
    for _ in range(freezes + 1):
        edge = below.bit_length() - 1
        lefts.append(edge)
        if edge >= 0:
            below ^= 1 << edge
    # Inactive periods right of the centre, nearest first: the lowest zero bits above it; ``width``
    # (the window's end) once there are no more.
    rights: list[int] = []
    above = ~window & ((1 << width) - (1 << centre))
    for _ in range(freezes + 1):
        lowest = above & -above
        rights.append(lowest.bit_length() - 1 if lowest else width)
        above ^= lowest
    best = 0
    for skipped_left in range(freezes + 1):
        start, end = lefts[skipped_left] + 1, rights[freezes - skipped_left]
        held = ((window & ((1 << end) - 1)) >> start).bit_count()
        if held > best:
            best = held
    return best if best < length else length


class StreakBadge(CompiledBadge):
    """A ``streak`` rule. Until it is met the state keeps every period the user was active in, as a
    bitmap from the first one (one bit per day or ISO week; a new one after a long gap): no event is
    too late to count."""

    kind = "streak"

    def __init__(self, badge: Badge, index: int) -> None:
        super().__init__(badge, index)
        rule = badge.rule
        assert isinstance(rule, StreakRule)
        self.weeks = rule.weeks is not None
        self.length = rule.length
        self.freezes = rule.freezes
        self.gap = max(STREAK_SPLIT_GAP, rule.freezes + 1)

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        point = facts.week if self.weeks else facts.day
        added = _with_period(state.active, point, self.gap)
        if added is None:
            return None
        active, (first, bits) = added
        new = state.copy()
        new.n = max(state.n, _longest_around(bits, point - first, self.length, self.freezes))
        # Met (streaks are never repeatable): the periods are no longer needed, only the length reached.
        new.active = () if new.n >= self.length else active
        return new

    def units(self, state: BadgeState) -> int:
        return 1 if state.n >= self.length else 0

    def progress(self, state: BadgeState) -> list[Progress]:
        return [(None, float(min(state.n, self.length)), float(self.length))]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        return {"progress": min(state.n, self.length), "target": self.length, "unit": "weeks" if self.weeks else "days"}


def _runs(stretches: Stretches) -> list[tuple[int, int]]:
    """The active periods as runs (first, last) in order: for explanations, not the hot path."""
    runs: list[tuple[int, int]] = []
    for first, bits in stretches:
        offset = 0
        while bits:
            skip = (bits & -bits).bit_length() - 1  # inactive periods before the next run
            bits >>= skip
            offset += skip
            length = (~bits & (bits + 1)).bit_length() - 1  # the run of set bits at the bottom
            runs.append((first + offset, first + offset + length - 1))
            bits >>= length
            offset += length
    return runs


def streak_standing(rule: StreakBadge, state: BadgeState) -> dict[str, Any]:
    """Where a streak stands, from its stored state: the current run, the best run, freezes used, periods missing.

    ``current``: active periods in the longest range (skipping at most ``freezes`` inactive periods)
    that ends at the newest active period; ``freezes_used``: the inactive periods inside it;
    ``best``: the longest such range anywhere (capped at the length, as the rule stores it);
    ``missing``: periods still needed after the current run; ``last_active``: the newest active
    period's first local day (ISO date), None when unknown (no period kept, or the streak was met).
    """
    unit = "weeks" if rule.weeks else "days"
    met = state.n >= rule.length
    runs = _runs(state.active)
    if met or not runs:
        current = rule.length if met else 0
        return {"unit": unit, "length": rule.length, "freezes": rule.freezes, "current": current,
                "best": min(state.n, rule.length), "freezes_used": 0, "missing": rule.length - current,
                "last_active": None}
    active = skipped = 0
    current = used = 0
    # Walk back from the newest run, taking runs while the gaps fit in the freeze budget.
    for index in range(len(runs) - 1, -1, -1):
        start, end = runs[index]
        if index < len(runs) - 1:
            gap = runs[index + 1][0] - end - 1
            if skipped + gap > rule.freezes:
                break
            skipped += gap
        active += end - start + 1
        current, used = active, skipped
    current = min(current, rule.length)
    newest = runs[-1][1]
    first_day = newest * 7 + 1 if rule.weeks else newest
    return {"unit": unit, "length": rule.length, "freezes": rule.freezes, "current": current,
            "best": max(min(state.n, rule.length), current), "freezes_used": used,
            "missing": rule.length - current, "last_active": date.fromordinal(first_day).isoformat()}
