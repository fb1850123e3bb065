"""The engine over a sequence of events, each user's state carried from one event to the next.

One implementation of the events-to-engine loop, used by replay, offline ``evaluate``, ``up`` and
the tests (the live worker keeps its states in the Faust table and calls the engine itself), and
the one place an engine gets the evaluators installed packages register (entry points).
"""

from __future__ import annotations

from evaluators.engine import Engine, Evaluation
from evaluators.registry import EvaluatorRegistry
from evaluators.state import UserState
from schemas.catalog import Catalog
from schemas.events import EventEnvelope, parse_event
from schemas.records import EventSource


def plugin_engine(catalog: Catalog) -> Engine:
    """The engine for ``catalog`` with every evaluator of the entry-point group, as the worker runs it."""
    return Engine(catalog, EvaluatorRegistry.from_entry_points())


class EngineRun:
    """Events in order through one engine; ``states`` holds every evaluated user's latest state.

    ``with_progress=False`` skips building progress records (awards and states are the same).
    """

    def __init__(self, engine: Engine, *, with_progress: bool = True) -> None:
        self.engine = engine
        self.with_progress = with_progress
        self.states: dict[str, UserState] = {}

    def read(self, raw: bytes | None, source: EventSource | None = None) -> tuple[EventEnvelope, Evaluation]:
        """Parse and check one raw event (raises :class:`schemas.errors.InvalidEventError`), then evaluate it."""
        event = parse_event(raw, self.engine.catalog)
        return event, self.evaluate(event, source)

    def evaluate(self, event: EventEnvelope, source: EventSource | None = None) -> Evaluation:
        """Evaluate ``event`` against its user's state and keep the new state (a duplicate or an
        event no badge listens to changes nothing). ``source``: where it was read (award evidence)."""
        evaluation = self.engine.evaluate(self.states.get(event.user_id), event, with_progress=self.with_progress,
                                          source=source)
        if evaluation.matched and not evaluation.duplicate:
            self.states[event.user_id] = evaluation.state
        return evaluation
