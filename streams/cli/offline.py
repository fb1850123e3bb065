"""Offline commands for badge designers: run the pure engine over a JSON-lines file, and check a catalog.

``badgestream evaluate --catalog FILE EVENTS.jsonl`` evaluates events in file order with exactly
the engine, checks and evaluators the worker uses — no Kafka, no database — and prints every
award as one JSON line (the ``badge-awards`` record, with its ``points``; a level reached is an
award line like any other) on stdout — with ``--nudges`` every nudge too,
as its ``badge-nudges`` record, in the order decided; invalid lines are reported on
stderr as ``line N: <code>: <reason>`` and skipped. ``badgestream catalog validate FILE`` explains
every problem of a catalog, or summarises it.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from evaluators.registry import EvaluatorRegistry
from evaluators.runner import EngineRun, plugin_engine
from schemas.catalog import CatalogProblems, load_catalog
from schemas.errors import CatalogError, InvalidEventError


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    if path == "-":
        yield from enumerate(sys.stdin.buffer, 1)
        return
    with Path(path).open("rb") as handle:
        yield from enumerate(handle, 1)


def evaluate_command(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """``badgestream evaluate``: awards on stdout (one JSON line each), problems and a summary on stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    catalog = load_catalog(args.catalog)
    run = EngineRun(plugin_engine(catalog))
    seen = Counter[str]()
    awards_by_badge = Counter[str]()
    nudges = 0
    with_nudges = bool(getattr(args, "nudges", False))
    failures = Counter[str]()
    explaining: list[str] | None = getattr(args, "explain", None)
    history = None
    if explaining:
        from streams.cli.explain import OfflineHistory

        if len(explaining) > 2:
            raise CatalogError(f"--explain takes USER [BADGE], got {' '.join(explaining)} (EVENTS goes before it)")

        history = OfflineHistory(args.events, explaining[0])
    try:
        lines = _lines(args.events)
        for number, raw in lines:
            if not raw.strip():
                continue
            seen["lines"] += 1
            try:
                before = run.states.get(explaining[0]) if explaining else None
                _event, result = run.read(raw.rstrip(b"\r\n"))
                if history is not None:
                    history.observe(run.engine, number, _event, before, result)
            except InvalidEventError as exc:
                seen["invalid"] += 1
                print(f"line {number}: {exc.code}: {exc.reason}", file=err)
                continue
            if result.duplicate:
                seen["duplicate"] += 1
                continue
            if not result.matched:
                seen["unmatched"] += 1
                continue
            seen["evaluated"] += 1
            for failure in result.errors:
                failures[failure.kind] += 1
                print(f"line {number}: badge {failure.badge_id}: {failure.kind}: {failure.message}", file=err)
            for award in result.awards:
                awards_by_badge[award.badge_id] += 1
                if history is None:  # with --explain, stdout is the explanation
                    out.write(award.model_dump_json() + "\n")
            if with_nudges and history is None:
                for nudge in result.nudges:
                    nudges += 1
                    out.write(nudge.model_dump_json() + "\n")
    except OSError as exc:
        raise CatalogError(f"{args.events}: cannot read the events: {exc.strerror or exc}") from None
    total_awards = sum(awards_by_badge.values())
    print(
        f"{seen['lines']} events: {seen['evaluated']} evaluated, {seen['duplicate']} duplicates, "
        f"{seen['unmatched']} with no listening badge, {seen['invalid']} invalid; "
        f"{len(run.states)} users, {total_awards} awards{f', {nudges} nudges' if with_nudges else ''} "
        f"(catalog {catalog.catalog_version})",
        file=err,
    )
    for award_id in [*(badge.id for badge in catalog.badges), *(level.id for level in catalog.levels)]:
        if awards_by_badge[award_id]:
            print(f"  {award_id:<24} {awards_by_badge[award_id]:>6}", file=err)
    if failures:
        print("  isolated failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())), file=err)
    if history is not None and explaining is not None:
        from streams.cli.explain import print_offline

        print_offline(history.explain(run, explaining[1] if len(explaining) > 1 else None),
                      bool(getattr(args, "json", False)), out)
    return 0


def catalog_validate_command(args: argparse.Namespace, out: IO[str] | None = None,
                             err: IO[str] | None = None) -> int:
    """``badgestream catalog validate FILE``: exit 0 with a summary, or 2 with every problem explained."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        catalog = load_catalog(args.file, registry=EvaluatorRegistry.from_entry_points())
    except CatalogProblems as exc:
        print(f"{exc.source}: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}:", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return 2
    except CatalogError as exc:
        print(str(exc), file=err)
        return 2
    kinds = Counter(badge.rule.kind for badge in catalog.badges)
    print(
        f"{args.file}: valid — catalog {catalog.catalog_version}, {len(catalog.badges)} badges "
        f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
        + (f"{len(catalog.levels)} levels ({', '.join(f'{lv.id} at {lv.at}' for lv in catalog.levels)}), "
           if catalog.levels else "")
        + f"event types: {', '.join(sorted(catalog.event_types())) or 'none'}",
        file=out,
    )
    return 0
