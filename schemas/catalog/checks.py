"""Checks that need the whole catalog: duplicate ids, unknown references, cycles, CEL, custom evaluator names,
points that must match a badge's tiers, and levels (increasing, not clashing with a badge).

Every problem is reported as a message naming file, line, badge and field.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

from schemas.catalog.cel import analyse_expression
from schemas.catalog.models import Badge, Catalog
from schemas.catalog.rules import (
    BadgesRule,
    CountRule,
    DistinctRule,
    EvaluatorRule,
    StreakRule,
    SumRule,
    TiersRule,
)
from schemas.errors import CatalogError


class CatalogProblems(CatalogError):
    """Every problem found in a catalog; ``problems`` lists them one by one, the message joins them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid catalog {source} ({count}):\n  " + "\n  ".join(problems))


def describe_problem(source: str, line: int | None, badge: str | None, field: str, message: str,
              owner: str = "badge") -> str:
    """``owner`` says what ``badge`` names: a badge, or a level (``levels:`` entries)."""
    where = f"{source}:{line}" if line is not None else source
    what = f"{owner} {badge!r}, field {field!r}" if badge is not None else f"field {field!r}"
    return f"{where}: {what}: {message}"


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


def rule_targets(badge: Badge) -> dict[str | None, float] | None:
    """What each tier (None: the badge) of a rule must reach; None for a custom evaluator (known only when it runs)."""
    rule = badge.rule
    if isinstance(rule, TiersRule):
        return {tier: target for tier, target in rule.tiers.items()}
    if isinstance(rule, CountRule | DistinctRule):
        return {None: rule.count}
    if isinstance(rule, SumRule):
        return {None: rule.at_least}
    if isinstance(rule, StreakRule):
        return {None: rule.length}
    if isinstance(rule, BadgesRule):
        return {None: rule.needed}
    return None


def nudge_problems(badge: Badge) -> list[tuple[str, str, tuple[str | int, ...]]]:
    """(field, message, YAML path) for each bad ``nudge`` threshold: duplicates, not below the target, unknown tiers."""
    nudge = badge.nudge
    if nudge is None:
        return []
    targets = rule_targets(badge)
    if targets is None:
        return [("nudge", "a custom evaluator's target is known only when it runs: it cannot be nudged", ("nudge",))]
    problems: list[tuple[str, str, tuple[str | int, ...]]] = []

    def check(thresholds: list[int], field: str, path: tuple[str | int, ...], tiers: list[str | None]) -> None:
        seen: set[int] = set()
        for position, threshold in enumerate(thresholds):
            if threshold in seen:
                problems.append((field, f"threshold {threshold} is listed twice", (*path, position)))
                continue
            seen.add(threshold)
            for tier in tiers:
                target = targets[tier]
                if threshold >= target:
                    what = f"tier {tier!r}'s target" if tier is not None else "the target"
                    problems.append((field, f"threshold {threshold} is not below {what} ({target:g}): "
                                            "a nudge must come before the award", (*path, position)))
                    break

    tiered = isinstance(badge.rule, TiersRule)
    if nudge.tiers and not tiered:
        problems.append(("nudge.tiers", "per-tier thresholds need a tiered rule", ("nudge", "tiers")))
    overridden = {tier for tier in nudge.tiers if tier in targets}
    check(nudge.remaining, "nudge.remaining", ("nudge", "remaining"),
          [tier for tier in targets if tier not in overridden])
    for tier, tier_nudge in nudge.tiers.items():
        if tiered and tier not in targets:
            problems.append((f"nudge.tiers.{tier}", f"unknown tier {tier!r} (tiers: {', '.join(map(str, targets))})",
                             ("nudge", "tiers", tier)))
        elif tiered:
            check(tier_nudge.remaining, f"nudge.tiers.{tier}.remaining", ("nudge", "tiers", tier, "remaining"), [tier])
    return problems


def catalog_problems(
    catalog: Catalog, registry: Container[str] | None = None, also_known: Container[str] = frozenset(),
    also_badges: Container[str] = frozenset(),
) -> list[str]:
    """Every cross-badge problem of an (individually valid) catalog, as messages naming badge, field, line.

    ``also_known``: ids of badges or levels that exist but were left out (invalid on their own); not
    "unknown". ``also_badges``: the badge ids among them, which a level id must not repeat either.
    """
    source = catalog.source
    known = {**catalog.badges_by_id, **catalog.levels_by_id}  # levels may be required or listed like badges
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for index, badge in enumerate(catalog.badges):
        def say(field: str, message: str, *path: str | int, _i: int = index, _b: Badge = badge) -> None:
            problems.append(describe_problem(source, catalog.line_of("badges", _i, *path), _b.id, field, message))

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
        for field, message, path in nudge_problems(badge):
            say(field, message, *path)
        if isinstance(badge.rule, EvaluatorRule) and registry is not None and badge.rule.name not in registry:
            say("rule.evaluator", f"unknown custom evaluator {badge.rule.name!r}", "rule", "evaluator")
        if isinstance(badge.points, dict):
            if not isinstance(badge.rule, TiersRule):
                say("points", "a {tier: points} map needs a tiered rule; give one number instead", "points")
            else:
                missing = [tier for tier in badge.rule.tiers if tier not in badge.points]
                unknown = [tier for tier in badge.points if tier not in badge.rule.tiers]
                if missing:
                    say("points", f"the points map omits tier(s) {', '.join(map(repr, missing))}", "points")
                for tier in unknown:
                    say("points", f"unknown tier {tier!r} (tiers: {', '.join(badge.rule.tiers)})", "points", tier)
    problems += _level_problems(catalog, first_seen, also_badges)
    for cycle in _find_cycles(catalog):
        start = catalog.badges_by_id[cycle[0]]
        index = catalog.badges.index(start)
        field = "rule.badges" if isinstance(start.rule, BadgesRule) and cycle[1] in start.rule.badges else "requires"
        problems.append(
            describe_problem(source, catalog.line_of("badges", index, *field.split(".")), start.id, field,
                      "cycle among requires/badges: " + " -> ".join(cycle))
        )
    return problems


def _level_problems(catalog: Catalog, badge_lines: dict[str, int], also_badges: Container[str]) -> list[str]:
    """Levels: ``at`` strictly increasing, ids unique and not also a badge's."""
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    previous: int | None = None
    for index, level in enumerate(catalog.levels):
        def say(field: str, message: str, *path: str | int, _i: int = index, _id: str = level.id) -> None:
            line = catalog.line_of("levels", _i, *path)
            problems.append(describe_problem(catalog.source, line, _id, field, message, owner="level"))

        if level.id in badge_lines:
            say("id", f"level id clashes with the badge defined on line {badge_lines[level.id]}", "id")
        elif level.id in also_badges:
            say("id", "level id clashes with a badge id", "id")
        if level.id in first_seen:
            say("id", f"duplicate level id (first defined on line {first_seen[level.id]})", "id")
        else:
            first_seen[level.id] = catalog.line_of("levels", index, "id") or index + 1
        if previous is not None and level.at <= previous:
            say("at", f"levels must have strictly increasing 'at': {level.at} follows {previous}", "at")
        previous = level.at
    return problems


def validate_catalog(catalog: Catalog, registry: Container[str] | None = None) -> None:
    """Raise :class:`CatalogProblems` if the catalog refers to unknown badges or evaluators, loops, or has bad CEL.

    ``registry`` is anything that answers ``name in registry`` (an ``EvaluatorRegistry``); without it
    custom evaluator names are not checked (the engine checks them with its own registry).
    """
    problems = catalog_problems(catalog, registry)
    if problems:
        raise CatalogProblems(catalog.source, problems)
