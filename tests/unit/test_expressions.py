"""CEL ``when`` filters: what an expression reads, the memo, and the limits on cost."""

from __future__ import annotations

import orjson
import pytest

from evaluators.expressions import MEMO_ENTRIES, Expression
from evaluators.facts import EventFacts
from schemas.catalog import analyse_expression
from schemas.errors import EvaluatorError
from tests.unit.support import event


def test_references_are_narrowed_to_the_attributes_read() -> None:
    info = analyse_expression("data.score * 100 >= 85 * data.total && local.weekday >= 6 && event.tz != 'UTC'")
    assert info.references == {"data": frozenset({"score", "total"}), "local": frozenset({"weekday"}),
                               "event": frozenset({"tz"})}
    assert analyse_expression("size(data) > 2").references == {"data": None}
    assert analyse_expression("data['quiz-id'] == 'x'").references == {"data": None}
    # A macro variable named like ours shadows it: hand over everything rather than guess.
    assert analyse_expression("[1].exists(data, data > 0)").references == {"data": None}
    assert analyse_expression("'data.x' == \"local.y\"").references == {}


def test_narrowing_does_not_change_answers() -> None:
    facts = EventFacts(event("quiz", score=9, other={"deep": [1, 2]}))
    assert Expression.compile("has(data.score) && !has(data.missing)").matches(facts)
    assert Expression.compile("data.other.deep.size() == 2").matches(facts)
    assert Expression.compile("event.data.score == 9 && event.occurred_at < timestamp('2027-01-01T00:00:00Z')"
                              ).matches(facts)


def test_memo_keeps_types_apart_and_is_bounded() -> None:
    expr = Expression.compile("data.x == 1")
    assert expr.matches(EventFacts(event("q", x=1)))
    assert not expr.matches(EventFacts(event("q", x=True)))  # True == 1 in Python, not in CEL
    assert not expr.matches(EventFacts(event("q", x="1")))
    ordered = Expression.compile("data.x > 0")
    for _ in range(2):  # the second answer comes from the memo, and is the same error
        with pytest.raises(EvaluatorError, match=r"data\.x > 0"):
            ordered.matches(EventFacts(event("q", x="1")))  # no overload for string > int
    for i in range(MEMO_ENTRIES + 10):
        expr.matches(EventFacts(event("q", x=i)))
    assert len(expr._memo) <= MEMO_ENTRIES


def test_errors_say_what_failed() -> None:
    facts = EventFacts(event("q", n=0))
    with pytest.raises(EvaluatorError, match="no such key: 'missing'"):
        Expression.compile("data.missing > 1").matches(facts)
    with pytest.raises(EvaluatorError, match="ZeroDivisionError"):
        Expression.compile("1 / data.n > 0").matches(facts)
    with pytest.raises(EvaluatorError, match="gave int 1, not true or false"):
        Expression.compile("1").matches(facts)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("x" * 1025, "limit is 1024"),
        ("", "empty"),
        ("data.a.all(x, data.b.exists(y, x == y))", "nest 2 deep"),
        ("data.a.map(x, data.b.map(y, data.c.filter(z, z)))", "nest 3 deep"),
        ("data.x >", "not valid CEL"),
    ],
)
def test_limits(source: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        analyse_expression(source)


def test_one_level_of_macros_and_strings_that_look_like_macros_pass() -> None:
    assert analyse_expression("data.a.all(x, x > 0) && data.b.exists(y, y == 'z.map(')").comprehension_depth == 1
    assert analyse_expression(r"data.s == r'.exists(' // .all(x, y.all(z, 1))").comprehension_depth == 0


def test_a_macro_body_may_read_only_its_own_variable() -> None:
    for source in ("data.xs.map(x, data.xs).size() > 0", "data.xs.exists(x, x == data.y)",
                   "data.xs.all(x, local.hour > x)"):
        with pytest.raises(ValueError, match=r"reads '(data|local)' again"):
            analyse_expression(source)
    # The macro's own variable may shadow a name; reading the list itself before the macro is fine.
    assert analyse_expression("[1].exists(data, data > 0)").comprehension_depth == 1
    assert analyse_expression("data.xs.filter(x, x > 3).size() > data.n").comprehension_depth == 1


def test_lists_in_event_data_are_bounded() -> None:
    from schemas.errors import InvalidEventError
    from schemas.events import MAX_LIST_ITEMS, parse_event

    def raw(items: int) -> bytes:
        return orjson.dumps({"event_id": "e", "type": "t", "user_id": "u", "occurred_at": "2026-06-06T10:00:00+00:00",
                             "data": {"answers": {"xs": [0] * items}}})

    assert len(parse_event(raw(MAX_LIST_ITEMS)).data["answers"]["xs"]) == MAX_LIST_ITEMS
    with pytest.raises(InvalidEventError) as too_long:
        parse_event(raw(MAX_LIST_ITEMS + 1))
    assert too_long.value.code == "invalid_envelope" and "data.answers.xs" in too_long.value.reason
