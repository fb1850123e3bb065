"""Engine throughput: evaluations per second for the demo catalog over a synthetic stream, one process.

Three figures, each over the same deterministic stream (default 1M events, 10k users):

1. ``evaluate``            — ``Engine.evaluate`` alone, states kept as objects in a dict;
2. ``+ state bytes``       — plus ``UserState.from_bytes``/``to_bytes`` per event, as the worker does;
3. ``+ parse``             — plus ``parse_event`` and the catalog's per-type data checks.

Events are generated in chunks outside the timed sections. ``--profile`` prints a cProfile top-20
of the ``evaluate`` pass. Run: ``python -m bench.engine.run [--events N] [--users U]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from evaluators.engine import Engine
from evaluators.registry import EvaluatorRegistry
from evaluators.state import UserState
from schemas.catalog import Catalog, load_catalog
from schemas.events import EventEnvelope, parse_event

ROOT = Path(__file__).resolve().parents[2]
DEMO_CATALOG = ROOT / "deploy" / "demo" / "catalog.yaml"
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "America/Sao_Paulo",
         "Asia/Kolkata", "Pacific/Auckland")
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=365)
CHUNK = 50_000


def synthetic_stream(events: int, users: int, seed: int = 7) -> Iterator[list[bytes]]:
    """Raw events in chunks: quizzes, logins and referrals from ``users`` users across time zones over a year."""
    rng = random.Random(seed)
    step = SPAN / max(events, 1)
    chunk: list[bytes] = []
    for i in range(events):
        user = rng.randrange(users)
        roll = rng.random()
        if roll < 0.55:
            kind = "quiz_completed"
            data: dict[str, object] = {"quiz_id": f"q{rng.randrange(30)}", "score": rng.randrange(11),
                                       "total_questions": 10}
        elif roll < 0.9:
            kind, data = "user_logged_in", {"device": "web"}
        else:
            kind, data = "referral_signup", {"referred_user_id": f"r{i}"}
        event = {"event_id": f"e-{i}", "type": kind, "user_id": f"u-{user}",
                 "occurred_at": (START + step * i).isoformat(), "tz": ZONES[user % len(ZONES)], "data": data}
        chunk.append(orjson.dumps(event))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _settle() -> None:
    """Move the pre-built input chunk (and whatever is alive) out of the garbage collector's sight.

    A worker holds one event at a time and keeps states as bytes in RocksDB; this benchmark holds a
    chunk of 50k parsed envelopes (and, in the first pass, every state as objects). Without this,
    the collector's full passes over those benchmark-only objects cost a third of the time.
    """
    gc.collect()
    gc.freeze()


def pass_evaluate(engine: Engine, events: int, users: int, profile: cProfile.Profile | None) -> tuple[float, int]:
    states: dict[str, UserState] = {}
    elapsed, awards = 0.0, 0
    evaluate = engine.evaluate
    for chunk in synthetic_stream(events, users):
        envelopes = [parse_event(raw) for raw in chunk]
        _settle()
        if profile is not None:
            profile.enable()
        began = time.perf_counter()
        for event in envelopes:
            result = evaluate(states.get(event.user_id), event)
            states[event.user_id] = result.state
            awards += len(result.awards)
        elapsed += time.perf_counter() - began
        if profile is not None:
            profile.disable()
    return elapsed, awards


def pass_bytes(engine: Engine, events: int, users: int) -> tuple[float, int, list[int]]:
    stored: dict[str, bytes] = {}
    elapsed, awards = 0.0, 0
    for chunk in synthetic_stream(events, users):
        envelopes = [parse_event(raw) for raw in chunk]
        _settle()
        began = time.perf_counter()
        for event in envelopes:
            raw_state = stored.get(event.user_id)
            state = UserState.from_bytes(raw_state) if raw_state is not None else None
            result = engine.evaluate(state, event)
            stored[event.user_id] = result.state.to_bytes()
            awards += len(result.awards)
        elapsed += time.perf_counter() - began
    return elapsed, awards, [len(b) for b in stored.values()]


def pass_parse(engine: Engine, catalog: Catalog, events: int, users: int) -> tuple[float, int]:
    stored: dict[str, bytes] = {}
    elapsed, awards = 0.0, 0
    for chunk in synthetic_stream(events, users):
        _settle()
        began = time.perf_counter()
        for raw in chunk:
            event: EventEnvelope = parse_event(raw)
            catalog.validate_event_data(event)
            raw_state = stored.get(event.user_id)
            state = UserState.from_bytes(raw_state) if raw_state is not None else None
            result = engine.evaluate(state, event)
            stored[event.user_id] = result.state.to_bytes()
            awards += len(result.awards)
        elapsed += time.perf_counter() - began
    return elapsed, awards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--catalog", type=Path, default=DEMO_CATALOG)
    parser.add_argument("--profile", action="store_true", help="cProfile top-20 of the evaluate pass")
    parser.add_argument("--only", choices=["evaluate", "bytes", "parse"], default=None)
    args = parser.parse_args(argv)

    catalog = load_catalog(args.catalog)
    engine = Engine(catalog, EvaluatorRegistry.from_entry_points())
    print(f"engine benchmark: {args.events:,} events, {args.users:,} users, catalog {args.catalog.name} "
          f"({len(catalog.badges)} badges), Python {sys.version.split()[0]}")

    if args.only in (None, "evaluate"):
        profile = cProfile.Profile() if args.profile else None
        seconds, awards = pass_evaluate(engine, args.events, args.users, profile)
        print(f"  evaluate               {args.events / seconds:>10,.0f} events/s  "
              f"({seconds:.1f} s, {awards:,} awards)")
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(20)
            print(out.getvalue())
    if args.only in (None, "bytes"):
        seconds, awards, sizes = pass_bytes(engine, args.events, args.users)
        sizes.sort()
        print(f"  + state bytes          {args.events / seconds:>10,.0f} events/s  "
              f"({seconds:.1f} s, {awards:,} awards; state bytes median {sizes[len(sizes) // 2]:,}, max {sizes[-1]:,})")
    if args.only in (None, "parse"):
        seconds, awards = pass_parse(engine, catalog, args.events, args.users)
        print(f"  + parse + state bytes  {args.events / seconds:>10,.0f} events/s  "
              f"({seconds:.1f} s, {awards:,} awards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
