"""Why, why not and what if: one badge explained for one user, and one event dry-run, from engine state.

Pure like the rest of ``evaluators/``: the caller hands in the user's state, what it knows of the
awards (the award database's rows, or an offline run's records) and the user's local date; nothing
here reads a clock, a database or the network. The answers are plain JSON-able dicts (docs/api.md
"Explain" and "What-if" name their fields).

- :func:`explain_badge`: per tier and occurrence, held (with the award's evidence) or not, and for
  what is not held every requirement and where it stands. Without the engine state (``state=None``)
  it explains from the awards and the published progress alone, and says what could not be known.
- :func:`what_if`: calls :meth:`Engine.evaluate` itself on the given state and keeps nothing, so
  what it predicts is what the engine does with that event next; the rest explains the decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from evaluators.compiled import CompiledBadge
from evaluators.engine import Engine, Evaluation
from evaluators.expressions import Expression
from evaluators.facts import EventFacts
from evaluators.resends import ResendWindow, SeenIds, event_digest
from evaluators.rules import CustomBadge, DistinctBadge, MetaBadge, SumBadge, TiersBadge
from evaluators.state import BadgeState, UserState
from evaluators.streaks import StreakBadge, streak_standing
from schemas.catalog import Badge, Level
from schemas.catalog.cel import top_level_operands
from schemas.errors import EvaluatorError
from schemas.events import EventEnvelope
from schemas.records import AwardRecord

StateSource = Literal["worker", "offline", "database", "given"]
"""Where the engine state explained came from: the worker's table, an offline run, only the award
database (awards and published progress; rule internals unknown), or the caller (tests)."""


@dataclass(frozen=True, slots=True)
class AwardEvidence:
    """What is known of one held award: the deciding event and where it was read (None: not known)."""

    badge_id: str
    tier: str | None
    occurrence: int
    event_id: str
    awarded_at: str | None = None
    award_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    points: int = 0

    @classmethod
    def of(cls, award: AwardRecord) -> AwardEvidence:
        source = award.source
        return cls(award.badge_id, award.tier, award.occurrence, award.event_id, award.awarded_at.isoformat(),
                   award.award_id, source.topic if source else None, source.partition if source else None,
                   source.offset if source else None, award.points)

    def to_json(self) -> dict[str, Any]:
        return {"award_id": self.award_id, "event_id": self.event_id, "awarded_at": self.awarded_at,
                "topic": self.topic, "partition": self.partition, "offset": self.offset, "points": self.points}


@dataclass(frozen=True, slots=True)
class ReportedProgress:
    """A published progress row (``user_badge_progress``): what is known of a rule without the engine state."""

    tier: str | None
    progress: float
    target: float
    updated_at: str | None = None


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def state_from_awards(engine: Engine, user_id: str, awards: Iterable[AwardEvidence]) -> UserState:
    """A user state holding exactly these awards and no rule progress, with the points they granted.

    What can be known of a user from the award database: enough for prerequisites, meta-badges,
    levels and points; every rule's progress starts from zero (callers say so).
    """
    badges: dict[str, BadgeState] = {}
    points = 0
    for award in awards:
        rule = engine.rule(award.badge_id)
        state = badges.get(award.badge_id)
        if state is None:
            state = badges[award.badge_id] = BadgeState(rule.fp if rule is not None else "level")
        if award.tier is not None:
            state.tiers = (*state.tiers, award.tier)
        else:
            state.granted = max(state.granted, award.occurrence)
        points += award.points
    return UserState(user_id, badges, catalog_fp=engine.fingerprint, points=points)


# --- explain one badge --------------------------------------------------------------------------


def explain_badge(
    engine: Engine,
    user_id: str,
    badge_id: str,
    state: UserState | None,
    *,
    evidence: Sequence[AwardEvidence] = (),
    reported: Sequence[ReportedProgress] = (),
    today: date | None = None,
    tz: str = "UTC",
    last_event: Mapping[str, Any] | None = None,
    source: StateSource = "given",
) -> dict[str, Any] | None:
    """Everything that decides ``badge_id`` (a badge or a level) for the user; None when the catalog has no such id.

    ``state``: the user's engine state (None: unknown, explained from ``evidence`` and ``reported``);
    ``evidence``: the user's held awards, every badge (for prerequisites and components when the
    state is unknown, and the evidence of this badge's awards); ``today``: the user's local date, for
    the window (None: its status is not told); ``last_event``: the last event known to have moved it.
    """
    badge = engine.catalog.badges_by_id.get(badge_id)
    level = engine.catalog.levels_by_id.get(badge_id)
    if badge is None and level is None:
        return None
    unknown: list[str] = []
    known = state is not None
    if state is None:
        state = state_from_awards(engine, user_id, evidence)
        unknown.append("engine state: explained from the award database (awards and published progress); "
                       "rule internals such as streak runs are not known")
    mine = {(e.tier, e.occurrence): e for e in evidence if e.badge_id == badge_id}
    if level is not None:
        body = _explain_level(level, state, mine)
    else:
        assert badge is not None
        rule = engine.rule(badge_id)
        assert rule is not None
        body = _explain_rule(engine, badge, rule, state, mine, known, reported, today, tz, unknown)
    for part in body["parts"]:
        if part["held"] and part["award"] is None:
            unknown.append(f"the evidence of {_part_name(part)}: held in the engine state, no award row seen yet")
    last_event = _last_event(last_event, reported, mine.values())
    if last_event is not None and last_event.get("event_id") is None:
        unknown.append("the id of the last event that moved it: progress records carry only its time")
    return {
        "user_id": user_id,
        "badge_id": badge_id,
        **body,
        "last_event": dict(last_event) if last_event is not None else None,
        "state_source": source if known else "database",
        "unknown": unknown,
    }


def _instant(text: Any) -> datetime:
    """An ISO time from an answer (offsets differ between rows, so text does not compare); unknown: the earliest."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _last_event(given: Mapping[str, Any] | None, reported: Sequence[ReportedProgress],
                awards: Iterable[AwardEvidence]) -> Mapping[str, Any] | None:
    """The last event known to have moved the badge: the caller's, else the newer of the newest progress
    row (its time only) and the newest award (its event id too)."""
    if given is not None and given.get("event_id") is not None:
        return given
    candidates: list[Mapping[str, Any]] = [given] if given is not None else []
    candidates += [{"at": row.updated_at, "event_id": None, "what": "progress"} for row in reported
                   if row.updated_at is not None]
    candidates += [{"at": award.awarded_at, "event_id": award.event_id, "what": "award"} for award in awards
                   if award.awarded_at is not None]
    if not candidates:
        return None
    # The newest; on a tie an award, which names its event.
    return max(candidates, key=lambda moved: (_instant(moved["at"]), moved["event_id"] is not None))


def _part_name(part: Mapping[str, Any]) -> str:
    if part["tier"] is not None:
        return f"tier {part['tier']}"
    return f"occurrence {part['occurrence']}"


def _held_part(tier: str | None, occurrence: int, evidence: Mapping[tuple[str | None, int], AwardEvidence],
               points: int) -> dict[str, Any]:
    found = evidence.get((tier, occurrence))
    return {"tier": tier, "occurrence": occurrence, "held": True, "points": points,
            "award": found.to_json() if found is not None else None}


def _open_part(tier: str | None, occurrence: int, progress: float, target: float, points: int) -> dict[str, Any]:
    return {"tier": tier, "occurrence": occurrence, "held": False, "points": points,
            "progress": _number(progress), "target": _number(target),
            "remaining": _number(max(0.0, target - progress))}


def _explain_level(level: Level, state: UserState, evidence: Mapping[tuple[str | None, int], AwardEvidence],
                   ) -> dict[str, Any]:
    held = state.held(level.id)
    part = (_held_part(None, 1, evidence, 0) if held else _open_part(None, 1, min(state.points, level.at), level.at, 0))
    missing = [] if held else [f"{level.at - state.points} more points (you have {state.points}, "
                               f"{level.display_name} is at {level.at})"]
    return {
        "name": level.display_name, "description": level.description, "kind": "level", "hidden": False,
        "repeatable": False, "held": held, "complete": held, "parts": [part],
        "requirements": None if held else {"rule": {"kind": "level", "points": state.points, "at": level.at}},
        "missing": missing,
    }


def _explain_rule(
    engine: Engine, badge: Badge, rule: CompiledBadge, state: UserState,
    evidence: Mapping[tuple[str | None, int], AwardEvidence], known: bool, reported: Sequence[ReportedProgress],
    today: date | None, tz: str, unknown: list[str],
) -> dict[str, Any]:
    current: BadgeState = state.badges.get(badge.id) or rule.fresh()
    if known:
        progress = {tier: (value, target) for tier, value, target in rule.progress(current)}
    else:
        progress = {row.tier: (row.progress, row.target) for row in reported}
    parts: list[dict[str, Any]] = []
    if isinstance(rule, TiersBadge):
        for name, target in rule.ordered:
            if name in current.tiers:
                parts.append(_held_part(name, 1, evidence, rule.points(name)))
            else:
                value, _ = progress.get(name, (0.0, float(target)))
                parts.append(_open_part(name, 1, value, float(target), rule.points(name)))
    else:
        for occurrence in range(1, current.granted + 1):
            parts.append(_held_part(None, occurrence, evidence, rule.points(None)))
        if rule.repeatable or current.granted == 0:
            goal = float(badge.rule.target) * (current.granted + 1) if badge.rule.target is not None else 0.0
            value, goal = progress.get(None, (0.0, goal))
            if known and rule.repeatable and badge.rule.target is not None:
                # The rule reports towards its next unit; the next *award* may be an earlier one
                # (met, waiting for a prerequisite). Occurrences under an older definition count as ``base``.
                goal = float(badge.rule.target) * (current.granted + 1 - current.base)
            parts.append(_open_part(None, current.granted + 1, value, goal, rule.points(None)))
    held = any(part["held"] for part in parts)
    complete = rule.complete(current) and all(part["held"] for part in parts)
    requirements = None
    missing: list[str] = []
    if not complete:
        requirements, missing = _requirements(engine, badge, rule, state, current, parts, known, today, tz, unknown)
    return {
        "name": badge.display_name, "description": badge.description, "kind": rule.kind, "hidden": badge.hidden,
        "repeatable": badge.repeatable, "held": held, "complete": complete, "parts": parts,
        "requirements": requirements, "missing": missing,
    }


def window_status(badge: Badge, today: date | None) -> str | None:
    """``not_yet_open``, ``open`` or ``closed`` for the badge's window on the local date ``today`` (None: unknown)."""
    window = badge.window
    if window is None or today is None:
        return None
    if window.from_ is not None and today < window.from_:
        return "not_yet_open"
    if window.until is not None and today >= window.until:
        return "closed"
    return "open"


def _names(engine: Engine, ids: Iterable[str]) -> list[dict[str, str]]:
    out = []
    for badge_id in ids:
        badge = engine.catalog.badges_by_id.get(badge_id)
        level = engine.catalog.levels_by_id.get(badge_id)
        name = badge.display_name if badge is not None else level.display_name if level is not None else badge_id
        out.append({"badge_id": badge_id, "name": name})
    return out


def _words(name: str) -> str:
    """An event type or field path as words: ``quiz_completed`` -> "quiz completed", ``data.quiz_id`` -> "quiz id"."""
    return name.removeprefix("data.").replace("_", " ").replace(".", " ")


def _requirements(
    engine: Engine, badge: Badge, rule: CompiledBadge, state: UserState, current: BadgeState,
    parts: list[dict[str, Any]], known: bool, today: date | None, tz: str, unknown: list[str],
) -> tuple[dict[str, Any], list[str]]:
    missing: list[str] = []
    waiting = next((part for part in parts if not part["held"]), None)
    rule_info: dict[str, Any] = {"kind": rule.kind}
    if waiting is not None:
        rule_info.update(progress=waiting["progress"], target=waiting["target"], remaining=waiting["remaining"])
    what = " or ".join(_words(t) for t in badge.on) + " events"
    if isinstance(rule, StreakBadge):
        unit = "weeks" if rule.weeks else "days"
        if known:
            standing = streak_standing(rule, current)
            rule_info.update(standing)
            if standing["missing"]:
                periods = unit if standing["missing"] != 1 else unit[:-1]
                missing.append(f"{standing['missing']} more {periods} in a row with {what} "
                               f"(current run {standing['current']} of {rule.length}"
                               + (f", {standing['freezes_used']} of {rule.freezes} freezes used" if rule.freezes
                                  else "") + ")")
        else:
            rule_info.update(unit=unit, length=rule.length, freezes=rule.freezes)
            unknown.append("the streak's current run, best run and freezes used (engine state needed)")
            if waiting is not None and waiting["remaining"]:
                missing.append(f"a run of {rule.length} {unit} with {what} (best so far {waiting['progress']})")
    elif isinstance(rule, MetaBadge):
        held_ids = [b for b in rule.listed if state.held(b)]
        missing_ids = [b for b in rule.listed if not state.held(b)]
        rule_info["components"] = {"needed": rule.needed, "held": _names(engine, held_ids),
                                   "missing": _names(engine, missing_ids)}
        if len(held_ids) < rule.needed:
            names = ", ".join(entry["name"] for entry in _names(engine, missing_ids))
            left = rule.needed - len(held_ids)
            missing.append(f"hold {left} more of: {names}" if left < len(missing_ids) else f"hold {names}")
    elif isinstance(rule, CustomBadge):
        rule_info.update(evaluator=rule.name, params=rule.params)
        if waiting is not None and waiting["target"]:
            missing.append(f"{badge.description or rule.name} ({waiting['progress']} of {waiting['target']})")
        else:
            missing.append(badge.description or f"what the {rule.name!r} evaluator decides")
    else:
        if isinstance(rule, DistinctBadge | SumBadge):
            rule_info["field"] = rule.field
        if waiting is not None and waiting["remaining"]:
            amount = waiting["remaining"]
            one = amount == 1
            if isinstance(rule, DistinctBadge):
                value = "value" if one else "values"
                missing.append(f"{amount} more different {_words(rule.field)} {value} in {what}")
            elif isinstance(rule, SumBadge):
                missing.append(f"{amount} more {_words(rule.field)} in {what}")
            else:
                tier = f" for {waiting['tier']}" if waiting["tier"] else ""
                missing.append(f"{amount} more {what.removesuffix('s') if one else what}{tier}")
    window = None
    if badge.window is not None:
        status = window_status(badge, today)
        window = {"from": badge.window.from_.isoformat() if badge.window.from_ else None,
                  "until": badge.window.until.isoformat() if badge.window.until else None,
                  "status": status, "today": today.isoformat() if today else None, "tz": tz}
        span = f"from {window['from']} " if window["from"] else ""
        span += f"until {window['until']} (exclusive)" if window["until"] else ""
        if status == "closed":
            missing.append(f"only {span.strip()}: the window has closed")
        elif status == "not_yet_open":
            missing.append(f"only {span.strip()}: the window is not open yet")
        else:
            missing.append(f"only {span.strip()}")
    if badge.when is not None:
        missing.append(f"only events where {badge.when}")
    held_req = [b for b in badge.requires if state.held(b)]
    missing_req = [b for b in badge.requires if not state.held(b)]
    if missing_req:
        missing.append("first hold " + ", ".join(entry["name"] for entry in _names(engine, missing_req)))
    if waiting is not None and not waiting["remaining"] and missing_req:
        rule_info["met"] = True  # the rule is met: the award waits for the prerequisites
    requirements = {
        "on": list(badge.on),
        "rule": rule_info,
        "window": window,
        "when": badge.when,
        "requires": {"held": _names(engine, held_req), "missing": _names(engine, missing_req)},
    }
    return requirements, missing


# --- what if: a dry run of one event -------------------------------------------------------------


def _when_check(rule: CompiledBadge, facts: EventFacts) -> dict[str, Any]:
    """The ``when`` decision as the engine takes it, and each top-level ``&&``/``||`` operand's own value."""
    assert rule.when is not None
    check: dict[str, Any] = {"check": "when", "expression": rule.when.source}
    try:
        check["ok"] = rule.when.matches(facts)
    except EvaluatorError as exc:
        check.update(ok=False, error=str(exc))
    operator, operands = top_level_operands(rule.when.source)
    if operator is not None:
        values = []
        for source in operands:
            entry: dict[str, Any] = {"expression": source}
            try:
                entry["value"] = Expression.compile(source).matches(facts)
            except (ValueError, EvaluatorError) as exc:
                entry.update(value=None, error=str(exc))
            values.append(entry)
        check.update(operator=operator, operands=values)
    return check


def _no_change_reason(rule: CompiledBadge, facts: EventFacts) -> str:
    if isinstance(rule, DistinctBadge):
        return f"{rule.field} is missing, or that value was already counted"
    if isinstance(rule, SumBadge):
        return f"{rule.field} is missing, not a number or not above 0: nothing to add"
    if isinstance(rule, StreakBadge):
        unit = "week" if rule.weeks else "day"
        return f"this local {unit} ({facts.local.date().isoformat()}) is already active in the streak"
    if isinstance(rule, CustomBadge):
        return f"the {rule.name!r} evaluator changed nothing"
    return "the event changes nothing"


def _progress_map(rule: CompiledBadge, state: BadgeState) -> list[dict[str, Any]]:
    return [{"tier": tier, "progress": _number(value), "target": _number(target)}
            for tier, value, target in rule.progress(state)]


def _award_json(engine: Engine, award: AwardRecord) -> dict[str, Any]:
    level = engine.catalog.levels_by_id.get(award.badge_id)
    badge = engine.catalog.badges_by_id.get(award.badge_id)
    name = level.display_name if level else badge.display_name if badge else award.badge_id
    return {"badge_id": award.badge_id, "name": name, "kind": "level" if level else "badge", "tier": award.tier,
            "occurrence": award.occurrence, "points": award.points, "award_id": award.award_id,
            "metadata": award.metadata}


def what_if(engine: Engine, state: UserState | None, event: EventEnvelope, *, seen: SeenIds | None = None,
            record_ms: int = 0, window: ResendWindow | None = None) -> dict[str, Any]:
    """What ``event`` would do to the user in ``state`` if it arrived next; nothing is kept.

    ``seen``: the user's remembered event ids (the worker's), with the record time the event would
    have (``record_ms``): a resend within ``window`` of one of them changes nothing, as in the worker.

    ``badges``: per badge listening to the type, whether it qualifies and why (each check: the
    type, the window, ``when`` with its top-level operands, a CEL error; or "already complete"),
    progress before -> after, its awards and nudges, prerequisites still missing. ``awards``,
    ``levels``, ``nudges``, ``progress``: exactly what :meth:`Engine.evaluate` returns for it.
    """
    before = state if state is not None else UserState.empty(event.user_id)
    evaluation = engine.evaluate(before, event)
    if seen is not None and seen.resent(window or ResendWindow(), event_digest(event.event_id), record_ms):
        evaluation = Evaluation(state=before, duplicate=True, matched=evaluation.matched)
    answer: dict[str, Any] = {
        "user_id": event.user_id, "event_id": event.event_id, "type": event.type,
        "matched": evaluation.matched, "duplicate": evaluation.duplicate,
        "points": {"before": before.points, "after": evaluation.state.points},
        "awards": [_award_json(engine, a) for a in evaluation.awards if a.badge_id not in engine.catalog.levels_by_id],
        "levels": [_award_json(engine, a) for a in evaluation.awards if a.badge_id in engine.catalog.levels_by_id],
        "nudges": [n.model_dump(mode="json") for n in evaluation.nudges],
        "progress": [p.model_dump(mode="json") for p in evaluation.progress],
        "errors": [{"badge_id": f.badge_id, "kind": f.kind, "message": f.message} for f in evaluation.errors],
        "badges": [],
    }
    if not evaluation.matched:
        answer["reason"] = f"no badge listens to events of type {event.type!r}: nothing would change"
        return answer
    if evaluation.duplicate:
        answer["reason"] = (f"event {event.event_id!r} was already evaluated for this user within the resend "
                            f"window: a resend changes nothing")
        return answer
    facts = EventFacts(event)
    after_state = evaluation.state
    failures = {f.badge_id: f for f in evaluation.errors}
    for rule in engine.listeners(event.type):
        old: BadgeState | None = before.badges.get(rule.id)
        new: BadgeState | None = after_state.badges.get(rule.id)
        checks: list[dict[str, Any]] = [{"check": "type", "ok": True, "detail": f"listens to {event.type}"}]
        qualifies = True
        if old is not None and rule.complete(old):
            checks.append({"check": "complete", "ok": False, "detail": "already complete: nothing more to earn"})
            qualifies = False
        else:
            if rule.has_window:
                inside = rule.in_window(facts)
                checks.append({"check": "window", "ok": inside, "local_date": facts.local.date().isoformat(),
                               "from": rule.badge.window.from_.isoformat() if rule.badge.window and
                               rule.badge.window.from_ else None,
                               "until": rule.badge.window.until.isoformat() if rule.badge.window and
                               rule.badge.window.until else None})
                qualifies = inside
            if rule.when is not None:  # shown even outside the window (the engine stops at the window)
                when = _when_check(rule, facts)
                checks.append(when)
                qualifies = qualifies and bool(when["ok"])
        changed = new is not None and new != old
        entry: dict[str, Any] = {
            "badge_id": rule.id, "name": rule.badge.display_name, "hidden": rule.badge.hidden,
            "qualifies": qualifies, "checks": checks, "changes": changed,
            "progress_before": _progress_map(rule, old or rule.fresh()),
            "progress_after": _progress_map(rule, new or rule.fresh()),
            "awards": [_award_json(engine, a) for a in evaluation.awards if a.badge_id == rule.id],
            "nudges": [{"tier": n.tier, "threshold": n.threshold, "remaining": _number(n.remaining)}
                       for n in evaluation.nudges if n.badge_id == rule.id],
            "requires_missing": _names(engine, [b for b in rule.requires if not after_state.held(b)]),
        }
        failure = failures.get(rule.id)
        if failure is not None:
            entry["error"] = {"kind": failure.kind, "message": failure.message}
        if qualifies and not changed and failure is None:
            entry["no_change"] = _no_change_reason(rule, facts)
        answer["badges"].append(entry)
    listening = {rule.id for rule in engine.listeners(event.type)}
    answer["cascade"] = [a["badge_id"] for a in answer["awards"] if a["badge_id"] not in listening]
    return answer
