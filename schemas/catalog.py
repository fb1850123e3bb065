"""The badge catalog: pydantic models of the YAML file in DESIGN.md, and the loader that refuses a bad one.

Loading never stops at the first problem: every error is collected and reported at once, each
naming the file, the YAML line, the badge and the field, so a badge designer fixes a catalog in
one round. The checks that need the whole catalog (duplicate ids, unknown references, cycles,
CEL syntax and cost, custom evaluator names) live in :func:`validate_catalog`, which the engine
runs again at start-up with its evaluator registry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import cel
import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from schemas.errors import CatalogError, InvalidEventError
from schemas.events import EventEnvelope

MAX_CATALOG_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000
"""Bounds what a catalog file may cost to load (YAML aliases can otherwise multiply nodes)."""

MAX_TARGET = 1_000_000_000
MAX_DISTINCT = 10_000
"""A distinct rule keeps its values until it is met, so its target bounds the state it needs."""

MAX_STREAK_DAYS = 3_660
MAX_STREAK_WEEKS = 520
MAX_EXPRESSION_CHARS = 1024
MAX_COMPREHENSION_DEPTH = 1
"""CEL macros (``all``, ``exists``, ``map``, ...) may not nest: one level costs at most one pass over
a list of a (64 KiB-bounded) event, two levels could cost its square."""

RULE_KINDS = ("count", "tiers", "distinct", "sum", "streak", "badges", "evaluator")
REPEATABLE_KINDS = frozenset({"count", "sum", "evaluator"})
"""Kinds whose target can be met again and again; on the others ``repeatable`` is refused."""

FIELD_ROOTS = ("data", "type", "tz")
"""Where a ``distinct``/``sum`` field may point: into ``data`` (``data.a.b``), or the envelope's type or tz."""

_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$"
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")

FieldType = Literal["string", "int", "number", "bool", "list", "object"]
BadgeId = Annotated[str, Field(pattern=_ID_PATTERN)]
EventType = Annotated[str, Field(min_length=1, max_length=256)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- per-type event checks -------------------------------------------------------------------


def _type_matches(value: Any, expected: str) -> bool:
    if expected == "string":
        return isinstance(value, str)
    if expected == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "bool":
        return isinstance(value, bool)
    if expected == "list":
        return isinstance(value, list)
    return isinstance(value, dict)


def _json_type(value: Any) -> str:
    for name in ("bool", "int", "number", "string", "list", "object"):
        if _type_matches(value, name):
            return name
    return "null" if value is None else type(value).__name__


class EventCheck(_Model):
    """Per-type checks on ``data``: fields that must be present, fields that may be, and their types."""

    required: dict[str, FieldType] = Field(default_factory=dict)
    optional: dict[str, FieldType] = Field(default_factory=dict)

    def check(self, data: Mapping[str, Any]) -> None:
        for name, expected in self.required.items():
            if name not in data:
                raise InvalidEventError("invalid_data", f"data.{name}: required field is missing")
            if not _type_matches(data[name], expected):
                raise InvalidEventError(
                    "invalid_data", f"data.{name}: expected {expected}, got {_json_type(data[name])}"
                )
        for name, expected in self.optional.items():
            if name in data and not _type_matches(data[name], expected):
                raise InvalidEventError(
                    "invalid_data", f"data.{name}: expected {expected}, got {_json_type(data[name])}"
                )


# --- rules -------------------------------------------------------------------------------------


def _check_field_path(value: str) -> str:
    if not _FIELD_PATH.match(value) or value.split(".", 1)[0] not in FIELD_ROOTS:
        raise ValueError(f"field {value!r} must be 'data.<name>[.<name>...]', 'type' or 'tz'")
    if value.split(".", 1)[0] in ("type", "tz") and "." in value:
        raise ValueError(f"field {value!r}: 'type' and 'tz' have no sub-fields")
    return value


class CountRule(_Model):
    """Awarded when ``count`` qualifying events (distinct event ids) have been seen."""

    kind: Literal["count"] = "count"
    count: int = Field(ge=1, le=MAX_TARGET)


class TiersRule(_Model):
    """A count with named tiers, each awarded once when its own count is reached."""

    kind: Literal["tiers"] = "tiers"
    tiers: dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[int, Field(ge=1, le=MAX_TARGET)]]

    @field_validator("tiers")
    @classmethod
    def _some_tiers(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            raise ValueError("at least one tier is needed")
        return value

    def ordered(self) -> list[tuple[str, int]]:
        """Tiers by target (then by the catalog's order): the order in which a count reaches them."""
        return sorted(self.tiers.items(), key=lambda item: item[1])


class DistinctRule(_Model):
    """Awarded when the field has taken ``count`` distinct values over qualifying events."""

    kind: Literal["distinct"] = "distinct"
    field: str
    count: int = Field(ge=1, le=MAX_DISTINCT)

    @field_validator("field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        return _check_field_path(value)


class SumRule(_Model):
    """Awarded when the field's (non-negative) values add up to ``at_least``."""

    kind: Literal["sum"] = "sum"
    field: str
    at_least: Annotated[int, Field(ge=1, le=2**53)] | Annotated[float, Field(gt=0, le=2.0**53)]

    @field_validator("field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        return _check_field_path(value)

    @field_validator("at_least", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("at_least must be a number")
        return value


class StreakRule(_Model):
    """``days`` consecutive local calendar days, or ``weeks`` consecutive ISO weeks, each with a qualifying event."""

    kind: Literal["streak"] = "streak"
    days: int | None = Field(default=None, ge=1, le=MAX_STREAK_DAYS)
    weeks: int | None = Field(default=None, ge=1, le=MAX_STREAK_WEEKS)

    @model_validator(mode="after")
    def _one_unit(self) -> StreakRule:
        if (self.days is None) == (self.weeks is None):
            raise ValueError("a streak has exactly one of 'days' or 'weeks'")
        return self

    @property
    def length(self) -> int:
        return self.days if self.days is not None else self.weeks or 0


class BadgesRule(_Model):
    """A meta-badge: held all listed badges, or ``at_least`` of them."""

    kind: Literal["badges"] = "badges"
    badges: list[BadgeId] = Field(min_length=1, max_length=1000)
    at_least: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> BadgesRule:
        if len(set(self.badges)) != len(self.badges):
            raise ValueError("a badge is listed twice")
        if self.at_least is not None and self.at_least > len(self.badges):
            raise ValueError(f"at_least is {self.at_least} but only {len(self.badges)} badges are listed")
        return self

    @property
    def needed(self) -> int:
        return self.at_least if self.at_least is not None else len(self.badges)


class EvaluatorRule(_Model):
    """A custom Python evaluator, registered under ``name``; ``params`` are handed to it as they are."""

    kind: Literal["evaluator"] = "evaluator"
    name: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)


Rule = Annotated[
    CountRule | TiersRule | DistinctRule | SumRule | StreakRule | BadgesRule | EvaluatorRule,
    Field(discriminator="kind"),
]


def _expand_rule(value: Any) -> Any:
    """The YAML shorthand (``{count: 3}``, ``{streak: {days: 7}}``, ``{evaluator: comeback}``) to tagged form."""
    if not isinstance(value, dict) or "kind" in value:
        return value
    kinds = [key for key in value if key in RULE_KINDS]
    if not kinds:
        unknown = ", ".join(repr(k) for k in value) or "nothing"
        raise ValueError(f"unknown rule kind {unknown} (expected one of {', '.join(RULE_KINDS)})")
    if len(kinds) > 1:
        raise ValueError(f"a rule has exactly one kind, got {' and '.join(kinds)}")
    kind = kinds[0]
    body = value[kind]
    rest = {k: v for k, v in value.items() if k != kind}
    if kind in ("count", "tiers") or (kind == "badges" and isinstance(body, list)):
        return {"kind": kind, kind: body, **rest}
    if kind == "evaluator" and isinstance(body, str):
        return {"kind": kind, "name": body, **rest}
    if isinstance(body, dict):
        if rest:
            raise ValueError(f"unexpected keys next to {kind!r}: {', '.join(rest)}")
        return {"kind": kind, **body}
    raise ValueError(f"rule {kind!r} expects a mapping, got {body!r}")


# --- badges --------------------------------------------------------------------------------------


class Window(_Model):
    """Local dates during which events qualify: ``from`` inclusive, ``until`` exclusive."""

    from_: date | None = Field(default=None, alias="from")
    until: date | None = None

    @field_validator("from_", "until", mode="before")
    @classmethod
    def _date_only(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            raise ValueError("a window bound is a date 'YYYY-MM-DD', not a timestamp")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.from_ is None and self.until is None:
            raise ValueError("a window needs 'from', 'until' or both")
        if self.from_ is not None and self.until is not None and self.from_ >= self.until:
            raise ValueError(f"window 'from' ({self.from_}) must be before 'until' ({self.until})")
        return self


class Badge(_Model):
    """One badge of the catalog (see DESIGN.md "Meaning, precisely")."""

    id: BadgeId
    name: str = ""
    description: str = ""
    on: list[EventType] = Field(default_factory=list)
    when: str | None = None
    window: Window | None = None
    requires: list[BadgeId] = Field(default_factory=list)
    repeatable: bool = False
    hidden: bool = False
    rule: Rule

    @model_validator(mode="before")
    @classmethod
    def _drop_fingerprint(cls, value: Any) -> Any:
        # A dumped badge carries its computed fingerprint; reading it back must not trip extra="forbid".
        if isinstance(value, dict) and "fingerprint" in value:
            value = {k: v for k, v in value.items() if k != "fingerprint"}
        return value

    @field_validator("rule", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _expand_rule(value)

    @field_validator("when")
    @classmethod
    def _when_bounded(cls, value: str | None) -> str | None:
        if value is not None and len(value) > MAX_EXPRESSION_CHARS:
            raise ValueError(f"expression is {len(value)} characters, the limit is {MAX_EXPRESSION_CHARS}")
        return value

    @model_validator(mode="after")
    def _kind_fits(self) -> Badge:
        kind = self.rule.kind
        if self.repeatable and kind not in REPEATABLE_KINDS:
            raise ValueError(
                f"repeatable makes no sense for a {kind!r} rule (only {', '.join(sorted(REPEATABLE_KINDS))})"
            )
        if kind == "badges":
            for name in ("on", "when", "window"):
                if getattr(self, name):
                    raise ValueError(f"a 'badges' rule is evaluated on awards, not events: remove {name!r}")
        elif not self.on:
            raise ValueError("'on' must list at least one event type for this rule")
        if len(set(self.on)) != len(self.on):
            raise ValueError("'on' lists an event type twice")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @cached_property
    def fingerprint(self) -> str:
        """Hash of the fields that decide progress; stored state made under another one is not mixed in."""
        defining = {
            "on": sorted(self.on),
            "when": self.when,
            "window": self.window.model_dump(mode="json", by_alias=True) if self.window else None,
            "rule": self.rule.model_dump(mode="json"),
            "requires": sorted(self.requires),
            "repeatable": self.repeatable,
        }
        return hashlib.sha256(orjson.dumps(defining, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    @property
    def display_name(self) -> str:
        return self.name or self.id


class Catalog(_Model):
    """The whole catalog; build it with :func:`load_catalog` or :func:`parse_catalog`."""

    catalog_version: str = Field(min_length=1, max_length=128)
    events: dict[EventType, EventCheck] = Field(default_factory=dict)
    badges: list[Badge] = Field(default_factory=list)

    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr(default="<catalog>")

    @field_validator("catalog_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # An unquoted YAML date or number is what the author meant as the version text.
        if isinstance(value, date | int | float) and not isinstance(value, bool):
            return value.isoformat() if isinstance(value, date) else str(value)
        return value

    @property
    def source(self) -> str:
        return self._source

    def line_of(self, *path: str | int) -> int | None:
        """The YAML line of ``path`` (or of its nearest parent), when the catalog came from YAML."""
        for end in range(len(path), 0, -1):
            line = self._lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    @cached_property
    def badges_by_id(self) -> dict[str, Badge]:
        return {badge.id: badge for badge in self.badges}

    def badge(self, badge_id: str) -> Badge:
        return self.badges_by_id[badge_id]

    def event_types(self) -> set[str]:
        """Every event type the catalog knows: listened to by a badge or checked under ``events``."""
        types = set(self.events)
        for badge in self.badges:
            types.update(badge.on)
        return types

    @cached_property
    def fingerprint(self) -> str:
        """Hash over every badge's fingerprint: changes exactly when some badge's meaning changes."""
        parts = sorted(f"{badge.id}={badge.fingerprint}" for badge in self.badges)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def validate_event_data(self, event: EventEnvelope) -> None:
        """Apply the ``events:`` checks for the event's type; raises ``InvalidEventError("invalid_data", ...)``."""
        check = self.events.get(event.type)
        if check is not None:
            check.check(event.data)


# --- CEL: syntax, cost bound, referenced fields ----------------------------------------------------

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


# --- YAML with line numbers --------------------------------------------------------------------------


def _load_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Parse YAML into plain values, recording the line of every node by its path.

    Mapping keys are taken as written (so ``on:`` stays the string "on", not YAML 1.1's ``True``),
    duplicate keys are refused instead of silently keeping the last one, and aliases may not recurse.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(f"{where}: not valid YAML: {problem}") from None
    lines: dict[tuple[str | int, ...], int] = {}
    constructor = yaml.constructor.SafeConstructor()
    budget = [MAX_YAML_NODES]

    def walk(node: yaml.Node, path: tuple[str | int, ...], active: frozenset[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise CatalogError(f"{source}: more than {MAX_YAML_NODES} YAML nodes (aliases expanded)")
        line = node.start_mark.line + 1
        lines.setdefault(path, line)
        if id(node) in active:
            raise CatalogError(f"{source}:{line}: a YAML alias refers to itself")
        if isinstance(node, yaml.MappingNode):
            constructor.flatten_mapping(node)  # resolve '<<' merge keys
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise CatalogError(f"{source}:{key_node.start_mark.line + 1}: mapping keys must be plain text")
                key = str(key_node.value)
                if key in result:
                    raise CatalogError(f"{source}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
                result[key] = walk(value_node, (*path, key), active | {id(node)})
            return result
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*path, i), active | {id(node)}) for i, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    try:
        data = walk(root, (), frozenset()) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise CatalogError(f"{where}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise CatalogError(f"{source}: YAML nested too deeply") from None
    return data, lines


# --- loading and validating -----------------------------------------------------------------------------


class CatalogProblems(CatalogError):
    """Every problem found in a catalog; ``problems`` lists them one by one, the message joins them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid catalog {source} ({count}):\n  " + "\n  ".join(problems))


def _describe(source: str, line: int | None, badge: str | None, field: str, message: str) -> str:
    where = f"{source}:{line}" if line is not None else source
    what = f"badge {badge!r}, field {field!r}" if badge is not None else f"field {field!r}"
    return f"{where}: {what}: {message}"


def _badge_label(raw: Any, index: int) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        return str(raw["id"])
    return f"#{index + 1}"


def _validation_problems(
    exc: ValidationError, raw: Any, lines: dict[tuple[str | int, ...], int], source: str
) -> list[str]:
    problems = []
    badges_raw = raw.get("badges") if isinstance(raw, dict) else None
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        line = None
        for end in range(len(loc), 0, -1):
            line = lines.get(loc[:end])
            if line is not None:
                break
        badge = None
        field_path = list(loc)
        if len(loc) >= 2 and loc[0] == "badges" and isinstance(loc[1], int):
            badge = _badge_label(badges_raw[loc[1]] if isinstance(badges_raw, list) else None, loc[1])
            field_path = list(loc[2:])
            # The discriminated union puts the tag in the path: rule.count.count reads as rule.count.
            if len(field_path) >= 3 and field_path[0] == "rule" and field_path[1] == field_path[2]:
                del field_path[1]
        field = ".".join(str(p) for p in field_path) or ("badge" if badge else "catalog")
        problems.append(_describe(source, line, badge, field, message))
    return problems


def _find_cycles(catalog: Catalog) -> list[list[str]]:
    """Cycles among ``requires`` and meta-badge lists, each once, in catalog order."""
    edges: dict[str, list[str]] = {}
    for badge in catalog.badges:
        targets = list(badge.requires)
        if isinstance(badge.rule, BadgesRule):
            targets += badge.rule.badges
        edges.setdefault(badge.id, []).extend(t for t in targets if t in catalog.badges_by_id)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative depth-first search: a long chain of prerequisites must not hit the recursion limit.
        path: list[str] = [start]
        iters: list[Iterator[str]] = [iter(edges.get(start, []))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(edges.get(nxt, [])))

    for badge in catalog.badges:
        if badge.id not in state:
            visit(badge.id)
    return cycles


def catalog_problems(
    catalog: Catalog, registry: Container[str] | None = None, also_known: Container[str] = frozenset()
) -> list[str]:
    """Every cross-badge problem of an (individually valid) catalog, as messages naming badge, field, line.

    ``also_known``: ids of badges that exist but were left out (invalid on their own); not "unknown".
    """
    source = catalog.source
    known = catalog.badges_by_id
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for index, badge in enumerate(catalog.badges):
        def say(field: str, message: str, *path: str | int, _i: int = index, _b: Badge = badge) -> None:
            problems.append(_describe(source, catalog.line_of("badges", _i, *path), _b.id, field, message))

        if badge.id in first_seen:
            say("id", f"duplicate badge id (first defined on line {first_seen[badge.id]})", "id")
        else:
            first_seen[badge.id] = catalog.line_of("badges", index, "id") or index + 1
        for position, required in enumerate(badge.requires):
            if required == badge.id:
                say("requires", "a badge cannot require itself", "requires", position)
            elif required not in known and required not in also_known:
                say("requires", f"unknown badge {required!r}", "requires", position)
        if isinstance(badge.rule, BadgesRule):
            for position, listed in enumerate(badge.rule.badges):
                if listed == badge.id:
                    say("rule.badges", "a meta-badge cannot list itself", "rule", "badges", position)
                elif listed not in known and listed not in also_known:
                    say("rule.badges", f"unknown badge {listed!r}", "rule", "badges", position)
        if badge.when is not None:
            try:
                analyse_expression(badge.when)
            except ValueError as exc:
                say("when", str(exc), "when")
        if isinstance(badge.rule, EvaluatorRule) and registry is not None and badge.rule.name not in registry:
            say("rule.evaluator", f"unknown custom evaluator {badge.rule.name!r}", "rule", "evaluator")
    for cycle in _find_cycles(catalog):
        start = catalog.badges_by_id[cycle[0]]
        index = catalog.badges.index(start)
        field = "rule.badges" if isinstance(start.rule, BadgesRule) and cycle[1] in start.rule.badges else "requires"
        problems.append(
            _describe(source, catalog.line_of("badges", index, *field.split(".")), start.id, field,
                      "cycle among requires/badges: " + " -> ".join(cycle))
        )
    return problems


def validate_catalog(catalog: Catalog, registry: Container[str] | None = None) -> None:
    """Raise :class:`CatalogProblems` if the catalog refers to unknown badges or evaluators, loops, or has bad CEL.

    ``registry`` is anything that answers ``name in registry`` (an ``EvaluatorRegistry``); without it
    custom evaluator names are not checked (the engine checks them with its own registry).
    """
    problems = catalog_problems(catalog, registry)
    if problems:
        raise CatalogProblems(catalog.source, problems)


def _problems_among_valid_badges(
    raw: dict[str, Any], lines: dict[tuple[str | int, ...], int], source: str, registry: Container[str] | None
) -> list[str]:
    """Cross-badge problems among the badges that are valid on their own, so one round shows everything."""
    badges_raw = raw.get("badges")
    if not isinstance(badges_raw, list):
        return []
    valid: list[Badge] = []
    partial_lines: dict[tuple[str | int, ...], int] = {}
    for index, item in enumerate(badges_raw):
        try:
            badge = Badge.model_validate(item)
        except (ValidationError, RecursionError):
            continue
        for path, line in lines.items():
            if path[:2] == ("badges", index):
                partial_lines[("badges", len(valid), *path[2:])] = line
        valid.append(badge)
    partial = Catalog.model_construct(catalog_version="?", events={}, badges=valid)
    partial._lines = partial_lines
    partial._source = source
    present = {str(item["id"]) for item in badges_raw if isinstance(item, dict) and "id" in item}
    return catalog_problems(partial, registry, also_known=present)


def _by_line(problems: list[str]) -> list[str]:
    def line(problem: str) -> int:
        match = re.match(r"^.*?:(\d+): ", problem)
        return int(match.group(1)) if match else 0

    return sorted(problems, key=line)


def parse_catalog(text: str, source: str = "<string>", registry: Container[str] | None = None) -> Catalog:
    """Parse and fully validate a catalog from YAML text; raises :class:`CatalogError` listing every problem."""
    if not isinstance(text, str):
        raise CatalogError(f"{source}: a catalog is text")
    if len(text) > MAX_CATALOG_BYTES:
        raise CatalogError(f"{source}: catalog is {len(text)} characters, the limit is {MAX_CATALOG_BYTES}")
    raw, lines = _load_yaml(text, source)
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: a catalog is a mapping with catalog_version, events and badges")
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        problems = _validation_problems(exc, raw, lines, source)
        problems += _problems_among_valid_badges(raw, lines, source, registry)
        raise CatalogProblems(source, _by_line(problems)) from None
    except RecursionError:
        raise CatalogError(f"{source}: catalog nested too deeply") from None
    catalog._lines = lines
    catalog._source = source
    validate_catalog(catalog, registry)
    return catalog


def load_catalog(path: str | Path, registry: Container[str] | None = None) -> Catalog:
    """Read and validate a catalog file; raises :class:`CatalogError` naming file, line, badge and field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: the catalog is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return parse_catalog(text, source=str(path), registry=registry)

