"""The badge catalog: pydantic models of the YAML file in DESIGN.md, and the loader that refuses a bad one.

Loading never stops at the first problem: every error is collected and reported at once, each
naming the file, the YAML line, the badge and the field, so a badge designer fixes a catalog in
one round. The checks that need the whole catalog (duplicate ids, unknown references, cycles,
CEL syntax and cost, custom evaluator names) live in :func:`validate_catalog`, which the engine
runs again at start-up with its evaluator registry.

``base`` (bounds, id types, the base model), ``rules`` (the rule kinds), ``models`` (badges,
levels, the catalog), ``loader`` (YAML with line numbers, :func:`load_catalog`),
``checks`` (whole-catalog checks) and ``cel`` (expression analysis); this module names what callers use.
"""

from schemas.catalog.cel import ExpressionInfo, analyse_expression
from schemas.catalog.checks import CatalogProblems, catalog_problems, validate_catalog
from schemas.catalog.loader import load_catalog, parse_catalog
from schemas.catalog.models import Badge, Catalog, EventCheck, Level, Nudge, Window
from schemas.catalog.rules import (
    BadgesRule,
    CountRule,
    DistinctRule,
    EvaluatorRule,
    StreakRule,
    SumRule,
    TiersRule,
)

__all__ = [
    "Badge",
    "BadgesRule",
    "Catalog",
    "CatalogProblems",
    "CountRule",
    "DistinctRule",
    "EvaluatorRule",
    "EventCheck",
    "ExpressionInfo",
    "Level",
    "Nudge",
    "StreakRule",
    "SumRule",
    "TiersRule",
    "Window",
    "analyse_expression",
    "catalog_problems",
    "load_catalog",
    "parse_catalog",
    "validate_catalog",
]
