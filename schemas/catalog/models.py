"""The badge catalog as pydantic models of the YAML file in DESIGN.md: events checks, rule kinds, badges."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import date, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    computed_field,
    field_validator,
    model_validator,
)

from schemas.errors import InvalidEventError
from schemas.events import EventEnvelope

MAX_CATALOG_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000
"""Bounds what a catalog file may cost to load (YAML aliases can otherwise multiply nodes)."""

MAX_TARGET = 1_000_000_000
MAX_DISTINCT = 10_000
"""A distinct rule keeps its values until it is met, so its target bounds the state it needs."""

MAX_STREAK_DAYS = 3_660
MAX_STREAK_WEEKS = 520
MAX_POINTS = 1_000_000_000
MAX_LEVELS = 1000
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


class _Rule(_Model):
    """What every rule kind tells readers of the database (``badges.target`` and ``badges.tiers``)."""

    @property
    def target(self) -> float | None:
        """The amount that completes the rule; None for kinds without one (tiers, custom evaluators)."""
        return None

    @property
    def tier_targets(self) -> list[tuple[str, int]] | None:
        """Each tier and its target, in the catalog's order; None for an untiered rule."""
        return None


def _check_field_path(value: str) -> str:
    if not _FIELD_PATH.match(value) or value.split(".", 1)[0] not in FIELD_ROOTS:
        raise ValueError(f"field {value!r} must be 'data.<name>[.<name>...]', 'type' or 'tz'")
    if value.split(".", 1)[0] in ("type", "tz") and "." in value:
        raise ValueError(f"field {value!r}: 'type' and 'tz' have no sub-fields")
    return value


class CountRule(_Rule):
    """Awarded when ``count`` qualifying events (distinct event ids) have been seen."""

    kind: Literal["count"] = "count"
    count: int = Field(ge=1, le=MAX_TARGET)

    @property
    def target(self) -> float:
        return float(self.count)


class TiersRule(_Rule):
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

    @property
    def tier_targets(self) -> list[tuple[str, int]]:
        return list(self.tiers.items())


class DistinctRule(_Rule):
    """Awarded when the field has taken ``count`` distinct values over qualifying events."""

    kind: Literal["distinct"] = "distinct"
    field: str
    count: int = Field(ge=1, le=MAX_DISTINCT)

    @property
    def target(self) -> float:
        return float(self.count)

    @field_validator("field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        return _check_field_path(value)


class SumRule(_Rule):
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

    @property
    def target(self) -> float:
        return float(self.at_least)


class StreakRule(_Rule):
    """``days`` consecutive local calendar days, or ``weeks`` consecutive ISO weeks, each with a qualifying event.

    ``freezes``: how many inactive periods in total a streak may skip between its first and last
    active one (skipped periods do not count towards the length); 0 is the plain streak.
    """

    kind: Literal["streak"] = "streak"
    days: int | None = Field(default=None, ge=1, le=MAX_STREAK_DAYS)
    weeks: int | None = Field(default=None, ge=1, le=MAX_STREAK_WEEKS)
    freezes: int = Field(default=0, ge=0, le=MAX_STREAK_DAYS)

    @model_validator(mode="after")
    def _one_unit(self) -> StreakRule:
        if (self.days is None) == (self.weeks is None):
            raise ValueError("a streak has exactly one of 'days' or 'weeks'")
        return self

    @field_validator("freezes", mode="before")
    @classmethod
    def _freezes_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("freezes must be a whole number >= 0")
        return value

    @property
    def length(self) -> int:
        return self.days if self.days is not None else self.weeks or 0

    @property
    def target(self) -> float:
        return float(self.length)


class BadgesRule(_Rule):
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

    @property
    def target(self) -> float:
        return float(self.needed)


class EvaluatorRule(_Rule):
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


# --- nudges -------------------------------------------------------------------------------------

MAX_NUDGE_THRESHOLDS = 16
Threshold = Annotated[StrictInt, Field(ge=1, le=MAX_TARGET)]


class TierNudge(_Model):
    """The thresholds of one tier, replacing the badge's own for that tier."""

    remaining: list[Threshold] = Field(min_length=1, max_length=MAX_NUDGE_THRESHOLDS)


class Nudge(_Model):
    """``nudge: {remaining: [5, 1]}``: tell the user when only that much is left to earn the badge (or tier).

    ``remaining`` applies to the badge, or to every tier of a tiered badge; ``tiers`` gives some
    tiers their own thresholds. The checks against the targets are in ``checks.nudge_problems``.
    """

    remaining: list[Threshold] = Field(default_factory=list, max_length=MAX_NUDGE_THRESHOLDS)
    tiers: dict[str, TierNudge] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some_thresholds(self) -> Nudge:
        if not self.remaining and not self.tiers:
            raise ValueError("a nudge needs 'remaining' thresholds (or per-tier ones under 'tiers')")
        return self

    def thresholds(self, tier: str | None) -> tuple[int, ...]:
        """The thresholds that apply to ``tier`` (None for an untiered badge), largest first."""
        chosen = self.tiers[tier].remaining if tier is not None and tier in self.tiers else self.remaining
        return tuple(sorted(set(chosen), reverse=True))


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


Points = Annotated[int, Field(ge=0, le=MAX_POINTS)] | dict[str, Annotated[int, Field(ge=0, le=MAX_POINTS)]]
"""A badge's ``points``: one number for every award of it, or (tiered badges) ``{tier: points}`` naming every tier."""


def _check_points(value: Any) -> Any:
    """Refuse what no reading of ``points`` can mean, with a message that says why (not a union's two errors)."""

    def check(number: Any, where: str) -> None:
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"{where} must be a whole number >= 0, got {number!r}")
        if number < 0:
            raise ValueError(f"{where} must be >= 0, got {number}")
        if number > MAX_POINTS:
            raise ValueError(f"{where} must be at most {MAX_POINTS}, got {number}")

    if value is None:
        return value
    if isinstance(value, dict):
        for tier, number in value.items():
            check(number, f"points of tier {tier!r}")
    else:
        check(value, "points")
    return value


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
    nudge: Nudge | None = None
    points: Points | None = None
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

    @field_validator("points", mode="before")
    @classmethod
    def _points(cls, value: Any) -> Any:
        return _check_points(value)

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
        rule = self.rule.model_dump(mode="json")
        if rule.get("freezes") == 0:
            del rule["freezes"]  # a plain streak keeps the fingerprint it had before freezes existed
        # Not ``points``: they do not decide progress, and awards keep the points they were granted with.
        defining = {
            "on": sorted(self.on),
            "when": self.when,
            "window": self.window.model_dump(mode="json", by_alias=True) if self.window else None,
            "rule": rule,
            "requires": sorted(self.requires),
            "repeatable": self.repeatable,
        }
        return hashlib.sha256(orjson.dumps(defining, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    @property
    def display_name(self) -> str:
        return self.name or self.id


class Level(_Model):
    """A level: awarded (as an award with this id, no tier, 0 points) when a user's points first reach ``at``."""

    id: BadgeId
    name: str = ""
    description: str = ""
    at: int = Field(ge=1, le=MAX_POINTS * 1000)

    @field_validator("at", mode="before")
    @classmethod
    def _at_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("at must be a whole number >= 1")
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.id


class Catalog(_Model):
    """The whole catalog; build it with :func:`load_catalog` or :func:`parse_catalog`."""

    catalog_version: str = Field(min_length=1, max_length=128)
    events: dict[EventType, EventCheck] = Field(default_factory=dict)
    badges: list[Badge] = Field(default_factory=list)
    levels: list[Level] = Field(default_factory=list, max_length=MAX_LEVELS)

    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr(default="<catalog>")

    @classmethod
    def from_yaml(cls, raw: Mapping[str, Any], *, source: str, lines: Mapping[tuple[str | int, ...], int]) -> Catalog:
        """Validate the YAML's data; ``lines`` maps each path in it to its line, for messages."""
        return cls.model_validate(raw)._located(source, lines)

    @classmethod
    def of_valid_parts(cls, badges: list[Badge], levels: list[Level], *, source: str,
                       lines: Mapping[tuple[str | int, ...], int]) -> Catalog:
        """A catalog of the badges and levels that are valid on their own, unchecked as a whole: what
        the loader looks for cross-badge problems in while other parts of the file are broken."""
        return cls.model_construct(catalog_version="?", events={}, badges=badges, levels=levels)._located(source,
                                                                                                         lines)

    def _located(self, source: str, lines: Mapping[tuple[str | int, ...], int]) -> Catalog:
        self._lines = dict(lines)
        self._source = source
        return self

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

    @cached_property
    def levels_by_id(self) -> dict[str, Level]:
        return {level.id: level for level in self.levels}

    def tier_ladders(self) -> dict[str, tuple[tuple[str, float], ...]]:
        """Per tiered badge, its (tier, target) by target: what :func:`schemas.records.expand_tiers` needs."""
        return {badge.id: tuple((name, float(target)) for name, target in badge.rule.ordered())
                for badge in self.badges if isinstance(badge.rule, TiersRule)}

    def event_types(self) -> set[str]:
        """Every event type the catalog knows: listened to by a badge or checked under ``events``."""
        types = set(self.events)
        for badge in self.badges:
            types.update(badge.on)
        return types

    @cached_property
    def fingerprint(self) -> str:
        """Hash over every badge's fingerprint and the levels: changes exactly when some award's meaning changes."""
        parts = sorted(f"{badge.id}={badge.fingerprint}" for badge in self.badges)
        # Levels only when there are some, so a catalog without them keeps its fingerprint; a
        # changed level makes every stored state re-check its levels on the user's next event.
        parts += [f"level {level.id}={level.at}" for level in self.levels]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def validate_event_data(self, event: EventEnvelope) -> None:
        """Apply the ``events:`` checks for the event's type; raises ``InvalidEventError("invalid_data", ...)``."""
        check = self.events.get(event.type)
        if check is not None:
            check.check(event.data)
