"""The engine: ``(user state, event) -> Evaluation`` — new state, awards, progress, isolated failures.

Pure and deterministic: no I/O, no wall clock, no randomness; time is the event's. The input
state is never mutated (a new :class:`UserState` shares whatever did not change). One call:

1. no badge listens to the event's type -> ``matched=False``, the state is returned as it was;
2. the event id is among the user's recent ones -> ``duplicate=True``, nothing changes;
3. if the catalog changed since the state was stored, badges whose definition changed get their
   progress reset (awards kept; reported as ``definition_changed``), and badges that depend on
   others (meta-badges, prerequisites) are re-checked;
4. every badge listening to the type accumulates the event if it qualifies (window, ``when``);
5. awards: badges whose rule is met and whose prerequisites are held are granted, and every
   award re-checks the badges that depend on it — meta-badges and badges requiring it — in a
   cascade, in catalog order, until nothing more is due;
6. one progress record per (badge, tier) whose progress changed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from evaluators.base import BadgeFailure
from evaluators.facts import EventFacts
from evaluators.registry import EvaluatorRegistry
from evaluators.rules import CompiledBadge, MetaBadge, compile_badge
from evaluators.state import BadgeState, UserState, event_digest
from schemas.catalog import Catalog, validate_catalog
from schemas.errors import EvaluatorError
from schemas.events import EventEnvelope
from schemas.records import AwardRecord, ProgressRecord, make_award_id

__all__ = ["BadgeFailure", "Engine", "Evaluation"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one event did to one user. Store ``state``; publish ``awards`` and ``progress``; count ``errors``."""

    state: UserState
    awards: tuple[AwardRecord, ...] = ()
    progress: tuple[ProgressRecord, ...] = ()
    errors: tuple[BadgeFailure, ...] = ()
    duplicate: bool = False
    matched: bool = True


class Engine:
    """The badge engine for one catalog; build once at start-up, call :meth:`evaluate` per event."""

    def __init__(self, catalog: Catalog, registry: EvaluatorRegistry | None = None) -> None:
        """Validate the catalog against the registry, compile every ``when`` once and index badges by event type.

        Without a registry, the built-in evaluators (``evaluators.custom``) are available.
        Raises :class:`schemas.errors.CatalogError` naming badge, field and line.
        """
        self.registry = registry if registry is not None else EvaluatorRegistry.builtin()
        validate_catalog(catalog, self.registry)
        self.catalog = catalog
        self.catalog_version = catalog.catalog_version
        self.fingerprint = catalog.fingerprint
        evaluators = {name: self.registry[name] for name in self.registry}
        self._rules: dict[str, CompiledBadge] = {
            badge.id: compile_badge(badge, index, evaluators) for index, badge in enumerate(catalog.badges)
        }
        by_type: dict[str, list[CompiledBadge]] = {}
        dependents: dict[str, list[CompiledBadge]] = {}
        for rule in self._rules.values():
            for event_type in rule.badge.on:
                by_type.setdefault(event_type, []).append(rule)
            watched = list(rule.requires) + (list(rule.listed) if isinstance(rule, MetaBadge) else [])
            for badge_id in dict.fromkeys(watched):
                dependents.setdefault(badge_id, []).append(rule)
        self._by_type = {t: tuple(rules) for t, rules in by_type.items()}
        self._dependents = {b: tuple(rules) for b, rules in dependents.items()}
        # Re-checked after a catalog change: their condition may hold now without any new event.
        self._standing = tuple(r for r in self._rules.values() if isinstance(r, MetaBadge) or r.requires)

    def listens_to(self, event_type: str) -> bool:
        return event_type in self._by_type

    # --- the one entry point ---------------------------------------------------------------------

    def evaluate(self, state: UserState | None, event: EventEnvelope) -> Evaluation:
        """Evaluate one event for its user; never raises for a valid envelope (failures go to ``errors``)."""
        if state is None:
            state = UserState.empty(event.user_id)
        listeners = self._by_type.get(event.type)
        if listeners is None:
            return Evaluation(state=state, matched=False)
        digest = event_digest(event.event_id)
        if state.seen(digest):
            return Evaluation(state=state, duplicate=True)

        badges = dict(state.badges)
        before: dict[str, BadgeState | None] = {}  # the previous state of every badge replaced
        errors: list[BadgeFailure] = []
        touched: list[CompiledBadge] = []
        if state.catalog_fp != self.fingerprint:
            touched.extend(self._reconcile(badges, before, errors))

        facts = EventFacts(event)
        for rule in listeners:
            current = badges.get(rule.id)
            if current is None:
                current = rule.fresh()
            elif rule.complete(current):
                continue
            if rule.has_window and not rule.in_window(facts):
                continue
            if rule.when is not None:
                try:
                    if not rule.when.matches(facts):
                        continue
                except EvaluatorError as exc:
                    errors.append(BadgeFailure(rule.id, "cel", str(exc)))
                    continue
            try:
                updated = rule.accumulate(current, facts)
            except EvaluatorError as exc:
                errors.append(BadgeFailure(rule.id, "evaluator", str(exc)))
                continue
            if updated is None:
                continue
            if rule.id not in before:
                before[rule.id] = badges.get(rule.id)
            badges[rule.id] = updated
            touched.append(rule)

        awards = self._grant(badges, before, touched, event) if touched else []
        progress = self._progress(badges, before, event) if before else ()
        new_state = UserState(event.user_id, badges, UserState.remember(state.recent, digest), self.fingerprint)
        return Evaluation(state=new_state, awards=tuple(awards), progress=progress, errors=tuple(errors))

    # --- steps -----------------------------------------------------------------------------------

    def _reconcile(
        self, badges: dict[str, BadgeState], before: dict[str, BadgeState | None], errors: list[BadgeFailure]
    ) -> Iterable[CompiledBadge]:
        """Bring a state stored under another catalog in line; returns the badges to re-check for awards.

        A badge whose definition changed does not mix old and new progress: its progress restarts
        under the new definition, its awards stay (and count as held). Badges no longer in the
        catalog keep their stored state untouched, so their awards still count if they come back.
        """
        for badge_id, stored in list(badges.items()):
            rule = self._rules.get(badge_id)
            if rule is None or stored.fp == rule.fp:
                continue
            before.setdefault(badge_id, stored)
            badges[badge_id] = stored.reset(rule.fp)
            errors.append(
                BadgeFailure(
                    badge_id,
                    "definition_changed",
                    f"definition changed since this user's progress was stored ({stored.fp} -> {rule.fp}): "
                    f"progress restarted, {stored.granted + len(stored.tiers)} award(s) kept",
                )
            )
        return self._standing

    def _grant(
        self,
        badges: dict[str, BadgeState],
        before: dict[str, BadgeState | None],
        touched: list[CompiledBadge],
        event: EventEnvelope,
    ) -> list[AwardRecord]:
        """Grant whatever is due, cascading to dependents; deterministic order (catalog order, then FIFO)."""
        awards: list[AwardRecord] = []
        pending = deque(sorted({rule.id: rule for rule in touched}.values(), key=lambda r: r.index))
        queued = {rule.id for rule in pending}
        while pending:
            rule = pending.popleft()
            queued.discard(rule.id)
            current = badges.get(rule.id)
            if isinstance(rule, MetaBadge):
                recounted = rule.recount(current or rule.fresh(), badges)
                if recounted is not None:
                    before.setdefault(rule.id, current)
                    badges[rule.id] = current = recounted
            if current is None:
                continue
            due = rule.due(current)
            if not due or not all(_held(badges, required) for required in rule.requires):
                continue
            granted = current.copy()
            for tier, occurrence in due:
                awards.append(self._award(rule, granted, tier, occurrence, event))
                if tier is not None:
                    granted.tiers = (*granted.tiers, tier)
                else:
                    granted.granted = occurrence
            before.setdefault(rule.id, current)
            badges[rule.id] = granted
            for dependent in self._dependents.get(rule.id, ()):
                if dependent.id not in queued:
                    queued.add(dependent.id)
                    pending.append(dependent)
        return awards

    def _award(
        self, rule: CompiledBadge, state: BadgeState, tier: str | None, occurrence: int, event: EventEnvelope
    ) -> AwardRecord:
        return AwardRecord(
            award_id=make_award_id(event.user_id, rule.id, tier, occurrence),
            user_id=event.user_id,
            badge_id=rule.id,
            tier=tier,
            occurrence=occurrence,
            awarded_at=event.occurred_at,
            event_id=event.event_id,
            catalog_version=self.catalog_version,
            metadata=rule.award_metadata(state, tier, occurrence),
        )

    def _progress(
        self, badges: dict[str, BadgeState], before: dict[str, BadgeState | None], event: EventEnvelope
    ) -> tuple[ProgressRecord, ...]:
        records: list[ProgressRecord] = []
        changed = sorted((rule for bid in before if (rule := self._rules.get(bid)) is not None), key=lambda r: r.index)
        for rule in changed:
            previous = before[rule.id]
            old = {tier: (p, t) for tier, p, t in rule.progress(previous)} if previous is not None else {}
            for tier, progress, target in rule.progress(badges[rule.id]):
                if old.get(tier) != (progress, target):
                    records.append(
                        ProgressRecord(
                            user_id=event.user_id,
                            badge_id=rule.id,
                            tier=tier,
                            progress=progress,
                            target=target,
                            updated_at=event.occurred_at,
                        )
                    )
        return tuple(records)


def _held(badges: dict[str, BadgeState], badge_id: str) -> bool:
    state = badges.get(badge_id)
    return state is not None and state.held
