"""The built-in rule kinds, compiled from catalog badges: how each accumulates progress and when it is met.

A compiled rule is pure: ``accumulate`` takes a :class:`BadgeState` and the event's facts and
returns a *new* state (or None when nothing changed); ``units`` says how many awards the rule has
earned from that state. Every kind accumulates in a way that does not depend on the order of a
user's events — a count, an exact sum of non-negative values, a set of distinct values, merged
runs of day or week ordinals — so the award set is the same in any arrival order. ``points``
says what each award of the badge is worth.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from datetime import date
from fractions import Fraction
from hashlib import blake2b
from typing import Any

import orjson

from evaluators.base import MAX_MEMORY_BYTES, CustomEvaluator, Decision, EvaluatorView
from evaluators.expressions import Expression
from evaluators.facts import EventFacts
from evaluators.state import BadgeState
from schemas.catalog import (
    Badge,
    BadgesRule,
    CountRule,
    DistinctRule,
    EvaluatorRule,
    StreakRule,
    SumRule,
    TiersRule,
)
from schemas.errors import EvaluatorError

MAX_DISTINCT_KEY_CHARS = 64
"""Distinct values longer than this (as JSON) are remembered by a 128-bit digest instead."""

Progress = tuple[str | None, float, float]  # (tier, progress, target)
FieldGetter = Callable[[EventFacts], Any]


def _field_getter(path: str) -> FieldGetter:
    """Read ``data.a.b`` (or ``type``, ``tz``) from an event; None when any step is missing."""
    head, _, rest = path.partition(".")
    if head == "type":
        return lambda facts: facts.event.type
    if head == "tz":
        return lambda facts: facts.event.tz
    keys = tuple(rest.split("."))
    if len(keys) == 1:
        key = keys[0]
        return lambda facts: facts.event.data.get(key)

    def nested(facts: EventFacts) -> Any:
        value: Any = facts.event.data
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return nested


def distinct_key(value: Any) -> str:
    """A canonical text for a JSON value: 1 and 1.0 are one number, "1" is another value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) > MAX_DISTINCT_KEY_CHARS:
        return "#" + blake2b(text.encode(), digest_size=16).hexdigest()
    return text


class CompiledBadge:
    """A catalog badge ready to evaluate; one subclass per rule kind."""

    kind = ""
    #: Progress of every tier follows from the lowest tier that moved (tiers of one count): only
    #: that tier's record is published; :func:`schemas.records.expand_tiers` derives the others.
    collapses_tiers = False
    tiered = False

    def __init__(self, badge: Badge, index: int) -> None:
        self.badge = badge
        self.id = badge.id
        self.fp = badge.fingerprint
        self.index = index
        self.repeatable = badge.repeatable
        self.requires = tuple(badge.requires)
        window = badge.window
        self.window_from = window.from_.toordinal() if window is not None and window.from_ is not None else None
        self.window_until = window.until.toordinal() if window is not None and window.until is not None else None
        self.has_window = window is not None
        self.when: Expression | None = Expression.compile(badge.when) if badge.when is not None else None
        self._points = badge.points if badge.points is not None else 0

    # --- what each kind defines --------------------------------------------------------------

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        """The state after one more qualifying event, or None if it changes nothing."""
        raise NotImplementedError

    def units(self, state: BadgeState) -> int:
        """How many awards the rule has earned from ``state`` (tiers: how many tiers are reached)."""
        raise NotImplementedError

    def max_units(self) -> int:
        """Most awards a non-repeatable rule can give."""
        return 1

    def progress(self, state: BadgeState) -> list[Progress]:
        raise NotImplementedError

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------

    def fresh(self) -> BadgeState:
        return BadgeState(self.fp)

    def points(self, tier: str | None) -> int:
        """What one award (of ``tier``) of this badge is worth; every occurrence of a repeatable one alike."""
        points = self._points
        if isinstance(points, int):
            return points
        return points.get(tier, 0) if tier is not None else 0

    def in_window(self, facts: EventFacts) -> bool:
        day = facts.day
        if self.window_from is not None and day < self.window_from:
            return False
        return self.window_until is None or day < self.window_until

    def complete(self, state: BadgeState) -> bool:
        """Nothing further can change: a non-repeatable rule already met (or granted under an older definition)."""
        if self.repeatable:
            return False
        if self.tiered:
            return self.units(state) >= self.max_units()
        return state.granted > 0 or self.units(state) >= 1

    def due(self, state: BadgeState) -> list[tuple[str | None, int]]:
        """(tier, occurrence) of every award the rule has earned that was not granted yet."""
        units = state.base + self.units(state)
        if not self.repeatable:
            units = min(units, 1)
        return [(None, occurrence) for occurrence in range(state.granted + 1, units + 1)]


class CountBadge(CompiledBadge):
    kind = "count"

    def __init__(self, badge: Badge, index: int) -> None:
        super().__init__(badge, index)
        assert isinstance(badge.rule, CountRule)
        self.target = badge.rule.count

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        new = state.copy()
        new.n += 1
        return new

    def units(self, state: BadgeState) -> int:
        return state.n // self.target

    def progress(self, state: BadgeState) -> list[Progress]:
        if self.repeatable:
            return [(None, float(state.n), float(self.target * (state.n // self.target + 1)))]
        return [(None, float(min(state.n, self.target)), float(self.target))]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        target = self.target * (occurrence - state.base) if self.repeatable else self.target
        return {"progress": state.n, "target": target}


class TiersBadge(CompiledBadge):
    collapses_tiers = True
    kind = "tiers"
    tiered = True

    def __init__(self, badge: Badge, index: int) -> None:
        super().__init__(badge, index)
        assert isinstance(badge.rule, TiersRule)
        self.ordered = badge.rule.ordered()
        self.float_targets = tuple((name, target, float(target)) for name, target in self.ordered)
        self.rank = {name: rank for rank, (name, _) in enumerate(self.ordered, 1)}
        self.top = self.ordered[-1][1]

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        new = state.copy()
        new.n += 1
        return new

    def units(self, state: BadgeState) -> int:
        return sum(1 for _, target in self.ordered if state.n >= target)

    def max_units(self) -> int:
        return len(self.ordered)

    def complete(self, state: BadgeState) -> bool:
        return state.n >= self.top or all(name in state.tiers for name, _ in self.ordered)

    def due(self, state: BadgeState) -> list[tuple[str | None, int]]:
        return [(name, 1) for name, target in self.ordered if state.n >= target and name not in state.tiers]

    def progress(self, state: BadgeState) -> list[Progress]:
        n = state.n
        return [(name, float(n if n < target else target), ftarget) for name, target, ftarget in self.float_targets]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        target = dict(self.ordered)[tier] if tier is not None else 0
        return {"progress": state.n, "target": target, "tier_rank": self.rank.get(tier or "", 0),
                "tiers": len(self.ordered)}


class DistinctBadge(CompiledBadge):
    kind = "distinct"

    def __init__(self, badge: Badge, index: int) -> None:
        super().__init__(badge, index)
        assert isinstance(badge.rule, DistinctRule)
        self.target = badge.rule.count
        self.field = badge.rule.field
        self.read = _field_getter(badge.rule.field)

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        value = self.read(facts)
        if value is None:
            return None  # no value: the event does not qualify for this badge
        key = distinct_key(value)
        if key in state.values:
            return None
        new = state.copy()
        new.values = state.values | {key}
        new.n = len(new.values)
        if new.n >= self.target:
            new.values = frozenset()  # met (distinct is never repeatable): the values are no longer needed
        return new

    def units(self, state: BadgeState) -> int:
        return 1 if state.n >= self.target else 0

    def progress(self, state: BadgeState) -> list[Progress]:
        return [(None, float(min(state.n, self.target)), float(self.target))]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        return {"progress": state.n, "target": self.target, "field": self.field}


class SumBadge(CompiledBadge):
    kind = "sum"

    def __init__(self, badge: Badge, index: int) -> None:
        super().__init__(badge, index)
        assert isinstance(badge.rule, SumRule)
        at_least = badge.rule.at_least
        # Exact arithmetic: float sums depend on the order of addition, awards must not.
        self.target: int | Fraction = at_least if isinstance(at_least, int) else Fraction(at_least)
        self.field = badge.rule.field
        self.read = _field_getter(badge.rule.field)

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        value = self.read(facts)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            # Missing, non-numeric and negative values do not count: a sum that could go down
            # would make "reached at some point" depend on the order of events. Zero changes nothing.
            return None
        new = state.copy()
        total = state.total + (value if isinstance(value, int) else Fraction(value))
        if isinstance(total, Fraction) and total.denominator == 1:
            total = int(total)
        new.total = total
        return new

    def units(self, state: BadgeState) -> int:
        return int(state.total // self.target)

    def progress(self, state: BadgeState) -> list[Progress]:
        if self.repeatable:
            return [(None, float(state.total), float(self.target * (self.units(state) + 1)))]
        return [(None, float(min(state.total, self.target)), float(self.target))]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        target = self.target * (occurrence - state.base) if self.repeatable else self.target
        return {"progress": float(state.total), "target": float(target), "field": self.field}


STREAK_LATE_PERIODS = 60
"""How late (in the streak's periods, days or weeks) an event may still extend a streak.

A streak not yet met keeps the runs of periods it was active in, and only those ending within
``length + freezes + STREAK_LATE_PERIODS`` periods of the newest one: a user's stored state stays
bounded however long they go on without meeting it. Events arriving in any order within that reach
give the same result; an event older than that finds no run to join and counts as a run of its own."""


def _add_to_runs(runs: tuple[tuple[int, int], ...], point: int) -> tuple[tuple[tuple[int, int], ...], int] | None:
    """Insert ``point`` into sorted, disjoint, non-adjacent inclusive runs.

    Returns the new runs and the length of the run now holding ``point`` (the only run that can
    have grown), or None if ``point`` was already covered.
    """
    at = bisect_left(runs, (point, point))
    if at < len(runs) and runs[at][0] == point:
        return None
    before = runs[at - 1] if at > 0 else None
    after = runs[at] if at < len(runs) else None
    if before is not None and before[1] >= point:
        return None
    start = before[0] if before is not None and before[1] == point - 1 else point
    end = after[1] if after is not None and after[0] == point + 1 else point
    head = runs[: at - 1] if start != point else runs[:at]
    tail = runs[at + 1 :] if end != point else runs[at:]
    return (*head, (start, end), *tail), end - start + 1


def _longest_with_freezes(runs: tuple[tuple[int, int], ...], point: int, length: int, freezes: int) -> int:
    """The most active periods, capped at ``length``, in a range around ``point`` skipping <= ``freezes`` periods.

    Only ranges that hold ``point`` can have grown when it arrived, and one that reaches ``length``
    can be trimmed (keeping ``point``, ends active) to span at most ``length + freezes`` periods; so
    the runs within that distance of ``point`` suffice, cut at it. Any range found among them is
    also a range of the full runs, so the answer never exceeds what the runs hold. Capping at
    ``length`` makes the stored maximum the same in any arrival order.
    """
    reach = length + freezes
    low, high = point - reach, point + reach
    start = bisect_left(runs, (low, low))
    if start > 0 and runs[start - 1][1] >= low:
        start -= 1
    near = [(max(a, low), min(b, high)) for a, b in runs[start : bisect_left(runs, (high + 1, high + 1))]]
    best = active = skipped = 0
    first = 0
    for last, (a, b) in enumerate(near):
        active += b - a + 1
        if last > first:
            skipped += a - near[last - 1][1] - 1
        while skipped > freezes:  # drop runs from the left until the range is within budget again
            active -= near[first][1] - near[first][0] + 1
            skipped -= near[first + 1][0] - near[first][1] - 1
            first += 1
        best = max(best, active)
    return min(best, length)


class StreakBadge(CompiledBadge):
    kind = "streak"

    def __init__(self, badge: Badge, index: int) -> None:
        super().__init__(badge, index)
        rule = badge.rule
        assert isinstance(rule, StreakRule)
        self.weeks = rule.weeks is not None
        self.length = rule.length
        self.freezes = rule.freezes

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        point = facts.week if self.weeks else facts.day
        added = _add_to_runs(state.runs, point)
        if added is None:
            return None
        runs, length = added
        if self.freezes:
            length = _longest_with_freezes(runs, point, self.length, self.freezes)
        horizon = runs[-1][1] - self.length - self.freezes - STREAK_LATE_PERIODS
        if runs[0][1] < horizon:
            runs = tuple(run for run in runs if run[1] >= horizon)
        new = state.copy()
        new.n = max(state.n, length)
        # Met (streaks are never repeatable): the runs are no longer needed, only the length reached.
        new.runs = () if new.n >= self.length else runs
        return new

    def units(self, state: BadgeState) -> int:
        return 1 if state.n >= self.length else 0

    def progress(self, state: BadgeState) -> list[Progress]:
        return [(None, float(min(state.n, self.length)), float(self.length))]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        return {"progress": min(state.n, self.length), "target": self.length, "unit": "weeks" if self.weeks else "days"}


class MetaBadge(CompiledBadge):
    """A ``badges`` rule: met when enough of the listed badges are held; moved by awards, not events."""

    kind = "badges"

    def __init__(self, badge: Badge, index: int) -> None:
        super().__init__(badge, index)
        assert isinstance(badge.rule, BadgesRule)
        self.listed = tuple(badge.rule.badges)
        self.needed = badge.rule.needed

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        return None  # never listens to events

    def recount(self, state: BadgeState, held: Mapping[str, BadgeState]) -> BadgeState | None:
        count = 0
        for badge_id in self.listed:
            listed = held.get(badge_id)
            if listed is not None and listed.held:
                count += 1
        if count == state.n:
            return None
        new = state.copy()
        new.n = count
        return new

    def units(self, state: BadgeState) -> int:
        return 1 if state.n >= self.needed else 0

    def progress(self, state: BadgeState) -> list[Progress]:
        return [(None, float(min(state.n, self.needed)), float(self.needed))]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        return {"progress": state.n, "target": self.needed}


def _number_or_none(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        raise EvaluatorError(f"{what} must be a finite number or None, got {value!r}")
    return float(value)


class CustomBadge(CompiledBadge):
    """A custom Python evaluator: it decides; we isolate it, check its answer and keep its memory."""

    kind = "evaluator"

    def __init__(self, badge: Badge, index: int, func: CustomEvaluator) -> None:
        super().__init__(badge, index)
        assert isinstance(badge.rule, EvaluatorRule)
        self.name = badge.rule.name
        self.params = dict(badge.rule.params)
        self.func = func

    def accumulate(self, state: BadgeState, facts: EventFacts) -> BadgeState | None:
        # The evaluator gets a private copy of its memory: whatever it does to it stays there.
        memory = orjson.loads(orjson.dumps(state.memory)) if state.memory is not None else {}
        view = EvaluatorView(self.id, facts.event, facts.local, memory, self.params)
        try:
            decision = self.func(view)
        except Exception as exc:
            raise EvaluatorError(f"evaluator {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(decision, Decision):
            raise EvaluatorError(f"evaluator {self.name!r} returned {type(decision).__name__}, not a Decision")
        progress = _number_or_none(decision.progress, f"evaluator {self.name!r}: progress")
        target = _number_or_none(decision.target, f"evaluator {self.name!r}: target")
        new_memory = state.memory
        if decision.memory is not None:
            try:
                raw = orjson.dumps(dict(decision.memory))
            except (TypeError, ValueError) as exc:
                raise EvaluatorError(f"evaluator {self.name!r}: memory is not JSON: {exc}") from None
            if len(raw) > MAX_MEMORY_BYTES:
                raise EvaluatorError(
                    f"evaluator {self.name!r}: memory is {len(raw)} bytes, the limit is {MAX_MEMORY_BYTES}"
                )
            new_memory = orjson.loads(raw)
        reported = (progress, target) if progress is not None or target is not None else state.reported
        if not decision.award and new_memory == state.memory and reported == state.reported:
            return None
        new = state.copy()
        new.memory = new_memory
        new.reported = reported
        if decision.award:
            new.earned += 1
        return new

    def units(self, state: BadgeState) -> int:
        return state.earned

    def progress(self, state: BadgeState) -> list[Progress]:
        progress, target = state.reported
        if progress is None or target is None:
            return []
        return [(None, progress, target)]

    def award_metadata(self, state: BadgeState, tier: str | None, occurrence: int) -> dict[str, Any]:
        progress, target = state.reported
        return {"progress": progress, "target": target, "evaluator": self.name}


def compile_badge(badge: Badge, index: int, evaluators: Mapping[str, CustomEvaluator]) -> CompiledBadge:
    """The compiled form of one validated badge (``evaluators``: custom evaluators by name)."""
    rule = badge.rule
    if isinstance(rule, CountRule):
        return CountBadge(badge, index)
    if isinstance(rule, TiersRule):
        return TiersBadge(badge, index)
    if isinstance(rule, DistinctRule):
        return DistinctBadge(badge, index)
    if isinstance(rule, SumRule):
        return SumBadge(badge, index)
    if isinstance(rule, StreakRule):
        return StreakBadge(badge, index)
    if isinstance(rule, BadgesRule):
        return MetaBadge(badge, index)
    return CustomBadge(badge, index, evaluators[rule.name])


# --- reading a streak's standing (for explanations; the one place outside StreakBadge that reads its runs) ---


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
    runs = state.runs
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
