"""The built-in rule kinds, compiled from catalog badges: how each accumulates progress and when it is met.

A compiled rule is pure: ``accumulate`` takes a :class:`BadgeState` and the event's facts and
returns a *new* state (or None when nothing changed); ``units`` says how many awards the rule has
earned from that state. Every kind accumulates in a way that does not depend on the order of a
user's events — a count, an exact sum of non-negative values, a set of distinct values, the set of
active days or weeks — so the award set is the same in any arrival order. ``points``
says what each award of the badge is worth. The base class is :mod:`evaluators.compiled`; streaks,
the one kind with machinery of its own, are :mod:`evaluators.streaks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from hashlib import blake2b
from typing import Any

import orjson

from evaluators.base import MAX_MEMORY_BYTES, CustomEvaluator, Decision, EvaluatorView
from evaluators.compiled import CompiledBadge, Progress, field_getter
from evaluators.facts import EventFacts
from evaluators.state import BadgeState
from evaluators.streaks import StreakBadge
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



def distinct_key(value: Any) -> str:
    """A canonical text for a JSON value: 1 and 1.0 are one number, "1" is another value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) > MAX_DISTINCT_KEY_CHARS:
        return "#" + blake2b(text.encode(), digest_size=16).hexdigest()
    return text


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
        self.read = field_getter(badge.rule.field)

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
        self.read = field_getter(badge.rule.field)

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
