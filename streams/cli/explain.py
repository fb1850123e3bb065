"""``badgestream explain USER BADGE``, ``badgestream what-if USER EVENT.json`` and ``evaluate --explain``.

The first two ask the award database and (with ``BADGESTREAM_WORKER_URL``) the worker, exactly as the
read API does (``streams.api.explain``), as an operator: hidden badges are explained too. The offline
form explains from the states an ``evaluate`` run built, as of the user's last event in the file: the
evidence of an award is the file and line of its deciding event (``topic`` = the file, ``offset`` = the line).
Text for people by default, ``--json`` for the answer the API gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any

from evaluators.engine import Engine, Evaluation
from evaluators.explain import AwardEvidence, explain_badge
from evaluators.runner import EngineRun
from schemas.errors import CatalogError
from schemas.events import EventEnvelope
from streams.settings import settings_for


def _amount(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def render_explanation(answer: dict[str, Any]) -> str:
    """One badge's explanation in a few lines of text."""
    kind = "level" if answer["kind"] == "level" else f"{answer['kind']} badge"
    lines = [f"{answer['name']} ({answer['badge_id']}, {kind}) for {answer['user_id']}: "
             + ("complete" if answer["complete"] else "held, more to earn" if answer["held"] else "not held")]
    for part in answer["parts"]:
        label = part["tier"] or ("occurrence " + str(part["occurrence"]) if answer["repeatable"] else "award")
        if part["held"]:
            award = part["award"]
            if award is None:
                lines.append(f"  {label}: held (no award row seen yet)")
                continue
            if award["topic"] is None:
                where = "position unknown"
            elif award["partition"] is None:
                where = f"{award['topic']} line {award['offset']}"  # offline: the events file
            else:
                where = f"{award['topic']} partition {award['partition']} offset {award['offset']}"
            lines.append(f"  {label}: held since {(award['awarded_at'] or '?')[:10]}, event {award['event_id']} "
                         f"({where})")
        else:
            lines.append(f"  {label}: {_amount(part['progress'])} of {_amount(part['target'])} "
                         f"({_amount(part['remaining'])} to go)")
    for text in answer["missing"]:
        lines.append(f"  missing: {text}")
    last = answer["last_event"]
    if last is not None:
        lines.append(f"  last moved: {last['at']}" + (f" by event {last['event_id']}" if last["event_id"] else ""))
    for text in answer["unknown"]:
        lines.append(f"  not known: {text}")
    return "\n".join(lines)


def render_what_if(answer: dict[str, Any]) -> str:
    """A dry run in a few lines of text: per badge qualifies or why not, and what it would award."""
    lines = [f"what if {answer['event_id']} ({answer['type']}) arrived for {answer['user_id']}:"]
    if "reason" in answer:
        lines.append(f"  {answer['reason']}")
    for entry in answer["badges"]:
        if entry["qualifies"]:
            before = ", ".join(_amount(p["progress"]) for p in entry["progress_before"])
            after = ", ".join(_amount(p["progress"]) for p in entry["progress_after"])
            verdict = f"qualifies, progress {before} -> {after}" if entry["changes"] else \
                f"qualifies, no change: {entry.get('no_change', '')}"
        else:
            failed = next((c for c in entry["checks"] if not c.get("ok", True)), None)
            verdict = "does not qualify"
            if failed is not None:
                verdict += f" ({failed['check']}: " + (failed.get("detail") or failed.get("error") or ", ".join(
                    f"{o['expression']} = {json.dumps(o['value'])}" for o in failed.get("operands", []))
                    or failed.get("expression", "") or failed.get("local_date", "")) + ")"
        if "error" in entry:
            verdict += f" [error: {entry['error']['message']}]"
        if entry["requires_missing"]:
            verdict += "; waits for " + ", ".join(r["name"] for r in entry["requires_missing"])
        lines.append(f"  {entry['name']}: {verdict}")
    for award in answer["awards"]:
        tier = f" {award['tier']}" if award["tier"] else ""
        lines.append(f"  would award {award['name']}{tier} (+{award['points']} points)")
    for level in answer["levels"]:
        lines.append(f"  would reach level {level['name']}")
    for nudge in answer["nudges"]:
        lines.append(f"  would nudge: {nudge['badge_id']} {_amount(nudge['remaining'])} to go")
    lines.append(f"  points {answer['points']['before']} -> {answer['points']['after']}")
    for text in answer.get("unknown", []):
        lines.append(f"  not known: {text}")
    return "\n".join(lines)


def _print(answer: dict[str, Any] | list[dict[str, Any]], as_json: bool, render: Any, out: IO[str]) -> None:
    if as_json:
        out.write(json.dumps(answer, indent=2) + "\n")
    elif isinstance(answer, list):
        out.write("\n\n".join(render(a) for a in answer) + "\n")
    else:
        out.write(render(answer) + "\n")


def _explainer(args: argparse.Namespace) -> Any:
    from streams import db
    from streams.api.explain import Explainer

    settings = settings_for(args)
    return Explainer(settings, db.make_engine(settings.database_url_value))


def explain_command(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """``badgestream explain USER BADGE``: exit 0, or 1 when there is no such badge or level."""
    from streams.api.explain import UnknownBadge

    out = out or sys.stdout
    explainer = _explainer(args)
    try:
        answer = explainer.explain(args.user_id, args.badge_id, authorised=True, tz=args.tz)
    except UnknownBadge:
        print(f"badgestream: no badge or level {args.badge_id!r} in the catalog", file=sys.stderr)
        return 1
    finally:
        explainer.database.dispose()
    _print(answer, args.json, render_explanation, out)
    return 0


def what_if_command(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """``badgestream what-if USER EVENT.json``: the dry run; a malformed event is an error naming the field."""
    out = out or sys.stdout
    try:
        raw = sys.stdin.buffer.read() if args.event == "-" else Path(args.event).read_bytes()
    except OSError as exc:
        raise CatalogError(f"{args.event}: cannot read the event: {exc.strerror or exc}") from None
    explainer = _explainer(args)
    try:
        answer = explainer.what_if(args.user_id, raw.strip(), authorised=True)
    finally:
        explainer.database.dispose()
    _print(answer, args.json, render_what_if, out)
    return 0


# --- offline: ``evaluate --explain`` ------------------------------------------------------------------


class OfflineHistory:
    """What an offline run knows that a state does not: each award's line and each badge's last moving event."""

    def __init__(self, source: str, user_id: str) -> None:
        self.source = source
        self.user_id = user_id
        self.evidence: list[AwardEvidence] = []
        self.last: dict[str, dict[str, Any]] = {}
        self.latest: EventEnvelope | None = None

    def observe(self, engine: Engine, line: int, event: EventEnvelope, before: Any, result: Evaluation) -> None:
        """Record what ``event`` (line ``line``) did; ``before`` is the user's state before it."""
        if event.user_id != self.user_id or result.duplicate or not result.matched:
            return
        if self.latest is None or event.occurred_at >= self.latest.occurred_at:
            self.latest = event
        moved = {award.badge_id for award in result.awards}
        for rule in engine.listeners(event.type):
            old = before.badges.get(rule.id) if before is not None else None
            if result.state.badges.get(rule.id) != old:
                moved.add(rule.id)
        for badge_id in moved:
            self.last[badge_id] = {"at": event.occurred_at.isoformat(), "event_id": event.event_id,
                                   "what": "award" if any(a.badge_id == badge_id for a in result.awards) else
                                   "progress", "line": line}
        for award in result.awards:
            self.evidence.append(AwardEvidence(award.badge_id, award.tier, award.occurrence, award.event_id,
                                               award.awarded_at.isoformat(), award.award_id, self.source, None, line,
                                               award.points))

    def explain(self, run: EngineRun, badge_id: str | None) -> list[dict[str, Any]]:
        """The explanations of ``badge_id`` (every badge and level when None), as of the user's last event."""
        engine = run.engine
        ids = [badge_id] if badge_id is not None else [
            *(b.id for b in engine.catalog.badges), *(lv.id for lv in engine.catalog.levels)]
        latest = self.latest
        today = latest.occurred_at.astimezone(_zone(latest.tz)).date() if latest is not None else None
        answers = []
        for one in ids:
            answer = explain_badge(engine, self.user_id, one, run.states.get(self.user_id), evidence=self.evidence,
                                   today=today, tz=latest.tz if latest is not None else "UTC",
                                   last_event=self.last.get(one), source="offline")
            if answer is None:
                raise CatalogError(f"--explain: no badge or level {one!r} in the catalog")
            answers.append(answer)
        return answers


def print_offline(answers: list[dict[str, Any]], as_json: bool, out: IO[str]) -> None:
    """``evaluate --explain``'s output: one explanation, or a list of them (text, or JSON with ``--json``)."""
    _print(answers[0] if len(answers) == 1 else answers, as_json, render_explanation, out)


def _zone(name: str) -> Any:
    from schemas.events import zone

    return zone(name)
