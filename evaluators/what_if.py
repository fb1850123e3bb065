"""What-if: what one event would do to a user if it arrived next — a dry run through the engine itself.

Nothing is kept. Per badge listening to the event's type: whether it qualifies and why (the type,
the window, each top-level operand of ``when`` with its value, a CEL error), progress before and
after, its awards and nudges, prerequisites still missing; and exactly what :meth:`Engine.evaluate`
returns for the event, so the prediction cannot disagree with the worker.
"""

from __future__ import annotations

from typing import Any

from evaluators.compiled import CompiledBadge
from evaluators.engine import Engine, Evaluation
from evaluators.explain import badge_names, plain_number
from evaluators.expressions import Expression
from evaluators.facts import EventFacts
from evaluators.resends import ResendWindow, SeenIds, event_digest
from evaluators.rules import CustomBadge, DistinctBadge, SumBadge
from evaluators.state import BadgeState, UserState
from evaluators.streaks import StreakBadge
from schemas.catalog.cel import top_level_operands
from schemas.errors import EvaluatorError
from schemas.events import EventEnvelope
from schemas.records import AwardRecord


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
    return [{"tier": tier, "progress": plain_number(value), "target": plain_number(target)}
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
            "nudges": [{"tier": n.tier, "threshold": n.threshold, "remaining": plain_number(n.remaining)}
                       for n in evaluation.nudges if n.badge_id == rule.id],
            "requires_missing": badge_names(engine, [b for b in rule.requires if not after_state.held(b)]),
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
