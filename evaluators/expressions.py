"""``when`` filters in CEL: compiled once per badge, evaluated safely and cheaply per event.

Safety: an expression is at most 1024 characters and its comprehension macros (``all``,
``exists``, ``map``, ``filter``, ...) may not nest (see :func:`schemas.catalog.analyse_expression`),
so one evaluation costs at most about one pass over the event's (64 KiB-bounded) data per macro.
We bound cost statically rather than by timing: a timeout would make decisions depend on the
machine, and the engine must decide the same way on every replay.

Speed: converting variables into CEL values dominates the cost of an evaluation, so each
expression receives only the attributes of ``event``, ``data`` and ``local`` it reads, and the
results of expressions over plain scalar inputs (``local.weekday >= 6``) are memoised — a pure
function of those inputs, so the cache changes no decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluators.facts import EventFacts
from schemas.catalog import ExpressionInfo, analyse_expression
from schemas.errors import EvaluatorError

MEMO_ENTRIES = 4096
"""Results remembered per expression; the memo is emptied when full (bounded memory, same answers)."""

_SCALARS = (str, int, float, bool, type(None))
_MISSING = object()

Getter = Callable[[EventFacts], dict[str, Any]]


def _getter(variable: str, attributes: frozenset[str] | None) -> Getter:
    """A function building one CEL variable for an event, restricted to the attributes used."""
    if variable == "data":
        if attributes is None:
            return lambda facts: facts.event.data
        names = tuple(sorted(attributes))
        return lambda facts: {name: facts.event.data[name] for name in names if name in facts.event.data}
    source: Callable[[EventFacts], dict[str, Any]] = (
        (lambda facts: facts.local_vars) if variable == "local" else (lambda facts: facts.event_vars)
    )
    if attributes is None:
        return source
    names = tuple(sorted(attributes))
    return lambda facts: {name: value for name in names if (value := source(facts).get(name, _MISSING)) is not _MISSING}


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0]!r}" if exc.args else "no such key"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Expression:
    """A compiled ``when``; :meth:`matches` answers for one event or raises :class:`EvaluatorError`."""

    __slots__ = ("_getters", "_memo", "_program", "source")

    def __init__(self, info: ExpressionInfo) -> None:
        self.source = info.source
        self._program = info.program
        self._getters = tuple((name, _getter(name, used)) for name, used in sorted(info.references.items()))
        self._memo: dict[tuple[Any, ...], bool | str] = {}

    @classmethod
    def compile(cls, source: str) -> Expression:
        """Compile with the catalog's limits; raises ``ValueError`` saying what is wrong."""
        return cls(analyse_expression(source))

    def _key(self, context: dict[str, dict[str, Any]]) -> tuple[Any, ...] | None:
        """A memo key if every input is a plain scalar; the type is part of it (CEL tells 1 from 1.0 and true)."""
        key: list[Any] = []
        for name, values in context.items():
            key.append(name)
            for attribute, value in values.items():
                if not isinstance(value, _SCALARS):
                    return None
                key.append(attribute)
                key.append(type(value))
                key.append(value)
        return tuple(key)

    def matches(self, facts: EventFacts) -> bool:
        context = {name: get(facts) for name, get in self._getters}
        key = self._key(context)
        if key is not None:
            known = self._memo.get(key)
            if known is not None:
                if isinstance(known, str):
                    raise EvaluatorError(known)
                return known
        outcome: bool | str
        try:
            result = self._program.execute(context)
        except Exception as exc:  # the CEL binding raises many kinds; every one means "does not qualify"
            outcome = f"when {self.source!r} failed: {_describe(exc)}"
        else:
            if isinstance(result, bool):
                outcome = result
            else:
                outcome = f"when {self.source!r} gave {type(result).__name__} {result!r}, not true or false"
        if key is not None:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[key] = outcome
        if isinstance(outcome, str):
            raise EvaluatorError(outcome)
        return outcome
