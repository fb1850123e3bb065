"""Custom evaluators shipped with badgestream, registered through the ``builtin`` entry point.

They show the shape every custom evaluator has: a pure function of an :class:`EvaluatorView`
(this badge's memory, the event, its local time) returning a :class:`Decision`.
"""

from __future__ import annotations

from evaluators.base import Decision, EvaluatorView, evaluator

SECONDS_PER_DAY = 86_400


@evaluator("comeback")
def comeback(view: EvaluatorView) -> Decision:
    """Awarded when a user logs in after at least ``params.days`` (default 14) days without a login.

    Memory: ``{"last": <Unix seconds of the latest login seen>}``. Time is the events' own: an
    event older than the latest login seen (a late arrival) changes nothing and awards nothing.
    """
    days = view.params.get("days", 14)
    if isinstance(days, bool) or not isinstance(days, int | float) or days <= 0:
        raise ValueError(f"params.days must be a positive number, got {days!r}")
    now = int(view.event.occurred_at.timestamp())
    last = view.memory.get("last")
    if not isinstance(last, int):
        return Decision(progress=0, target=days, memory={"last": now})
    if now <= last:
        return Decision()
    away_days = (now - last) / SECONDS_PER_DAY
    return Decision(
        award=away_days >= days,
        progress=min(float(int(away_days)), float(days)),
        target=days,
        memory={"last": now},
    )
