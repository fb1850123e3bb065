"""Leaderboards ranked by the database from the aggregates the sink keeps: top N, a user's rank and neighbours.

A board is one aggregate table narrowed to one ranking: all time (``user_totals``), one day, ISO
week or month (``period_scores``), or one badge all time (``user_holdings``, any tier), by held
awards or by points. Every query is a range scan of a (score descending, user id) index with a
small limit, or a count over it; nobody is ranked in Python. Ranks are competition style (1, 1, 3):
a user's rank is one more than the number of users with a higher score; equal scores are ordered
by user id. Users with a score of 0 are not on a board.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streams.db.aggregates import Period
from streams.db.tables import ANY_TIER, period_scores, user_holdings, user_totals

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

    def _source(self) -> tuple[sa.Table, list[sa.ColumnElement[bool]]]:
        if self.badge_id is not None:
            return user_holdings, [user_holdings.c.badge_id == self.badge_id, user_holdings.c.tier == ANY_TIER]
        if self.period is not None:
            return period_scores, [period_scores.c.period == self.period, period_scores.c.starts == self.starts]
        return user_totals, []


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
    """The statements of one board, with its score column and the conditions every row must meet."""

    def __init__(self, board: Board) -> None:
        table, where = board._source()
        self.table = table
        self.score = table.c.awards if board.by == "badges" else table.c.points
        self.where = [*where, self.score > 0]
        self.columns = (table.c.user_id, table.c.awards, table.c.points)

    def rows(self, conn: Connection, *conditions: sa.ColumnElement[bool], order: Sequence[Any],
             limit: int) -> list[tuple[str, int, int]]:
        if limit <= 0:
            return []
        stmt = sa.select(*self.columns).where(*self.where, *conditions).order_by(*order).limit(limit)
        return [(row[0], int(row[1]), int(row[2])) for row in conn.execute(stmt)]

    def count(self, conn: Connection, *conditions: sa.ColumnElement[bool]) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)
                                .where(*self.where, *conditions)).scalar_one())

    def value(self, row: tuple[str, int, int]) -> int:
        return row[1] if self.score.name == "awards" else row[2]


def _placed(query: _Query, rows: list[tuple[str, int, int]], first_rank: int, first_index: int) -> list[Placed]:
    """Rows in board order from absolute position ``first_index``, the first one ranked ``first_rank``."""
    out: list[Placed] = []
    for offset, row in enumerate(rows):
        if offset and query.value(row) == query.value(rows[offset - 1]):
            rank = out[-1].rank
        else:
            rank = first_rank if offset == 0 else first_index + offset + 1
        out.append(Placed(rank, row[0], row[1], row[2]))
    return out


def top(conn: Connection, board: Board, limit: int) -> list[Placed]:
    """The first ``limit`` users of the board: one index range scan."""
    query = _Query(board)
    return _placed(query, query.rows(conn, order=(query.score.desc(), query.table.c.user_id), limit=limit), 1, 0)


def standing(conn: Connection, board: Board, user_id: str) -> Placed | None:
    """The user's line on the board with their rank (a count of the higher scores), or None when not on it."""
    query = _Query(board)
    mine = query.rows(conn, query.table.c.user_id == user_id, order=(), limit=1)
    if not mine:
        return None
    higher = query.count(conn, query.score > query.value(mine[0]))
    return Placed(higher + 1, *mine[0])


def around(conn: Connection, board: Board, user_id: str, limit: int) -> list[Placed] | None:
    """``limit`` lines with the user about the middle (fewer above near the top, more near the bottom),
    or None when the user is not on the board: two counts and four short range scans."""
    query = _Query(board)
    me = standing(conn, board, user_id)
    if me is None:
        return None
    score, user = query.score, query.table.c.user_id
    mine = query.value((me.user_id, me.badges, me.points))
    position = me.rank - 1 + query.count(conn, score == mine, user < user_id)
    # Below the user, in board order: the rest of the tie, then lower scores.
    below = query.rows(conn, score == mine, user > user_id, order=(user,), limit=limit)
    below += query.rows(conn, score < mine, order=(score.desc(), user), limit=limit - len(below))
    wanted_above = limit // 2
    if len(below) < limit - wanted_above - 1:  # near the bottom: the window ends with the board
        wanted_above = limit - 1 - len(below)
    wanted_above = min(wanted_above, position)
    # Above the user, nearest first: the tie before them, then higher scores.
    above = query.rows(conn, score == mine, user < user_id, order=(user.desc(),), limit=wanted_above)
    above += query.rows(conn, score > mine, order=(score, user.desc()), limit=wanted_above - len(above))
    rows = [*reversed(above), (me.user_id, me.badges, me.points), *below][:limit]
    start = position - len(above)
    first_rank = me.rank if query.value(rows[0]) == mine else query.count(conn, score > query.value(rows[0])) + 1
    return _placed(query, rows, first_rank, start)
