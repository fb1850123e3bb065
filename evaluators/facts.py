"""What the rules ask of one event, computed at most once per event: local date, ISO week, CEL variables.

The engine evaluates several badges per event; each would otherwise convert the time zone and
rebuild the same dictionaries again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.events import EventEnvelope, zone


class EventFacts:
    """Derived, read-only facts about one event (all times in the event's own time zone)."""

    __slots__ = ("_event_vars", "_local_vars", "day", "event", "local")

    def __init__(self, event: EventEnvelope) -> None:
        self.event = event
        self.local: datetime = event.occurred_at.astimezone(zone(event.tz))
        # Proleptic ordinal of the local date: consecutive calendar days differ by one.
        self.day: int = self.local.toordinal()
        self._local_vars: dict[str, Any] | None = None
        self._event_vars: dict[str, Any] | None = None

    @property
    def week(self) -> int:
        """Ordinal of the local ISO week: day 1 (0001-01-01) is a Monday, so weeks run Monday to Sunday.

        Consecutive ISO weeks differ by one, across years with 52 or 53 weeks alike.
        """
        return (self.day - 1) // 7

    @property
    def local_vars(self) -> dict[str, Any]:
        """The CEL variable ``local``: date "YYYY-MM-DD", weekday 1=Monday..7=Sunday, hour, month, year."""
        local_vars = self._local_vars
        if local_vars is None:
            local = self.local
            local_vars = {
                "date": local.date().isoformat(),
                "weekday": local.isoweekday(),
                "hour": local.hour,
                "month": local.month,
                "year": local.year,
            }
            self._local_vars = local_vars
        return local_vars

    @property
    def event_vars(self) -> dict[str, Any]:
        """The CEL variable ``event``: the envelope's fields, ``occurred_at`` as a CEL timestamp."""
        event_vars = self._event_vars
        if event_vars is None:
            event = self.event
            event_vars = {
                "event_id": event.event_id,
                "type": event.type,
                "user_id": event.user_id,
                "occurred_at": event.occurred_at,
                "tz": event.tz,
                "data": event.data,
            }
            self._event_vars = event_vars
        return event_vars
