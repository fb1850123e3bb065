"""Generate deploy/demo/events.jsonl: a few hundred events of ten users across time zones, deterministically.

Each user has a habit that earns some of the demo badges (deploy/demo/catalog.yaml), so trying
the catalog on this file shows every rule kind at work:
``python -m deploy.demo.make_events`` rewrites the file; the same seed gives the same bytes.
"""

from __future__ import annotations

import random
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

OUT = Path(__file__).resolve().parent / "events.jsonl"
SEED = 2026


class Stream:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list[dict[str, object]] = []

    def add(self, user: str, tz: str, kind: str, local: datetime, **data: object) -> dict[str, object]:
        """An event at a *local* wall-clock time in the user's zone (what people live by)."""
        at = local.replace(tzinfo=ZoneInfo(tz))
        event = {"event_id": f"demo-{len(self.events) + 1:04d}", "type": kind, "user_id": user,
                 "occurred_at": at.isoformat(), "tz": tz, "data": data}
        self.events.append(event)
        return event

    def quiz(self, user: str, tz: str, local: datetime, *, good: bool = False) -> None:
        total = self.rng.choice([10, 12, 20])
        score = round(total * (self.rng.uniform(0.86, 1.0) if good else self.rng.uniform(0.3, 0.8)))
        self.add(user, tz, "quiz_completed", local, quiz_id=f"q{self.rng.randrange(1, 12):02d}",
                 score=score, total_questions=total)

    def login(self, user: str, tz: str, local: datetime) -> None:
        self.add(user, tz, "user_logged_in", local, device=self.rng.choice(["web", "ios", "android"]))

    def referral(self, user: str, tz: str, local: datetime) -> None:
        self.add(user, tz, "referral_signup", local, referred_user_id=f"friend-{self.rng.randrange(10**6):06d}")


def day(month: int, dom: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2026, month, dom, hour, minute)


def build(seed: int = SEED) -> list[dict[str, object]]:
    s = Stream(seed)
    rng = s.rng

    # ana, Berlin: a summer of quizzes, weekends included, many different ones: most quiz badges,
    # gold tier, the scholar and all-rounder meta-badges.
    for i in range(36):
        when = day(6, 1) + timedelta(days=i * 2, hours=rng.randrange(-3, 8))
        s.quiz("ana", "Europe/Berlin", when, good=i % 3 == 0)
        if i % 4 == 0:
            s.login("ana", "Europe/Berlin", when - timedelta(minutes=5))

    # ben, New York: logs in ten days running, disappears for three weeks, comes back (daily warrior, comeback).
    for i in range(10):
        s.login("ben", "America/New_York", day(5, 4, 8) + timedelta(days=i, minutes=rng.randrange(600)))
    s.login("ben", "America/New_York", day(6, 5, 21))
    for i in range(6):
        s.quiz("ben", "America/New_York", day(6, 6, 10) + timedelta(days=i), good=i == 5)

    # chen, Tokyo: invites friends before taking a quiz; the recruiter awards come with the first quiz,
    # two at once (occurrences 1 and 2), and a third later (repeatable).
    for i in range(7):
        s.referral("chen", "Asia/Tokyo", day(5, 10) + timedelta(days=i * 3))
    s.quiz("chen", "Asia/Tokyo", day(6, 2, 19))
    for i in range(2):
        s.referral("chen", "Asia/Tokyo", day(6, 10) + timedelta(days=i))

    # dana, Sydney: logs in just after midnight local time, which is the previous day in UTC;
    # seven local days in a row all the same (daily warrior in her own time zone).
    for i in range(8):
        s.login("dana", "Australia/Sydney", day(7, 1, 0, 20) + timedelta(days=i))
    for i in range(6):
        s.quiz("dana", "Australia/Sydney", day(7, 4, 7) + timedelta(days=i * 7), good=True)

    # eli, Sao Paulo: a weekly quiz for five weeks (weekly streak), on Saturdays (weekend warrior).
    for i in range(5):
        s.quiz("eli", "America/Sao_Paulo", day(5, 2, 10) + timedelta(weeks=i))

    # fay, Kolkata: points collector with long quizzes and high scores, in spring (no summer badge).
    for i in range(7):
        s.quiz("fay", "Asia/Kolkata", day(5, 4, 18) + timedelta(days=i * 2), good=True)

    # gus, Los Angeles: a few quizzes and logins with gaps of more than two weeks (comeback).
    for month, dom in ((5, 1), (5, 20), (6, 15), (6, 16), (8, 2)):
        s.login("gus", "America/Los_Angeles", day(month, dom, 9))
        s.quiz("gus", "America/Los_Angeles", day(month, dom, 9, 30))

    # hana, Auckland; ivan, Moscow; jo, London: casual users, random activity.
    for user, tz in (("hana", "Pacific/Auckland"), ("ivan", "Europe/Moscow"), ("jo", "Europe/London")):
        for _ in range(rng.randrange(35, 60)):
            when = day(5, 1) + timedelta(days=rng.randrange(150), hours=rng.randrange(24))
            roll = rng.random()
            if roll < 0.55:
                s.quiz(user, tz, when, good=rng.random() < 0.3)
            elif roll < 0.9:
                s.login(user, tz, when)
            else:
                s.referral(user, tz, when)

    events = sorted(s.events, key=lambda e: (datetime.fromisoformat(str(e["occurred_at"])), str(e["event_id"])))
    # Two redeliveries, as Kafka producers do after a timeout: the engine must ignore them.
    events.insert(40, dict(events[38]))
    events.insert(120, dict(events[100]))
    return events


def main() -> int:
    events = build()
    OUT.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    print(f"{OUT}: {len(events)} events, {len({e['user_id'] for e in events})} users")
    return 0


if __name__ == "__main__":
    sys.exit(main())
