"""Leaderboards ranked by the database from the aggregates the sink keeps: top N, a user's rank and neighbours.

A board is one aggregate table narrowed to one ranking: all time (``user_totals``), one day, ISO
week or month (``period_scores``), or one badge all time (``user_holdings``, any tier), by held
awards or by points. Every query is a range scan of a (score descending, user id) index with a
small limit; nobody is ranked in Python. Ranks are competition style (1, 1, 3): a user's rank is one
more than the number of users with a higher score, summed from ``score_counts`` (users per score);
equal scores are ordered by user id. Users with a score of 0 are not on a board.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streams.db.aggregates import Period
from streams.db.tables import ANY_TIER, period_scores, score_counts, user_holdings, user_totals

RankBy = Literal["badges", "points"]


@dataclass(frozen=True)
class Board:
    """Which ranking: ``by`` badges or points, all time or one ``period`` starting on ``starts``, or one badge."""

    by: RankBy = "badges"
    period: Period | None = None
    starts: date | None = None
    badge_id: str | None = None

    def __post_init__(self) -> None:
        if self.period is not None and (self.starts is None or self.badge_id is not None):
            raise ValueError("a period board needs its start and cannot be narrowed to one badge")


@dataclass(frozen=True)
class Placed:
    """One line of a board: rank, user, held awards and their points (in the board's period or badge)."""

    rank: int
    user_id: str
    badges: int
    points: int

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "user_id": self.user_id, "badges": self.badges, "points": self.points}


class _Query:
    """The statements of one kind of board (all time, period or badge; by badges or points), built once with
    bind parameters: building and cache-keying a statement per request costs more than running it."""

    def __init__(self, source: str, by: RankBy) -> None:
        table = {"all": user_totals, "period": period_scores, "badge": user_holdings}[source]
        where: list[sa.ColumnElement[bool]] = {
            "all": [],
            "period": [period_scores.c.period == sa.bindparam("period"),
                       period_scores.c.starts == sa.bindparam("starts", type_=sa.Date)],
            "badge": [user_holdings.c.badge_id == sa.bindparam("badge_id"), user_holdings.c.tier == ANY_TIER],
        }[source]
        self.by = by
        score = table.c.awards if by == "badges" else table.c.points
        user = table.c.user_id
        mine: sa.BindParameter[int] = sa.bindparam("score", type_=sa.BigInteger)
        them: sa.BindParameter[str] = sa.bindparam("user_id", type_=sa.String)
        where = [*where, score > 0]
        limit: sa.BindParameter[int] = sa.bindparam("limit", type_=sa.Integer)

        def rows(*conditions: sa.ColumnElement[bool], order: Sequence[Any] = ()) -> sa.Select[Any]:
            return sa.select(user, table.c.awards, table.c.points).where(*where, *conditions).order_by(*order) \
                .limit(limit)

        self.top = rows(order=(score.desc(), user))
        self.mine = rows(user == them)
        counts = score_counts.c
        self.higher = sa.select(sa.func.coalesce(sa.func.sum(counts.users), 0)).where(
            counts.board == sa.bindparam("board"), counts.board_key == sa.bindparam("board_key"),
            counts.ranked_by == by, counts.score > mine)
        # Users per score above a score, highest first: the ranks of every score in a window in one read.
        self.scores_above = sa.select(counts.score, counts.users).where(
            counts.board == sa.bindparam("board"), counts.board_key == sa.bindparam("board_key"),
            counts.ranked_by == by, counts.score > mine).order_by(counts.score.desc())
        # Below a user in board order: the rest of the tie, then lower scores; above, nearest first.
        self.tied_after = rows(score == mine, user > them, order=(user,))
        self.lower = rows(score < mine, order=(score.desc(), user))
        self.tied_above = rows(score == mine, user < them, order=(user.desc(),))
        self.higher_rows = rows(score > mine, order=(score, user.desc()))

    def value(self, row: tuple[str, int, int]) -> int:
        return row[1] if self.by == "badges" else row[2]


_QUERIES = {(source, by): _Query(source, by) for source in ("all", "period", "badge") for by in ("badges", "points")}


class _Run:
    """One board's statements with its parameters bound."""

    def __init__(self, board: Board) -> None:
        source = "badge" if board.badge_id is not None else "period" if board.period is not None else "all"
        self.query = _QUERIES[(source, board.by)]
        key = board.badge_id if board.badge_id is not None else board.starts.isoformat() if board.starts else ""
        self.params: dict[str, Any] = {"period": board.period, "starts": board.starts, "badge_id": board.badge_id,
                                       "board": "badge" if source == "badge" else board.period or "all",
                                       "board_key": key}

    def rows(self, conn: Connection, stmt: sa.Select[Any], limit: int, **params: Any) -> list[tuple[str, int, int]]:
        if limit <= 0:
            return []
        return [(row[0], int(row[1]), int(row[2]))
                for row in conn.execute(stmt, {**self.params, **params, "limit": limit})]

    def scalar(self, conn: Connection, stmt: sa.Select[Any], **params: Any) -> int:
        return int(conn.execute(stmt, {**self.params, **params}).scalar_one())


def top(conn: Connection, board: Board, limit: int) -> list[Placed]:
    """The first ``limit`` users of the board: one index range scan."""
    run = _Run(board)
    out: list[Placed] = []
    for index, row in enumerate(run.rows(conn, run.query.top, limit)):
        tied = out and run.query.value(row) == run.query.value((out[-1].user_id, out[-1].badges, out[-1].points))
        out.append(Placed(out[-1].rank if tied else index + 1, *row))
    return out


def standing(conn: Connection, board: Board, user_id: str) -> Placed | None:
    """The user's line on the board with their rank (a count of the higher scores), or None when not on it."""
    run = _Run(board)
    mine = run.rows(conn, run.query.mine, 1, user_id=user_id)
    if not mine:
        return None
    return Placed(run.scalar(conn, run.query.higher, score=run.query.value(mine[0])) + 1, *mine[0])


def around(conn: Connection, board: Board, user_id: str, limit: int) -> list[Placed] | None:
    """``limit`` lines with the user about the middle (fewer above near the top, more near the bottom),
    or None when the user is not on the board: four short range scans, and the ranks of the window's
    scores from ``score_counts``; no count over a tie, however many users share a score."""
    run = _Run(board)
    query = run.query
    me = run.rows(conn, query.mine, 1, user_id=user_id)
    if not me:
        return None
    mine = query.value(me[0])
    near = {"score": mine, "user_id": user_id}
    below = run.rows(conn, query.tied_after, limit, **near)
    below += run.rows(conn, query.lower, limit - len(below), **near)
    wanted_above = limit // 2
    if len(below) < limit - wanted_above - 1:  # near the bottom: the window ends with the board
        wanted_above = limit - 1 - len(below)
    above = run.rows(conn, query.tied_above, wanted_above, **near)  # near the top there are fewer
    above += run.rows(conn, query.higher_rows, wanted_above - len(above), **near)
    rows = [*reversed(above), me[0], *below][:limit]
    # A score's rank is one more than the users with a higher score.
    lowest = min(query.value(row) for row in rows)
    higher: dict[int, int] = {}
    users_above = 0
    for score, users in conn.execute(query.scores_above, {**run.params, "score": lowest}):
        higher[int(score)] = users_above
        users_above += int(users)
    return [Placed(higher.get(query.value(row), users_above) + 1, *row) for row in rows]
