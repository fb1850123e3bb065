"""Loading a catalog from YAML: line numbers for every node, and every problem collected and reported at once."""

from __future__ import annotations

import re
from collections.abc import Container
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from schemas.catalog.base import MAX_CATALOG_BYTES, MAX_YAML_NODES
from schemas.catalog.checks import CatalogProblems, catalog_problems, describe_problem, validate_catalog
from schemas.catalog.models import Badge, Catalog, Level
from schemas.errors import CatalogError


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




def _badge_label(raw: Any, index: int) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        return str(raw["id"])
    return f"#{index + 1}"


def _validation_problems(
    exc: ValidationError, raw: Any, lines: dict[tuple[str | int, ...], int], source: str
) -> list[str]:
    problems = []
    badges_raw = raw.get("badges") if isinstance(raw, dict) else None
    levels_raw = raw.get("levels") if isinstance(raw, dict) else None
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
            # So does a union (points: a number or a map): points.int reads as points.
            if len(field_path) >= 2 and field_path[0] == "points" and str(field_path[1]).startswith(("int", "dict")):
                del field_path[1]
        owner = "badge"
        if len(loc) >= 2 and loc[0] == "levels" and isinstance(loc[1], int):
            owner = "level"
            badge = _badge_label(levels_raw[loc[1]] if isinstance(levels_raw, list) else None, loc[1])
            field_path = list(loc[2:])
        field = ".".join(str(p) for p in field_path) or (owner if badge else "catalog")
        problems.append(describe_problem(source, line, badge, field, message, owner=owner))
    return problems


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
    levels_raw = raw.get("levels")
    levels: list[Level] = []
    for index, item in enumerate(levels_raw if isinstance(levels_raw, list) else []):
        try:
            level = Level.model_validate(item)
        except ValidationError:
            continue
        for path, line in lines.items():
            if path[:2] == ("levels", index):
                partial_lines[("levels", len(levels), *path[2:])] = line
        levels.append(level)
    partial = Catalog.of_valid_parts(valid, levels, source=source, lines=partial_lines)

    def ids(items: Any) -> set[str]:
        return {str(item["id"]) for item in (items if isinstance(items, list) else [])
                if isinstance(item, dict) and "id" in item}

    return catalog_problems(partial, registry, also_known=ids(badges_raw) | ids(levels_raw),
                            also_badges=ids(badges_raw))


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
        catalog = Catalog.from_yaml(raw, source=source, lines=lines)
    except ValidationError as exc:
        problems = _validation_problems(exc, raw, lines, source)
        problems += _problems_among_valid_badges(raw, lines, source, registry)
        raise CatalogProblems(source, _by_line(problems)) from None
    except RecursionError:
        raise CatalogError(f"{source}: catalog nested too deeply") from None
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
