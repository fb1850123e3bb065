"""The engine over a sequence of events, each user's state carried from one event to the next.

One implementation of the events-to-engine loop, used by replay, offline ``evaluate``, ``up`` and
the tests (the live worker keeps its states in the Faust table and calls the engine itself), and
the one place an engine gets the evaluators installed packages register (entry points).
"""

from __future__ import annotations

from evaluators.engine import Engine, Evaluation
from evaluators.registry import EvaluatorRegistry
from evaluators.resends import ResendWindow, SeenIds, event_digest
from evaluators.state import UserState
from schemas.catalog import Catalog
from schemas.events import EventEnvelope, parse_event
from schemas.records import EventSource


def plugin_engine(catalog: Catalog) -> Engine:
    """The engine for ``catalog`` with every evaluator of the entry-point group, as the worker runs it."""
    return Engine(catalog, EvaluatorRegistry.from_entry_points())


class EngineRun:
    """Events in order through one engine; ``states`` holds every evaluated user's latest state.

    An upstream resend (an event id the user already had within ``window`` of record time) changes
    nothing and is reported as ``duplicate``. Record times are the Kafka record timestamps (replay);
    a file has none, and every event of it counts as the same moment (0), so every resend in it is
    absorbed. ``with_progress=False`` skips building progress records (awards and states are the same).
    """

    def __init__(self, engine: Engine, *, with_progress: bool = True, window: ResendWindow | None = None) -> None:
        self.engine = engine
        self.with_progress = with_progress
        self.window = window if window is not None else ResendWindow()
        self.states: dict[str, UserState] = {}
        self.seen: dict[str, SeenIds] = {}

    def read(self, raw: bytes | None, source: EventSource | None = None,
             record_ms: int = 0) -> tuple[EventEnvelope, Evaluation]:
        """Parse and check one raw event (raises :class:`schemas.errors.InvalidEventError`), then evaluate it."""
        event = parse_event(raw, self.engine.catalog)
        return event, self.evaluate(event, source, record_ms)

    def evaluate(self, event: EventEnvelope, source: EventSource | None = None, record_ms: int = 0) -> Evaluation:
        """Evaluate ``event`` against its user's state and keep the new state (a resend or an event
        no badge listens to changes nothing). ``source``: where it was read (award evidence);
        ``record_ms``: its record time."""
        user_id = event.user_id
        digest = event_digest(event.event_id)
        seen = self.seen.get(user_id)
        state = self.states.get(user_id)
        if seen is not None and seen.resent(self.window, digest, record_ms):
            return Evaluation(state=state if state is not None else UserState.empty(user_id), duplicate=True)
        evaluation = self.engine.evaluate(state, event, with_progress=self.with_progress, source=source)
        if evaluation.matched:
            self.states[user_id] = evaluation.state
            # ``is not None``, not ``or``: the truth of a SeenIds is its length, a sum over its chunks.
            self.seen[user_id] = (seen if seen is not None else SeenIds()).with_id(self.window, digest, record_ms)[0]
        return evaluation
