"""The rule kinds of a badge (``rule:`` in the catalog) and the YAML shorthand that names them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.catalog.base import (
    MAX_DISTINCT,
    MAX_STREAK_DAYS,
    MAX_STREAK_WEEKS,
    MAX_TARGET,
    RULE_KINDS,
    BadgeId,
    CatalogModel,
    check_field_path,
)


class RuleModel(CatalogModel):
    """What every rule kind tells readers of the database (``badges.target`` and ``badges.tiers``)."""

    @property
    def target(self) -> float | None:
        """The amount that completes the rule; None for kinds without one (tiers, custom evaluators)."""
        return None

    @property
    def tier_targets(self) -> list[tuple[str, int]] | None:
        """Each tier and its target, in the catalog's order; None for an untiered rule."""
        return None


class CountRule(RuleModel):
    """Awarded when ``count`` qualifying events (distinct event ids) have been seen."""

    kind: Literal["count"] = "count"
    count: int = Field(ge=1, le=MAX_TARGET)

    @property
    def target(self) -> float:
        return float(self.count)


class TiersRule(RuleModel):
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


class DistinctRule(RuleModel):
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
        return check_field_path(value)


class SumRule(RuleModel):
    """Awarded when the field's (non-negative) values add up to ``at_least``."""

    kind: Literal["sum"] = "sum"
    field: str
    at_least: Annotated[int, Field(ge=1, le=2**53)] | Annotated[float, Field(gt=0, le=2.0**53)]

    @field_validator("field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        return check_field_path(value)

    @field_validator("at_least", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("at_least must be a number")
        return value

    @property
    def target(self) -> float:
        return float(self.at_least)


class StreakRule(RuleModel):
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


class BadgesRule(RuleModel):
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


class EvaluatorRule(RuleModel):
    """A custom Python evaluator, registered under ``name``; ``params`` are handed to it as they are."""

    kind: Literal["evaluator"] = "evaluator"
    name: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)


Rule = Annotated[
    CountRule | TiersRule | DistinctRule | SumRule | StreakRule | BadgesRule | EvaluatorRule,
    Field(discriminator="kind"),
]


def expand_rule(value: Any) -> Any:
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
