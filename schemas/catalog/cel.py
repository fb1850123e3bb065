"""CEL ``when`` filters as the catalog sees them: syntax, a cost bound, and the fields an expression reads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import cel

from schemas.catalog.base import MAX_COMPREHENSION_DEPTH, MAX_EXPRESSION_CHARS

_CEL_TOKEN = re.compile(
    r"""
      (?P<comment>//[^\n]*)
    | (?P<raw>(?:[rR][bB]?|[bB][rR])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*"))
    | (?P<string>[bB]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
    | (?P<number>0[xX][0-9a-fA-F]+[uU]?|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[uU]?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<space>\s+)
    | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)

COMPREHENSION_MACROS = frozenset(
    {"all", "exists", "exists_one", "existsOne", "map", "filter", "transformList", "transformMap",
     "transformMapEntry", "sortBy"}
)
WHEN_VARIABLES = ("event", "data", "local")


def _cel_tokens(source: str) -> list[tuple[str, str]]:
    """(kind, text) of every meaningful token; strings and comments are opaque, so their text cannot fool us."""
    tokens = []
    for match in _CEL_TOKEN.finditer(source):
        kind = match.lastgroup or "punct"
        if kind in ("space", "comment"):
            continue
        tokens.append(("string" if kind == "raw" else kind, match.group()))
    return tokens


@dataclass(frozen=True)
class ExpressionInfo:
    """A compiled ``when`` and what it reads: per variable, the attributes used, or None for "all of it"."""

    source: str
    program: cel.Program
    references: Mapping[str, frozenset[str] | None]
    comprehension_depth: int


def analyse_expression(source: str) -> ExpressionInfo:
    """Compile a ``when`` expression and check its limits; raises ``ValueError`` saying what is wrong.

    Limits: at most :data:`MAX_EXPRESSION_CHARS` characters, comprehension macros nested at most
    :data:`MAX_COMPREHENSION_DEPTH` deep, and a macro body that reads only its own variable; with lists
    in events bounded by ``schemas.events.MAX_LIST_ITEMS`` this bounds the cost of one evaluation.
    """
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression is {len(source)} characters, the limit is {MAX_EXPRESSION_CHARS}")
    if not source.strip():
        raise ValueError("expression is empty")
    try:
        program = cel.compile(source)
    except Exception as exc:  # the binding raises ValueError, but a parser must never crash the loader
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"not valid CEL: {first}") from None
    tokens = _cel_tokens(source)
    stack: list[bool] = []
    bound: list[str] = []  # the iteration variable of each open macro
    depth = deepest = 0
    rereads: str | None = None  # a variable read again inside a macro body
    references: dict[str, set[str] | None] = {}
    for index, (kind, text) in enumerate(tokens):
        previous = tokens[index - 1][1] if index else ""
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "punct" and text == "(":
            is_macro = index >= 2 and tokens[index - 2][1] == "." and tokens[index - 1][1] in COMPREHENSION_MACROS
            stack.append(is_macro)
            if is_macro:
                depth += 1
                deepest = max(deepest, depth)
                bound.append(following)
        elif kind == "punct" and text == ")" and stack and stack.pop():
            depth -= 1
            bound.pop()
        elif kind == "ident" and text in WHEN_VARIABLES and previous != ".":
            if depth and text not in bound and rereads is None:
                rereads = text
            attribute = tokens[index + 2] if following == "." and index + 2 < len(tokens) else None
            used = references.setdefault(text, set())
            if attribute is not None and attribute[0] == "ident" and used is not None:
                used.add(attribute[1])
            else:
                references[text] = None  # used as a whole (indexed, passed, shadowed): hand over all of it
    if deepest > MAX_COMPREHENSION_DEPTH:
        raise ValueError(
            f"comprehension macros nest {deepest} deep, the limit is {MAX_COMPREHENSION_DEPTH} "
            "(each level multiplies the cost by the size of a list)"
        )
    if rereads is not None:
        # data.xs.map(x, data.xs) builds a list-sized value for every item: cost grows with the
        # square of the list (and this CEL binding copies accumulators, so worse). Inside a macro
        # body only the macro's own variable and constants are allowed.
        raise ValueError(
            f"a comprehension macro's body reads '{rereads}' again, which multiplies the cost by the size "
            "of the list; inside a macro use only its own variable and constants"
        )
    frozen = {name: (frozenset(used) if used is not None else None) for name, used in references.items()}
    return ExpressionInfo(source=source, program=program, references=frozen, comprehension_depth=deepest)


def top_level_operands(source: str) -> tuple[str | None, list[str]]:
    """Split an expression at its top-level ``||`` (or, if there is none, its top-level ``&&``).

    Returns the operator and the operands' source text, stripped: ``("&&", ["a > 1", "b"])``; or
    ``(None, [source])`` when there is nothing to split (a ternary at top level is not split either).
    ``||`` binds looser than ``&&``, so splitting at ``||`` first keeps each operand's meaning.
    Strings and comments are opaque, as in :func:`analyse_expression`. For explanations only.
    """
    depth = 0
    cuts: dict[str, list[tuple[int, int]]] = {"||": [], "&&": []}
    previous: tuple[str, int] | None = None  # the last punctuation character and where it was
    for match in _CEL_TOKEN.finditer(source):
        kind, text, at = match.lastgroup or "punct", match.group(), match.start()
        if kind in ("space", "comment"):
            continue
        if kind == "punct":
            if text in "([{":
                depth += 1
            elif text in ")]}":
                depth -= 1
            elif depth == 0 and text == "?":
                return None, [source.strip()]
            elif depth == 0 and text in "|&" and previous == (text, at - 1):
                cuts["||" if text == "|" else "&&"].append((at - 1, at + 1))
                previous = None
                continue
        previous = (text, at) if kind == "punct" else None
    for operator in ("||", "&&"):
        if cuts[operator]:
            parts, start = [], 0
            for begin, end in cuts[operator]:
                parts.append(source[start:begin].strip())
                start = end
            parts.append(source[start:].strip())
            return operator, parts
    return None, [source.strip()]
