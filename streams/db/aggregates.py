"""The aggregates the read API ranks and counts from, kept in the transaction that changes the awards.

``streams.db.writes`` knows exactly which award rows it changed (the grants its insert did not
skip, the held awards its revocation update reached), so an aggregate moves by those rows only:
a redelivered grant or a second revocation changes nothing there, and nothing here either. What
each table holds is in ``streams.db.tables``; migration 0004 built them from the rows before it.

- ``note_users``: every user of a batch is known from now on (``user_totals`` row, ``known_users``);
- ``apply_changes``: awards that became held (``gained``) or stopped being held (``lost``) move
  ``user_totals``, ``period_scores``, ``user_holdings``; when a user's holding of a (badge, tier)
  starts or ends, ``badge_holders``; when a user's score on a board changes, ``score_counts``.

Keys are sorted before every upsert, so two writers lock rows in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streams.db.tables import (
    ANY_TIER,
    KNOWN_USERS,
    NO_TIER,
    badge_holders,
    period_scores,
    read_counters,
    score_counts,
    user_holdings,
    user_totals,
)
from streams.db.upsert import add_returning, upsert

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")


def period_start(period: Period, at: datetime) -> date:
    """First day of the UTC day, ISO week (Monday) or month that ``at`` falls in (naive ``at``: UTC)."""
    day = (at.astimezone(UTC) if at.tzinfo is not None else at).date()
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_bounds(period: Period, starts: date) -> tuple[datetime, datetime]:
    """``[since, until)`` in UTC of the period that begins on ``starts`` (OverflowError past year 9999)."""
    since = datetime(starts.year, starts.month, starts.day, tzinfo=UTC)
    if period == "day":
        return since, since + timedelta(days=1)
    if period == "week":
        return since, since + timedelta(days=7)
    year, month = divmod(starts.month, 12)
    return since, since.replace(year=starts.year + year, month=month + 1)


@dataclass(frozen=True)
class HeldChange:
    """An award row that became held, or stopped being held, in this transaction: what the aggregates count."""

    user_id: str
    badge_id: str
    tier: str  # as stored: NO_TIER for untiered badges
    awarded_at: datetime
    points: int


def note_users(conn: Connection, user_ids: Iterable[str]) -> int:
    """Make every user in ``user_ids`` known (a row in ``user_totals``); returns how many were new."""
    rows = [(user_id, 0, 0) for user_id in sorted(set(user_ids))]
    new = len(add_returning(conn, user_totals, ("user_id", "awards", "points"), ("user_id",), (), rows))
    if new:
        conn.execute(read_counters.update().where(read_counters.c.name == KNOWN_USERS)
                     .values(value=read_counters.c.value + new))
    return new


def apply_changes(conn: Connection, gained: Sequence[HeldChange], lost: Sequence[HeldChange]) -> None:
    """Move every aggregate by the awards that became held (``gained``) and stopped being held (``lost``).

    The users must be known already (``note_users``). A grant and its revocation in one batch cancel out.
    """
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    periods: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])  # starts as ISO text
    holdings: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    starts: dict[date, tuple[tuple[Period, str], ...]] = {}  # a batch's awards fall on few days
    for sign, changes in ((1, gained), (-1, lost)):
        for change in changes:
            day = change.awarded_at.astimezone(UTC).date()
            if day not in starts:
                starts[day] = tuple((period, period_start(period, change.awarded_at).isoformat())
                                    for period in PERIODS)
            user = change.user_id
            deltas = [totals[user], *(periods[(period, first, user)] for period, first in starts[day]),
                      holdings[(user, change.badge_id, change.tier)]]
            if change.tier != NO_TIER:
                deltas.append(holdings[(user, change.badge_id, ANY_TIER)])
            for delta in deltas:
                delta[0] += sign
                delta[1] += sign * change.points
    scores: Scores = defaultdict(int)
    _add_totals(conn, {key: value for key, value in totals.items() if value != [0, 0]}, scores)
    _add_periods(conn, {key: value for key, value in periods.items() if value != [0, 0]}, scores)
    _add_holdings(conn, {key: value for key, value in holdings.items() if value != [0, 0]}, scores)
    _add_score_counts(conn, scores)


Scores = dict[tuple[str, str, str, int], int]
"""Users gained (+) or lost (-) per (board, board key, ranked by, score) of ``score_counts``."""


def _moved(scores: Scores, board: str, key: str, awards: int, points: int, delta: list[int]) -> None:
    """One user's scores on a board went from (awards - delta, points - delta) to (awards, points)."""
    for by, after, change in (("badges", awards, delta[0]), ("points", points, delta[1])):
        before = after - change
        if before == after:
            continue
        if before > 0:
            scores[(board, key, by, before)] -= 1
        if after > 0:
            scores[(board, key, by, after)] += 1


def _add_score_counts(conn: Connection, scores: Scores) -> None:
    moved = [{"board": board, "board_key": key, "ranked_by": by, "score": score, "users": n}
             for (board, key, by, score), n in sorted(scores.items()) if n]
    if not moved:
        return
    c = score_counts.c
    upsert(conn, score_counts, moved, lambda insert: insert.on_conflict_do_update(
        index_elements=[c.board, c.board_key, c.ranked_by, c.score], set_={"users": c.users + insert.excluded.users}))
    emptied = [{"b": m["board"], "k": m["board_key"], "r": m["ranked_by"], "s": m["score"]} for m in moved]
    conn.execute(score_counts.delete().where(c.board == sa.bindparam("b"), c.board_key == sa.bindparam("k"),
                                             c.ranked_by == sa.bindparam("r"), c.score == sa.bindparam("s"),
                                             c.users <= 0), emptied)


_SCORES = ("awards", "points")


def _add_totals(conn: Connection, deltas: dict[str, list[int]], scores: Scores) -> None:
    rows = [(user, d[0], d[1]) for user, d in sorted(deltas.items())]
    for user, awards, points in add_returning(conn, user_totals, ("user_id", *_SCORES), ("user_id",), _SCORES, rows):
        _moved(scores, "all", "", awards, points, deltas[user])


def _add_periods(conn: Connection, deltas: dict[tuple[str, str, str], list[int]], scores: Scores) -> None:
    keys = ("period", "starts", "user_id")
    rows = [(*key, d[0], d[1]) for key, d in sorted(deltas.items())]
    c = period_scores.c
    emptied = []
    for period, first, user, awards, points in add_returning(conn, period_scores, (*keys, *_SCORES), keys, _SCORES,
                                                             rows):
        starts = str(first)  # PostgreSQL returns a date, SQLite the ISO text: the ISO text either way
        _moved(scores, period, starts, awards, points, deltas[(period, starts, user)])
        if awards <= 0:
            emptied.append({"p": period, "s": date.fromisoformat(starts), "u": user})
    if emptied:
        conn.execute(period_scores.delete().where(c.period == sa.bindparam("p"), c.starts == sa.bindparam("s"),
                                                  c.user_id == sa.bindparam("u")), emptied)


def _add_holdings(conn: Connection, deltas: dict[tuple[str, str, str], list[int]], scores: Scores) -> None:
    """Held awards per (user, badge, tier); a holding that starts or ends moves ``badge_holders`` by one."""
    keys = ("user_id", "badge_id", "tier")
    rows = [(*key, d[0], d[1]) for key, d in sorted(deltas.items())]
    c = user_holdings.c
    holders: dict[tuple[str, str], int] = defaultdict(int)
    emptied = []
    for user, badge, tier, awards, points in add_returning(conn, user_holdings, (*keys, *_SCORES), keys, _SCORES,
                                                           rows):
        delta = deltas[(user, badge, tier)]
        if tier == ANY_TIER:
            _moved(scores, "badge", badge, awards, points, delta)
        before = awards - delta[0]
        if before <= 0 < awards:
            holders[(badge, tier)] += 1
        elif awards <= 0 < before:
            holders[(badge, tier)] -= 1
        if awards <= 0:
            emptied.append({"u": user, "b": badge, "t": tier})
    if emptied:
        conn.execute(user_holdings.delete().where(c.user_id == sa.bindparam("u"), c.badge_id == sa.bindparam("b"),
                                                  c.tier == sa.bindparam("t")), emptied)
    moved = [{"badge_id": badge, "tier": tier, "holders": n} for (badge, tier), n in sorted(holders.items()) if n]
    if not moved:
        return
    upsert(conn, badge_holders, moved, lambda insert: insert.on_conflict_do_update(
        index_elements=[badge_holders.c.badge_id, badge_holders.c.tier],
        set_={"holders": badge_holders.c.holders + insert.excluded.holders}))
    conn.execute(badge_holders.delete().where(badge_holders.c.holders <= 0))
