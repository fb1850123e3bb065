"""The badge catalog as pydantic models of the YAML file in DESIGN.md: event checks, nudges, windows, badges, levels."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date, datetime
from functools import cached_property
from typing import Annotated, Any

import orjson
from pydantic import (
    Field,
    PrivateAttr,
    StrictInt,
    computed_field,
    field_validator,
    model_validator,
)

from schemas.catalog.base import (
    MAX_EXPRESSION_CHARS,
    MAX_LEVELS,
    MAX_POINTS,
    MAX_TARGET,
    REPEATABLE_KINDS,
    BadgeId,
    CatalogModel,
    EventType,
    FieldType,
)
from schemas.catalog.rules import (
    Rule,
    TiersRule,
    expand_rule,
)
from schemas.errors import InvalidEventError
from schemas.events import EventEnvelope

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


class EventCheck(CatalogModel):
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


# --- nudges -------------------------------------------------------------------------------------

MAX_NUDGE_THRESHOLDS = 16
Threshold = Annotated[StrictInt, Field(ge=1, le=MAX_TARGET)]


class TierNudge(CatalogModel):
    """The thresholds of one tier, replacing the badge's own for that tier."""

    remaining: list[Threshold] = Field(min_length=1, max_length=MAX_NUDGE_THRESHOLDS)


class Nudge(CatalogModel):
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


class Window(CatalogModel):
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


class Badge(CatalogModel):
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
        return expand_rule(value)

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


class Level(CatalogModel):
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


class Catalog(CatalogModel):
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
