"""Engine throughput: evaluations per second for the demo catalog over a synthetic stream, one process.

Three figures, each over the same deterministic stream (default 1M events, 10k users):

1. ``evaluate``            — ``Engine.evaluate`` alone, states kept as objects in a dict;
2. ``+ state bytes``       — plus ``UserState.from_bytes``/``to_bytes`` per event, as the worker does;
3. ``+ parse``             — plus ``parse_event`` and the catalog's per-type data checks.

Events are generated in chunks outside the timed sections. ``--profile`` prints a cProfile top-20
of the ``evaluate`` pass; ``--replay-collector`` runs it with the garbage collector set as
``badgestream replay`` sets it (:func:`streams.replay.replay.collector_for_growing_state`). Each
figure says whether the engine ran compiled (mypyc, ``make venv``) or as pure Python
(``BADGESTREAM_PURE_PYTHON=1``); ``--compare`` runs the benchmark in child processes, compiled and
pure in turn (``--rounds`` pairs), and prints the ratio of each pair.
Run: ``python -m bench.engine.run [--events N] [--users U] [--only PASS] [--compare] [--replay-collector]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

import evaluators
from evaluators.engine import Engine
from evaluators.registry import EvaluatorRegistry
from evaluators.state import UserState
from schemas.catalog import Catalog, load_catalog
from schemas.events import EventEnvelope, parse_event
from streams.replay.replay import collector_for_growing_state

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


Timing = tuple[float, float]  # wall seconds, CPU seconds of this process


def _clock() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(began: Timing) -> Timing:
    wall, cpu = _clock()
    return wall - began[0], cpu - began[1]


def pass_evaluate(engine: Engine, events: int, users: int, profile: cProfile.Profile | None) -> tuple[Timing, int]:
    states: dict[str, UserState] = {}
    elapsed, cpu, awards = 0.0, 0.0, 0
    evaluate = engine.evaluate
    for chunk in synthetic_stream(events, users):
        envelopes = [parse_event(raw) for raw in chunk]
        _settle()
        if profile is not None:
            profile.enable()
        began = _clock()
        for event in envelopes:
            result = evaluate(states.get(event.user_id), event)
            states[event.user_id] = result.state
            awards += len(result.awards)
        wall, used = _since(began)
        elapsed, cpu = elapsed + wall, cpu + used
        if profile is not None:
            profile.disable()
    return (elapsed, cpu), awards


def pass_bytes(engine: Engine, events: int, users: int) -> tuple[Timing, int, list[int]]:
    stored: dict[str, bytes] = {}
    elapsed, cpu, awards = 0.0, 0.0, 0
    for chunk in synthetic_stream(events, users):
        envelopes = [parse_event(raw) for raw in chunk]
        _settle()
        began = _clock()
        for event in envelopes:
            raw_state = stored.get(event.user_id)
            state = UserState.from_bytes(raw_state) if raw_state is not None else None
            result = engine.evaluate(state, event)
            stored[event.user_id] = result.state.to_bytes()
            awards += len(result.awards)
        wall, used = _since(began)
        elapsed, cpu = elapsed + wall, cpu + used
    return (elapsed, cpu), awards, [len(b) for b in stored.values()]


def pass_parse(engine: Engine, catalog: Catalog, events: int, users: int) -> tuple[Timing, int]:
    stored: dict[str, bytes] = {}
    elapsed, cpu, awards = 0.0, 0.0, 0
    for chunk in synthetic_stream(events, users):
        _settle()
        began = _clock()
        for raw in chunk:
            event: EventEnvelope = parse_event(raw)
            catalog.validate_event_data(event)
            raw_state = stored.get(event.user_id)
            state = UserState.from_bytes(raw_state) if raw_state is not None else None
            result = engine.evaluate(state, event)
            stored[event.user_id] = result.state.to_bytes()
            awards += len(result.awards)
        wall, used = _since(began)
        elapsed, cpu = elapsed + wall, cpu + used
    return (elapsed, cpu), awards


def _figure(label: str, events: int, timing: Timing) -> str:
    seconds, cpu = timing
    return (f"  {label:<22} {events / seconds:>10,.0f} events/s  {cpu / events * 1e6:6.1f} us CPU/event  "
            f"({seconds:.1f} s")


FIGURE = re.compile(r"^  (\S.*?)\s+([\d,]+) events/s\s+([\d.]+) us CPU/event", re.MULTILINE)


def compare(argv: list[str], rounds: int) -> int:
    """The benchmark in child processes, compiled and pure in turn, ``rounds`` pairs; each pair's ratio."""
    if not evaluators.COMPILED:
        print("the engine is not compiled here (`make venv` compiles it): nothing to compare", file=sys.stderr)
        return 2
    pure_env = {**os.environ, "BADGESTREAM_PURE_PYTHON": "1"}
    compiled_env = {key: value for key, value in os.environ.items() if key != "BADGESTREAM_PURE_PYTHON"}
    ratios: dict[str, list[float]] = {}
    for round_ in range(1, rounds + 1):
        rates: dict[str, dict[str, float]] = {}
        for mode, env in (("compiled", compiled_env), ("pure", pure_env)):
            out = subprocess.run([sys.executable, "-m", "bench.engine.run", *argv], env=env, check=True,
                                 capture_output=True, text=True).stdout
            print(f"round {round_}, {mode}:\n" + "\n".join(out.splitlines()[1:]))
            rates[mode] = {label: float(rate.replace(",", "")) for label, rate, _ in FIGURE.findall(out)}
        for label, rate in rates["compiled"].items():
            ratios.setdefault(label, []).append(rate / rates["pure"][label])
    for label, values in ratios.items():
        print(f"compiled / pure, {label}: median {statistics.median(values):.2f}x over {len(values)} pair(s) "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--catalog", type=Path, default=DEMO_CATALOG)
    parser.add_argument("--profile", action="store_true", help="cProfile top-20 of the evaluate pass")
    parser.add_argument("--only", choices=["evaluate", "bytes", "parse"], default=None)
    parser.add_argument("--replay-collector", action="store_true",
                        help="the evaluate pass with the garbage collector set as replay sets it")
    parser.add_argument("--compare", action="store_true", help="compiled vs pure engine, in child processes")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: compiled/pure pairs")
    args = parser.parse_args(argv)
    if args.compare:
        own = [arg for arg in (argv if argv is not None else sys.argv[1:]) if arg != "--compare"]
        rest = [arg for i, arg in enumerate(own) if arg != "--rounds" and (i == 0 or own[i - 1] != "--rounds")]
        return compare([arg for arg in rest if not arg.startswith("--rounds=")], args.rounds)

    catalog = load_catalog(args.catalog)
    engine = Engine(catalog, EvaluatorRegistry.from_entry_points())
    print(f"engine benchmark: {args.events:,} events, {args.users:,} users, catalog {args.catalog.name} "
          f"({len(catalog.badges)} badges), Python {sys.version.split()[0]}, "
          f"engine {'compiled (mypyc)' if evaluators.COMPILED else 'pure Python'}")

    if args.only in (None, "evaluate"):
        profile = cProfile.Profile() if args.profile else None
        with collector_for_growing_state() if args.replay_collector else nullcontext():
            timing, awards = pass_evaluate(engine, args.events, args.users, profile)
        label = "evaluate, replay's gc" if args.replay_collector else "evaluate"
        print(f"{_figure(label, args.events, timing)}, {awards:,} awards)")
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(20)
            print(out.getvalue())
    if args.only in (None, "bytes"):
        timing, awards, sizes = pass_bytes(engine, args.events, args.users)
        sizes.sort()
        print(f"{_figure('+ state bytes', args.events, timing)}, {awards:,} awards; "
              f"state bytes median {sizes[len(sizes) // 2]:,}, max {sizes[-1]:,})")
    if args.only in (None, "parse"):
        timing, awards = pass_parse(engine, catalog, args.events, args.users)
        print(f"{_figure('+ parse + state bytes', args.events, timing)}, {awards:,} awards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
