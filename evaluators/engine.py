"""The engine: ``(user state, event) -> Evaluation`` — new state, awards, progress, isolated failures.

Pure and deterministic: no I/O, no wall clock, no randomness; time is the event's. The input
state is never mutated (a new :class:`UserState` shares whatever did not change). Duplicates are
recognised before the engine is called (a Kafka redelivery by the worker from input positions, an
upstream resend by :class:`evaluators.runner.EngineRun` or the worker with :mod:`evaluators.resends`),
which then report ``duplicate=True``. One call:

1. no badge listens to the event's type -> ``matched=False``, the state is returned as it was;
2. if the catalog changed since the state was stored, badges whose definition changed get their
   progress reset (awards kept; reported as ``definition_changed``), and badges that depend on
   others (meta-badges, prerequisites) are re-checked;
3. every badge listening to the type accumulates the event if it qualifies (window, ``when``);
4. awards: badges whose rule is met and whose prerequisites are held are granted, and every
   award re-checks the badges that depend on it — meta-badges and badges requiring it — in a
   cascade, in catalog order, until nothing more is due; each award adds its badge's points to
   the user's total, and once the cascade is done every level whose ``at`` the total reached is
   awarded (several at once if need be), and what depends on those levels cascades again;
5. one progress record per (badge, tier) whose progress changed — for a tiered count only the
   lowest tier that moved: every higher tier's progress is the same count (the sink derives those
   rows, :func:`schemas.records.expand_tiers`);
6. nudges: for badges declaring ``nudge`` (never hidden ones), one record per threshold that the
   remaining amount crossed with this event — above it before, at or below it (and above 0) after.
   Derived from the progress before and after, so it needs no state of its own.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from evaluators.base import BadgeFailure
from evaluators.compiled import CompiledBadge
from evaluators.facts import EventFacts
from evaluators.registry import EvaluatorRegistry
from evaluators.rules import MetaBadge, compile_badge
from evaluators.state import BadgeOverlay, BadgeState, UserState
from schemas.catalog import Catalog, Level, Nudge, validate_catalog
from schemas.errors import EvaluatorError
from schemas.events import EventEnvelope
from schemas.records import (
    AwardRecord,
    EventSource,
    NudgeRecord,
    ProgressRecord,
    make_award_id,
    make_nudge_id,
    trusted_record,
)

__all__ = ["BadgeFailure", "Engine", "Evaluation", "ProgressEntry"]

ProgressEntry = tuple[str, "str | None", float, float]
"""(badge_id, tier, progress, target) of one progress record, without its user and time."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one event did to one user: store ``state``; publish awards, progress, nudges; count ``errors``."""

    state: UserState
    awards: tuple[AwardRecord, ...] = ()
    progress: tuple[ProgressRecord, ...] = ()
    # With ``progress_entries=True``: the same progress as (badge_id, tier, progress, target), their
    # time being the event's ``occurred_at``, and ``progress`` empty (the worker keeps these in its
    # latest-progress map and builds a record's bytes only when it sends one).
    progress_entries: tuple[ProgressEntry, ...] = ()
    nudges: tuple[NudgeRecord, ...] = ()
    errors: tuple[BadgeFailure, ...] = ()
    duplicate: bool = False  # set by callers that recognised a duplicate (the engine never sees one)
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
        self._nudging: dict[str, Nudge] = {
            badge.id: badge.nudge for badge in catalog.badges if badge.nudge is not None and not badge.hidden
        }
        # Each (badge, tier)'s thresholds, sorted once here rather than per progress record.
        ladders = catalog.tier_ladders()
        self._thresholds: dict[tuple[str, str | None], tuple[int, ...]] = {
            (badge_id, tier): nudge.thresholds(tier)
            for badge_id, nudge in self._nudging.items()
            for tier in (None, *[name for name, _ in ladders.get(badge_id, ())])
        }
        # By increasing ``at`` (the catalog refuses any other order), each with the state that marks it reached.
        self._levels = tuple(
            (rank, level, hashlib.sha256(f"level {level.id} {level.at}".encode()).hexdigest()[:16])
            for rank, level in enumerate(catalog.levels, 1)
        )

    # --- the one entry point ---------------------------------------------------------------------

    def evaluate(self, state: UserState | None, event: EventEnvelope, *, with_progress: bool = True,
                 source: EventSource | None = None, progress_entries: bool = False) -> Evaluation:
        """Evaluate one event for its user; never raises for a valid envelope (failures go to ``errors``).

        ``with_progress=False`` skips building progress records (replay only needs awards and state);
        state and awards are the same either way. ``progress_entries=True`` gives the progress as
        ``Evaluation.progress_entries`` instead of records. ``source``: where the event was read, the
        evidence every award of this event carries.
        """
        if state is None:
            state = UserState.empty(event.user_id)
        listeners = self._by_type.get(event.type)
        if listeners is None:
            return Evaluation(state=state, matched=False)

        badges = BadgeOverlay(state.badges)
        before: dict[str, BadgeState | None] = {}  # the previous state of every badge replaced
        errors: list[BadgeFailure] = []
        candidates: list[CompiledBadge] = []  # badges that may have an award due
        reconciled = state.catalog_fp != self.fingerprint
        if reconciled:
            candidates.extend(self._reconcile(badges, before, errors))

        facts = EventFacts(event)
        # Hot path: read decoded badges straight from the stored map (one C-level dict.get);
        # only after a reconciliation can a listener's state already sit in this event's changes.
        stored = badges.get if before else state.badges.decoded.get
        undecoded = state.badges.undecoded
        for rule in listeners:
            current = stored(rule.id)
            if current is None and undecoded and rule.id in undecoded:
                current = state.badges.get(rule.id)
            if current is not None and rule.complete(current):
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
                updated = rule.accumulate(current if current is not None else rule.fresh(), facts)
            except EvaluatorError as exc:
                errors.append(BadgeFailure(rule.id, "evaluator", str(exc)))
                continue
            if updated is None:
                continue
            if rule.id not in before:
                before[rule.id] = current
            badges[rule.id] = updated
            if rule.due(updated):
                candidates.append(rule)

        awards: tuple[AwardRecord, ...] = ()
        points = state.points
        if candidates or (reconciled and self._levels):
            awards, points = self._grant(badges, before, candidates, event, points, recheck_levels=reconciled)
        progress: tuple[ProgressRecord, ...] = ()
        entries: tuple[ProgressEntry, ...] = ()
        if before and with_progress:
            if progress_entries:
                entries = tuple(self._progress_changed(badges, before))
            else:
                progress = self._progress(badges, before, event)
        nudges = self._nudges(badges, before, event) if before and self._nudging else ()
        new_state = UserState(event.user_id, state.badges.with_changes(badges.changes), self.fingerprint, points)
        if source is not None and awards:
            awards = self.with_source(awards, source)
        return Evaluation(state=new_state, awards=awards, progress=progress, nudges=nudges, errors=tuple(errors),
                          progress_entries=entries)

    @staticmethod
    def with_source(awards: tuple[AwardRecord, ...], source: EventSource) -> tuple[AwardRecord, ...]:
        """``awards`` carrying ``source`` as their evidence (for a caller that builds the evidence only
        when there are awards: most events award nothing)."""
        return tuple(trusted_record(AwardRecord, {**award.__dict__, "source": source}) for award in awards)

    # --- steps -----------------------------------------------------------------------------------

    def _reconcile(
        self, badges: BadgeOverlay, before: dict[str, BadgeState | None], errors: list[BadgeFailure]
    ) -> Iterable[CompiledBadge]:
        """Bring a state stored under another catalog in line; returns the badges to re-check for awards.

        A badge whose definition changed does not mix old and new progress: its progress restarts
        under the new definition, its awards stay (and count as held). Badges no longer in the
        catalog keep their stored state untouched, so their awards still count if they come back.
        """
        for badge_id in list(badges.base):
            stored = badges.base[badge_id]
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
        badges: BadgeOverlay,
        before: dict[str, BadgeState | None],
        candidates: list[CompiledBadge],
        event: EventEnvelope,
        points: int,
        *,
        recheck_levels: bool = False,
    ) -> tuple[tuple[AwardRecord, ...], int]:
        """Grant whatever is due, cascading to dependents; deterministic order (catalog order, then FIFO).

        Returns the awards and the user's new points total. Levels are checked when the badge
        cascade has settled — and only if the total moved (or ``recheck_levels``, after a catalog
        change) — and the badges that depend on a level reached cascade in turn.
        """
        awards: list[AwardRecord] = []
        pending = deque(sorted({rule.id: rule for rule in candidates}.values(), key=lambda r: r.index))
        queued = {rule.id for rule in pending}
        levels_checked_at = None if recheck_levels else points
        while True:
            if not pending:
                if not self._levels or points == levels_checked_at:
                    break
                levels_checked_at = points
                for dependent in self._reach_levels(badges, points, event, awards):
                    if dependent.id not in queued:
                        queued.add(dependent.id)
                        pending.append(dependent)
                continue
            rule = pending.popleft()
            queued.discard(rule.id)
            current = badges.get(rule.id)
            if isinstance(rule, MetaBadge):
                recounted = rule.recount(current or rule.fresh(), badges)
                if recounted is not None:
                    if rule.id not in before:
                        before[rule.id] = current
                    badges[rule.id] = current = recounted
            if current is None:
                continue
            due = rule.due(current)
            if not due or not all(_held(badges, required) for required in rule.requires):
                continue
            granted = current.copy()
            for tier, occurrence in due:
                worth = rule.points(tier)
                points += worth
                awards.append(self._award(rule, granted, tier, occurrence, event, worth))
                if tier is not None:
                    granted.tiers = (*granted.tiers, tier)
                else:
                    granted.granted = occurrence
            if rule.id not in before:
                before[rule.id] = current
            badges[rule.id] = granted
            for dependent in self._dependents.get(rule.id, ()):
                if dependent.id not in queued:
                    queued.add(dependent.id)
                    pending.append(dependent)
        return tuple(awards), points

    def _reach_levels(
        self, badges: BadgeOverlay, points: int, event: EventEnvelope, awards: list[AwardRecord]
    ) -> list[CompiledBadge]:
        """Award every level ``points`` reached and the user does not hold yet; returns what depends on them."""
        dependents: list[CompiledBadge] = []
        for rank, level, fp in self._levels:
            if level.at > points:
                break
            if _held(badges, level.id):
                continue  # a level once reached is kept: nothing to do, now or ever
            reached = BadgeState(fp)
            reached.granted = 1
            badges[level.id] = reached
            awards.append(self._level_award(rank, level, points, event))
            dependents.extend(self._dependents.get(level.id, ()))
        return dependents

    def _award(
        self, rule: CompiledBadge, state: BadgeState, tier: str | None, occurrence: int, event: EventEnvelope,
        points: int,
    ) -> AwardRecord:
        return self._record(rule.id, tier, occurrence, event, rule.award_metadata(state, tier, occurrence), points)

    def _level_award(self, rank: int, level: Level, points: int, event: EventEnvelope) -> AwardRecord:
        metadata = {"progress": points, "target": level.at, "level": rank, "levels": len(self._levels)}
        return self._record(level.id, None, 1, event, metadata, 0)

    def _record(self, badge_id: str, tier: str | None, occurrence: int, event: EventEnvelope,
                metadata: dict[str, Any], points: int) -> AwardRecord:
        return trusted_record(AwardRecord, {
            "award_id": make_award_id(event.user_id, badge_id, tier, occurrence),
            "user_id": event.user_id,
            "badge_id": badge_id,
            "tier": tier,
            "occurrence": occurrence,
            "awarded_at": event.occurred_at,
            "event_id": event.event_id,
            "catalog_version": self.catalog_version,
            "metadata": metadata,
            "kind": "award",
            "backfill": False,
            "source": None,
            "points": points,
        })

    def _progress(
        self, badges: BadgeOverlay, before: dict[str, BadgeState | None], event: EventEnvelope
    ) -> tuple[ProgressRecord, ...]:
        """One record per (badge, tier) whose progress differs from before this event, in evaluation order."""
        return tuple(trusted_record(ProgressRecord, {
            "user_id": event.user_id,
            "badge_id": badge_id,
            "tier": tier,
            "progress": progress,
            "target": target,
            "updated_at": event.occurred_at,
        }) for badge_id, tier, progress, target in self._progress_changed(badges, before))

    def _progress_changed(self, badges: BadgeOverlay, before: dict[str, BadgeState | None]) -> list[ProgressEntry]:
        """Each (badge, tier) whose progress differs from before this event, in evaluation order."""
        entries: list[ProgressEntry] = []
        rules = self._rules
        for badge_id, previous in before.items():
            rule = rules[badge_id]
            changed = rule.progress(badges[badge_id])
            if previous is not None:
                old = rule.progress(previous)
                if len(old) == 1 == len(changed):  # the common case, without building a set
                    if old[0] == changed[0]:
                        continue
                else:
                    known = set(old)
                    changed = [entry for entry in changed if entry not in known]
            if rule.collapses_tiers:
                # The lowest tier that moved (tiers are by target): the higher ones moved with it.
                changed = changed[:1]
            for tier, progress, target in changed:
                entries.append((badge_id, tier, progress, target))
        return entries

    def _nudges(
        self, badges: BadgeOverlay, before: dict[str, BadgeState | None], event: EventEnvelope
    ) -> tuple[NudgeRecord, ...]:
        """A nudge per threshold t the remaining amount crossed with this event: ``0 < after <= t < before``.

        Progress only grows (a changed definition restarts it: then it counts from 0 again), so each
        (tier, occurrence, threshold) is crossed at most once; a repeatable badge's next occurrence
        is measured against its own target from the same cumulative progress.
        """
        records: list[NudgeRecord] = []
        for badge_id, previous in before.items():
            nudge = self._nudging.get(badge_id)
            if nudge is None:
                continue
            rule = self._rules[badge_id]
            current = badges[badge_id]
            old: dict[str | None, float] = {}
            if previous is not None and previous.fp == current.fp:
                old = {tier: progress for tier, progress, _ in rule.progress(previous)}
            occurrence = current.base + rule.units(current) + 1 if rule.repeatable else 1
            for tier, progress, target in rule.progress(current):
                left = target - progress
                if left <= 0:
                    continue
                was = target - old.get(tier, 0.0)
                thresholds = self._thresholds.get((badge_id, tier))
                for threshold in thresholds if thresholds is not None else nudge.thresholds(tier):
                    if left <= threshold < was:
                        records.append(trusted_record(NudgeRecord, {
                            "nudge_id": make_nudge_id(event.user_id, badge_id, tier, occurrence, threshold),
                            "user_id": event.user_id, "badge_id": badge_id, "tier": tier, "occurrence": occurrence,
                            "threshold": threshold, "remaining": left, "progress": progress, "target": target,
                            "nudged_at": event.occurred_at, "event_id": event.event_id,
                            "catalog_version": self.catalog_version,
                        }))
        return tuple(records)

    # --- reading, for explanations (evaluators.explain) ---------------------------------------------

    def rule(self, badge_id: str) -> CompiledBadge | None:
        """The compiled rule of a catalog badge (None for a level or an unknown id)."""
        return self._rules.get(badge_id)

    def listeners(self, event_type: str) -> tuple[CompiledBadge, ...]:
        """The badges an event of this type can move, in catalog order (what :meth:`evaluate` visits)."""
        return self._by_type.get(event_type, ())


def _held(badges: Mapping[str, BadgeState], badge_id: str) -> bool:
    state = badges.get(badge_id)
    return state is not None and state.held
