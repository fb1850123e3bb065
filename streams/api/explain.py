"""Explain and what-if over the read API and the CLI: the award database, the worker's live state, the pure engine.

Where each part of an answer comes from (docs/api.md, "Explain and what-if"):

1. the catalog: the YAML the worker runs (``BADGESTREAM_CATALOG_PATH``), loaded once, with the
   evaluators installed packages register — the database's ``badges`` table lacks rule details;
2. held awards and their evidence (event id, topic, partition, offset), published progress and the
   time it last moved: the award database, as for every other ``/v1`` answer;
3. the user's engine state (streak runs, distinct values, the recent event ids a what-if must know
   to spot a resend): the worker's ``/users/{user_id}/engine-state`` view when ``BADGESTREAM_WORKER_URL``
   is set. Without it, or when the worker does not answer, the answer is built from 2 alone and its
   ``unknown`` field says what could not be known.

The decisions themselves are ``evaluators.explain`` (a what-if calls ``Engine.evaluate``).
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy.engine import Engine as Database

from evaluators.engine import Engine
from evaluators.explain import AwardEvidence, ReportedProgress, explain_badge, state_from_awards
from evaluators.resends import ResendWindow, SeenIds
from evaluators.runner import plugin_engine
from evaluators.state import StateDecodeError, UserState
from evaluators.what_if import what_if
from schemas.catalog import load_catalog
from schemas.errors import InvalidEventError
from schemas.events import parse_event, zone
from streams import db
from streams.settings import Settings
from streams.worker.views import seen_ids


class UnknownBadge(LookupError):
    """No such badge or level, or a hidden one the caller may not see: both answer 404 naming the id."""


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def event_problems(exc: InvalidEventError) -> list[dict[str, Any]]:
    """A refused event as 422 ``detail`` entries, one per ``field: problem`` the parser named."""
    problems = []
    for part in exc.reason.split("; "):
        field, sep, message = part.partition(": ")
        loc = ["body", *field.split(".")] if sep and exc.code != "invalid_json" else ["body"]
        problems.append({"loc": loc, "msg": message if sep else part, "type": exc.code})
    return problems


class Explainer:
    """Explanations and dry runs for one catalog, one award database and (optionally) one worker."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.database = database
        self.catalog_path = settings.catalog_path
        self.worker_url = settings.worker_url.rstrip("/") if settings.worker_url else None
        self.worker_timeout = settings.worker_timeout_s
        self.window = ResendWindow(settings.resend_window_ms)
        self.transport: httpx.BaseTransport | None = None  # how to reach the worker; None: HTTP (tests mock it)
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The engine for the catalog, built on first use (a bad catalog raises ``CatalogError`` then)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = plugin_engine(load_catalog(self.catalog_path))
        return self._engine

    # --- sources ---------------------------------------------------------------------------------

    def live_state(self, user_id: str) -> tuple[UserState | None, list[str]]:
        """The user's engine state from the worker, or None and why it is not known."""
        state, _, unknown = self.live(user_id)
        return state, unknown

    def live(self, user_id: str) -> tuple[UserState | None, SeenIds | None, list[str]]:
        """The user's engine state and remembered event ids from the worker, or None and why not."""
        if self.worker_url is None:
            return None, None, ["the live engine state: no worker is configured (BADGESTREAM_WORKER_URL)"]
        url = f"{self.worker_url}/users/{quote(user_id, safe='')}/engine-state"
        try:
            with httpx.Client(transport=self.transport, timeout=self.worker_timeout) as client:
                response = client.get(url)
            if response.status_code == 404:  # the owning worker has never evaluated an event of theirs
                return UserState.empty(user_id), SeenIds(), []
            response.raise_for_status()
            body = response.json()
            return UserState.from_bytes(base64.b64decode(body["state"])), seen_ids(body), []
        except (httpx.HTTPError, ValueError, KeyError, TypeError, StateDecodeError) as exc:
            return None, None, [f"the live engine state: the worker did not give it ({type(exc).__name__})"]

    def _from_database(self, user_id: str, badge_id: str | None) -> tuple[list[AwardEvidence], list[ReportedProgress]]:
        with self.database.connect() as conn:
            awards = [a for a in db.user_awards(conn, user_id) if a.revoked_at is None]
            evidence = []
            for award in awards:
                where = db.award_evidence(conn, award.award_id) if award.badge_id == badge_id else None
                evidence.append(AwardEvidence(
                    award.badge_id, award.tier, award.occurrence, award.event_id, _when(award.awarded_at),
                    award.award_id, where.source_topic if where else None, where.source_partition if where else None,
                    where.source_offset if where else None, award.points))
            reported = [ReportedProgress(row.tier, row.progress, row.target, _when(row.updated_at))
                        for row in db.user_progress(conn, user_id) if row.badge_id == badge_id]
        return evidence, reported

    # --- answers ---------------------------------------------------------------------------------

    def explain(self, user_id: str, badge_id: str, *, authorised: bool, tz: str = "UTC") -> dict[str, Any]:
        """``GET /v1/users/{user_id}/badges/{badge_id}/explain``; raises :class:`UnknownBadge`."""
        engine = self.engine
        badge = engine.catalog.badges_by_id.get(badge_id)
        if badge is None and badge_id not in engine.catalog.levels_by_id:
            raise UnknownBadge(badge_id)
        evidence, reported = self._from_database(user_id, badge_id)
        state, unknown = self.live_state(user_id)
        with self.database.connect() as conn:
            deployed = {info.catalog_version for info in db.load_badges(conn).values()}
        if deployed and engine.catalog_version not in deployed:
            unknown.append(f"whether the rules match the awards: this catalog is {engine.catalog_version!r}, the "
                           f"database's is {', '.join(sorted(map(repr, deployed)))} (BADGESTREAM_CATALOG_PATH)")
        today = datetime.now(zone(tz)).date()
        answer = explain_badge(engine, user_id, badge_id, state, evidence=evidence, reported=reported, today=today,
                               tz=tz, source="worker")
        assert answer is not None
        if badge is not None and badge.hidden and not answer["held"] and not authorised:
            raise UnknownBadge(badge_id)
        answer["unknown"] = unknown + answer["unknown"]
        return answer

    def what_if(self, user_id: str, raw: bytes, *, authorised: bool) -> dict[str, Any]:
        """``POST /v1/users/{user_id}/what-if``; raises ``InvalidEventError`` for an event the worker dead-letters."""
        engine = self.engine
        event = parse_event(raw, engine.catalog)
        if event.user_id != user_id:
            raise InvalidEventError("invalid_envelope",
                                    f"user_id: the event is for {event.user_id!r}, the path names {user_id!r}")
        state, seen, unknown = self.live(user_id)
        if state is None:
            evidence, _ = self._from_database(user_id, None)
            state = state_from_awards(engine, user_id, evidence)
            unknown.append("rule progress: the dry run starts every rule from zero (only the award database's "
                           "awards and points are known), and a resent event id is not recognised")
        # Arriving next means now: the record time a resend is measured by.
        answer = what_if(engine, state, event, seen=seen, window=self.window,
                         record_ms=int(datetime.now(UTC).timestamp() * 1000))
        answer["state_source"] = "database" if unknown else "worker"
        answer["unknown"] = unknown
        if not authorised:
            _hide_unearned(engine, state, answer)
        return answer


def _hide_unearned(engine: Engine, before: UserState, answer: dict[str, Any]) -> None:
    """Hidden badges the user does not hold yet stay hidden in a what-if, as everywhere else."""
    secret = {badge.id for badge in engine.catalog.badges if badge.hidden and not before.held(badge.id)}
    if not secret:
        return
    answer["badges"] = [entry for entry in answer["badges"] if entry["badge_id"] not in secret]
    withheld = sum(award["points"] for award in answer["awards"] if award["badge_id"] in secret)
    answer["awards"] = [award for award in answer["awards"] if award["badge_id"] not in secret]
    if withheld:  # nor do their points, or a level only they would reach
        answer["points"]["after"] -= withheld
        answer["levels"] = [level for level in answer["levels"]
                            if level["metadata"].get("target", 0) <= answer["points"]["after"]]
    answer["progress"] = [row for row in answer["progress"] if row["badge_id"] not in secret]
    answer["errors"] = [error for error in answer["errors"] if error["badge_id"] not in secret]
    answer["cascade"] = [badge_id for badge_id in answer.get("cascade", []) if badge_id not in secret]
    for entry in answer["badges"]:
        entry["requires_missing"] = [r for r in entry["requires_missing"] if r["badge_id"] not in secret]
