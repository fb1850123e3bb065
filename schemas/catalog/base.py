"""What every catalog model shares: the bounds a catalog may not exceed, id and field types, the base model."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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

ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$"
FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")

FieldType = Literal["string", "int", "number", "bool", "list", "object"]
BadgeId = Annotated[str, Field(pattern=ID_PATTERN)]
EventType = Annotated[str, Field(min_length=1, max_length=256)]


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_field_path(value: str) -> str:
    if not FIELD_PATH.match(value) or value.split(".", 1)[0] not in FIELD_ROOTS:
        raise ValueError(f"field {value!r} must be 'data.<name>[.<name>...]', 'type' or 'tz'")
    if value.split(".", 1)[0] in ("type", "tz") and "." in value:
        raise ValueError(f"field {value!r}: 'type' and 'tz' have no sub-fields")
    return value
