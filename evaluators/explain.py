"""Why and why not: one badge explained for one user, from engine state and what is known of the awards.

Pure like the rest of ``evaluators/``: the caller hands in the user's state, what it knows of the
awards (the award database's rows, or an offline run's records) and the user's local date; nothing
here reads a clock, a database or the network. The answers are plain JSON-able dicts (docs/api.md
"Explain" and "What-if" name their fields).

- :func:`explain_badge`: per tier and occurrence, held (with the award's evidence) or not, and for
  what is not held every requirement and where it stands. Without the engine state (``state=None``)
  it explains from the awards and the published progress alone, and says what could not be known.
- the dry run of one event is :func:`evaluators.what_if.what_if`, which shares this module's names
  for badges and numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from evaluators.compiled import CompiledBadge
from evaluators.engine import Engine
from evaluators.rules import CustomBadge, DistinctBadge, MetaBadge, SumBadge, TiersBadge
from evaluators.state import BadgeState, UserState
from evaluators.streaks import StreakBadge, streak_standing
from schemas.catalog import Badge, Level
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


def plain_number(value: float) -> int | float:
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
            "progress": plain_number(progress), "target": plain_number(target),
            "remaining": plain_number(max(0.0, target - progress))}


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


def badge_names(engine: Engine, ids: Iterable[str]) -> list[dict[str, str]]:
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
        rule_info["components"] = {"needed": rule.needed, "held": badge_names(engine, held_ids),
                                   "missing": badge_names(engine, missing_ids)}
        if len(held_ids) < rule.needed:
            names = ", ".join(entry["name"] for entry in badge_names(engine, missing_ids))
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
        missing.append("first hold " + ", ".join(entry["name"] for entry in badge_names(engine, missing_req)))
    if waiting is not None and not waiting["remaining"] and missing_req:
        rule_info["met"] = True  # the rule is met: the award waits for the prerequisites
    requirements = {
        "on": list(badge.on),
        "rule": rule_info,
        "window": window,
        "when": badge.when,
        "requires": {"held": badge_names(engine, held_req), "missing": badge_names(engine, missing_req)},
    }
    return requirements, missing


# --- what if: a dry run of one event -------------------------------------------------------------
