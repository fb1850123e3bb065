"""A realistic synthetic event stream, reproducible by seed: for benchmarks, reliability tests and demos.

Users live in several time zones, log in on most days with gaps, complete quizzes with a skewed
score distribution, sometimes refer friends; a small share of events is sent twice (same
event_id) and some arrive out of order, as in production.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streams.console import progress

TIME_ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "America/Sao_Paulo",
              "Asia/Kolkata")
DEFAULT_START = datetime(2026, 5, 1, tzinfo=UTC)


def simulate_events(users: int, events: int, seed: int = 0, start: datetime = DEFAULT_START,
                    duplicate_share: float = 0.01, out_of_order_share: float = 0.02) -> Iterator[dict[str, Any]]:
    """Yield ``events`` event dicts for ``users`` users, deterministically for a given seed."""
    rng = random.Random(seed)
    tz_of = [TIME_ZONES[rng.randrange(len(TIME_ZONES))] for _ in range(users)]
    skill = [rng.betavariate(5, 2) for _ in range(users)]  # most users score well, some poorly
    day_of = [0] * users  # each user's current day since start
    recent: list[dict[str, Any]] = []
    held_back: list[tuple[int, dict[str, Any]]] = []
    produced = 0
    serial = 0
    while produced < events:
        u = rng.randrange(users)
        # Advance this user's clock: most events on the same or next day, sometimes a gap.
        step = rng.random()
        if step < 0.55:
            pass
        elif step < 0.93:
            day_of[u] += 1
        else:
            day_of[u] += rng.randint(2, 20)
        moment = start + timedelta(days=day_of[u], seconds=rng.randrange(86400))
        user_id = f"u-{u:06d}"
        kind = rng.random()
        serial += 1
        event_id = f"sim-{seed}-{serial:09d}"
        event: dict[str, Any]
        if kind < 0.45:
            event = {"type": "user_logged_in", "data": {}}
        elif kind < 0.97:
            total = rng.choice((5, 10, 10, 10, 20))
            score = sum(1 for _ in range(total) if rng.random() < skill[u])
            event = {"type": "quiz_completed",
                     "data": {"quiz_id": f"q{rng.randrange(40)}", "score": score, "total_questions": total}}
        else:
            event = {"type": "referral_signup", "data": {"referred_user_id": f"r-{serial}"}}
        event.update(event_id=event_id, user_id=user_id, occurred_at=moment.isoformat(), tz=tz_of[u])
        event = {k: event[k] for k in ("event_id", "type", "user_id", "occurred_at", "tz", "data")}
        roll = rng.random()
        if roll < out_of_order_share:
            held_back.append((produced + rng.randint(5, 200), event))  # delivered late
        else:
            yield event
            produced += 1
            recent.append(event)
            if len(recent) > 500:
                recent.pop(0)
        if rng.random() < duplicate_share and recent and produced < events:
            yield dict(rng.choice(recent))  # an upstream retry: the same event_id again
            produced += 1
        while held_back and held_back[0][0] <= produced and produced < events:
            yield held_back.pop(0)[1]
            produced += 1
    # Anything still held back is dropped: the count asked for is exact.


def simulate_command(args: argparse.Namespace) -> int:
    """``badgestream simulate``: write the stream to a file, or send it to the input topic."""
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC) if args.start else DEFAULT_START
    stream = simulate_events(args.users, args.events, seed=args.seed, start=start)
    if args.output:
        out_path = Path(args.output)
        with out_path.open("wb") as out, progress(args.events, "simulate") as update:
            for n, event in enumerate(stream, 1):
                out.write(orjson.dumps(event) + b"\n")
                if n % 1000 == 0:
                    update(n)
            update(args.events)
        print(f"wrote {args.events} events for {args.users} users to {out_path}", file=sys.stderr)
        return 0
    from schemas.events import parse_event
    from streams.sdk.producer import BadgeEvents
    from streams.settings import Settings

    interval = 1.0 / args.rate if args.rate else 0.0
    began = time.monotonic()
    with BadgeEvents(Settings()) as producer, progress(args.events, "simulate") as update:
        for n, event in enumerate(stream, 1):
            producer.send(parse_event(orjson.dumps(event)))
            if interval:
                delay = began + n * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if n % 1000 == 0:
                update(n)
        update(args.events)
        producer.flush()
    print(f"sent {args.events} events for {args.users} users to {producer.topic}", file=sys.stderr)
    return 0
