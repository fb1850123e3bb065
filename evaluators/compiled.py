"""What every compiled rule kind is: a catalog badge ready to evaluate (:class:`CompiledBadge`).

The kinds themselves are in :mod:`evaluators.rules` (counts, tiers, distinct values, sums,
meta-badges, custom evaluators) and :mod:`evaluators.streaks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluators.expressions import Expression
from evaluators.facts import EventFacts
from evaluators.state import BadgeState
from schemas.catalog import Badge

Progress = tuple[str | None, float, float]  # (tier, progress, target)
FieldGetter = Callable[[EventFacts], Any]


def field_getter(path: str) -> FieldGetter:
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
