"""The engine's interfaces in one place: what a custom evaluator sees and returns, and how failures are reported.

A custom evaluator is a plain function ``(view: EvaluatorView) -> Decision``. It sees only its
own badge's memory (a private, JSON-able dict), the event and the event's local time — never the
user's whole state — and answers with a :class:`Decision` that carries the updated copy of that
memory. The :func:`evaluator` decorator only marks a function; registration (and every check)
happens in :class:`evaluators.registry.EvaluatorRegistry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from schemas.events import EventEnvelope

EVALUATOR_MARK = "__badgestream_evaluator__"
"""Attribute the decorator sets on a function: the name it is to be registered under."""

MAX_MEMORY_BYTES = 4096
"""Largest serialised memory a custom evaluator may keep per (user, badge)."""

FailureKind = Literal["cel", "evaluator", "definition_changed", "state"]


@dataclass(frozen=True, slots=True)
class EvaluatorView:
    """Everything a custom evaluator may read about one event for one badge.

    ``memory`` is a private copy: mutating it changes nothing; return the new memory in the
    :class:`Decision`. ``params`` are the rule's ``params`` from the catalog.
    """

    badge_id: str
    event: EventEnvelope
    local: datetime
    memory: Mapping[str, Any]
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """A custom evaluator's answer for one event.

    ``award`` grants the badge (one more occurrence if it is repeatable, else at most once);
    ``progress``/``target`` feed the progress record (None: no progress to report);
    ``memory`` replaces the badge's memory (None: keep it as it was).
    """

    award: bool = False
    progress: float | None = None
    target: float | None = None
    memory: Mapping[str, Any] | None = None


CustomEvaluator = Callable[[EvaluatorView], Decision]
F = TypeVar("F", bound=Callable[..., Any])


def evaluator(name: str) -> Callable[[F], F]:
    """Mark ``func`` as the custom evaluator ``name``; nothing is registered until a registry takes it."""

    def mark(func: F) -> F:
        setattr(func, EVALUATOR_MARK, name)
        return func

    return mark


@dataclass(frozen=True, slots=True)
class BadgeFailure:
    """One isolated problem while evaluating one badge; the event's other badges were still evaluated.

    ``kind``: ``cel`` (the ``when`` expression failed: the event did not qualify), ``evaluator``
    (a custom evaluator raised or answered nonsense: nothing changed for that badge),
    ``definition_changed`` (the badge's definition differs from the stored state's: its progress
    was reset, awards kept), ``state`` (the stored state of the badge could not be used and was reset).
    """

    badge_id: str
    kind: FailureKind
    message: str
