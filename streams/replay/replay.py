"""``badgestream replay``: recompute every award from the input topics, diff against the database, apply.

The replay reads the input topics from the beginning up to the end offsets captured when it
starts, with its own consumer that commits nothing (the live worker's group and state are not
touched), and drives the same engine and catalog as the worker directly — no Faust in between,
for speed. Per partition the order is the topic's order, as in the worker, so the award set is
the live one (a test holds the two paths to that).

Then it diffs the recomputed awards against ``user_badges``: awards to add (e.g. a new badge,
awarded retroactively with the historical ``awarded_at``), awards that no longer qualify, awards
whose deciding event, time or points changed, and per user the points total and the level that
change with them (levels are awards too, so they also appear among the awards to add or revoke).
``--apply`` writes the additions (flagged ``backfill``) and publishes them on the award topic;
``--revoke`` marks the non-qualifying ones revoked (never deleted) and publishes revocation
records. An award whose points changed keeps its stored points: the diff reports it.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from evaluators.engine import Engine
from evaluators.resends import ResendWindow
from evaluators.runner import EngineRun, plugin_engine
from schemas.catalog import Catalog, load_catalog
from schemas.errors import DeliveryError, InvalidEventError, TopicNotFoundError
from schemas.records import AwardRecord, EventSource, trusted_record
from streams import db
from streams.console import progress
from streams.kafka import client_config, produce, record_time_ms
from streams.settings import Settings, settings_for

NATURAL_KEY = ("user_id", "badge_id", "tier", "occurrence")


@dataclass
class ReplayResult:
    awards: dict[str, AwardRecord]
    events: int = 0
    invalid: int = 0
    duplicates: int = 0
    evaluator_errors: int = 0
    users: int = 0
    seconds: float = 0.0


def evaluate_stream(engine: Engine, messages: Iterable[tuple[bytes, EventSource | None, int]],
                    window: ResendWindow | None = None) -> ReplayResult:
    """Run the engine over raw event values (with where each was read and its record time) in order
    and collect every award once. Resends are recognised by record time, as the live worker does."""
    run = EngineRun(engine, with_progress=False, window=window)
    result = ReplayResult(awards={})
    for raw, source, record_ms in messages:
        result.events += 1
        try:
            _event, evaluation = run.read(raw, source, record_ms)
        except InvalidEventError:
            result.invalid += 1
            continue
        if evaluation.duplicate:
            result.duplicates += 1
            continue
        result.evaluator_errors += len(evaluation.errors)
        for award in evaluation.awards:
            result.awards.setdefault(award.award_id, award)
    result.users = len(run.states)
    return result


def capture_end_offsets(consumer: Consumer, topics: list[str]) -> list[tuple[TopicPartition, int, int]]:
    """(partition, low, high) of every input partition, fixed when the replay starts."""
    spans = []
    metadata = consumer.list_topics(timeout=30)
    for topic in topics:
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise TopicNotFoundError(f"input topic {topic} does not exist")
        for partition in sorted(metadata.topics[topic].partitions):
            tp = TopicPartition(topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            spans.append((tp, low, high))
    return spans


def read_input(settings: Settings, show_progress: bool = True) -> Iterable[tuple[bytes, EventSource, int]]:
    """Every input message value, where it was read and its record time (ms), from the beginning up
    to the end offsets captured now."""
    consumer = Consumer(client_config(settings, **{
        "group.id": f"{settings.app_id}-replay-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
    }))
    try:
        spans = capture_end_offsets(consumer, settings.input_topics)
        total = sum(high - low for _, low, high in spans)
        remaining = {(tp.topic, tp.partition): high for tp, low, high in spans if high > low}
        consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp, low, high in spans
                         if high > low])
        with progress(total, "replay", enabled=show_progress) as update:
            done = 0
            while remaining:
                for message in consumer.consume(5000, timeout=1.0):
                    if message.error() is not None:
                        continue
                    key = (str(message.topic()), int(message.partition() or 0))
                    offset = int(message.offset() or 0)
                    end = remaining.get(key)
                    if end is None or offset >= end:
                        continue  # written after the replay started: not part of this replay
                    done += 1
                    value = message.value()
                    # Not validated: Kafka's own topic name and non-negative partition and offset.
                    source = trusted_record(EventSource, {"topic": key[0], "partition": key[1], "offset": offset})
                    yield (value if value is not None else b""), source, record_time_ms(message.timestamp())
                    if offset >= end - 1:
                        del remaining[key]
                update(done)
    finally:
        consumer.close()


REPLAY_GC_THRESHOLD = 50_000
"""The collector's first-generation threshold while a replay runs (Python's default is 700)."""


@contextmanager
def collector_for_growing_state() -> Iterator[None]:
    """Run the garbage collector rarely while the replay builds every user's state as objects.

    The replay keeps one state per user in memory, a heap that grows with the users it meets, and
    evaluating an event makes no reference cycles (a test checks that a replay leaves none). Each
    of the collector's passes finds nothing, yet its older generations traverse the growing heap
    again and again: with the default threshold it was a fifth or more of the replay's time
    (bench/replay/README.md). With a first-generation threshold of :data:`REPLAY_GC_THRESHOLD`
    it runs ~70x less often; a cycle made anyway (an exception's traceback, say) waits at most that
    many allocations, and the thresholds are put back when the replay ends.
    """
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], REPLAY_GC_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def replay(settings: Settings, catalog: Catalog, show_progress: bool = True) -> ReplayResult:
    began = time.perf_counter()
    with collector_for_growing_state():
        result = evaluate_stream(plugin_engine(catalog), read_input(settings, show_progress),
                                 ResendWindow(settings.resend_window_ms))
    result.seconds = time.perf_counter() - began
    return result


@dataclass(frozen=True)
class StandingChange:
    """One user's points total and level, as the database holds them and as the replay recomputed them."""

    user_id: str
    points_before: int
    points_after: int
    level_before: str | None
    level_after: str | None


@dataclass
class ReplayDiff:
    added: list[AwardRecord]
    no_longer_qualifying: list[dict[str, Any]]
    changed: list[tuple[dict[str, Any], AwardRecord]]
    reinstatable: list[AwardRecord]
    standings: list[StandingChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.no_longer_qualifying or self.changed or self.reinstatable or self.standings)

    def affected_users(self) -> list[str]:
        users = {a.user_id for a in self.added} | {r["user_id"] for r in self.no_longer_qualifying}
        users |= {a.user_id for _, a in self.changed} | {a.user_id for a in self.reinstatable}
        users |= {s.user_id for s in self.standings}
        return sorted(users)

    def as_json(self) -> dict[str, Any]:
        def row(record: AwardRecord) -> dict[str, Any]:
            return record.model_dump(mode="json", include={"award_id", *NATURAL_KEY, "awarded_at", "event_id"})

        return {
            "added": [row(a) for a in self.added],
            "no_longer_qualifying": [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()}
                                     for r in self.no_longer_qualifying],
            "changed": [{"award_id": a.award_id, "user_id": a.user_id, "badge_id": a.badge_id, "tier": a.tier,
                         "database": {"awarded_at": r["awarded_at"].isoformat(), "event_id": r["event_id"],
                                      "points": r["points"]},
                         "replay": {"awarded_at": a.awarded_at.isoformat(), "event_id": a.event_id,
                                    "points": a.points}}
                        for r, a in self.changed],
            "revoked_but_qualifying": [row(a) for a in self.reinstatable],
            "standings": [{"user_id": c.user_id, "database": {"points": c.points_before, "level": c.level_before},
                           "replay": {"points": c.points_after, "level": c.level_after}} for c in self.standings],
            "affected_users": self.affected_users(),
        }


def database_awards(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    table = db.user_badges
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.award_id, table.c.user_id, table.c.badge_id, table.c.tier,
                                      table.c.occurrence, table.c.awarded_at, table.c.event_id,
                                      table.c.revoked_at, table.c.points)).mappings().all()
    out = {}
    for row in rows:
        record = dict(row)
        record["tier"] = record["tier"] or None
        out[record["award_id"]] = record
    return out


def diff(replayed: dict[str, AwardRecord], stored: dict[str, dict[str, Any]],
         levels: Mapping[str, int] | None = None) -> ReplayDiff:
    """What the database would need to hold the replayed awards; ``levels``: the catalog's level ids and ``at``."""
    added, changed, reinstatable = [], [], []
    for award_id, award in sorted(replayed.items(), key=lambda kv: (kv[1].user_id, kv[1].badge_id, kv[0])):
        row = stored.get(award_id)
        if row is None:
            added.append(award)
        elif row["revoked_at"] is not None:
            reinstatable.append(award)
        elif (row["awarded_at"] != award.awarded_at or row["event_id"] != award.event_id
              or row.get("points", 0) != award.points):
            changed.append((row, award))
    gone = [row for award_id, row in sorted(stored.items(), key=lambda kv: (kv[1]["user_id"], kv[1]["badge_id"]))
            if award_id not in replayed and row["revoked_at"] is None]
    return ReplayDiff(added=added, no_longer_qualifying=gone, changed=changed, reinstatable=reinstatable,
                      standings=standing_changes(replayed, stored, levels or {}))


def standing_changes(replayed: dict[str, AwardRecord], stored: dict[str, dict[str, Any]],
                     levels: Mapping[str, int]) -> list[StandingChange]:
    """Users whose points total or level (the highest level held) differs between the database and the replay."""
    def standings(awards: Iterable[tuple[str, str, int]]) -> dict[str, tuple[int, str | None]]:
        points: Counter[str] = Counter()
        level: dict[str, str] = {}
        for user_id, badge_id, worth in awards:
            points[user_id] += worth
            if badge_id in levels and levels[badge_id] > levels.get(level.get(user_id, ""), 0):
                level[user_id] = badge_id
        return {user: (points[user], level.get(user)) for user in points.keys() | level.keys()}

    before = standings((r["user_id"], r["badge_id"], r.get("points", 0) or 0) for r in stored.values()
                       if r["revoked_at"] is None)
    after = standings((a.user_id, a.badge_id, a.points) for a in replayed.values())
    changes = []
    for user_id in sorted(before.keys() | after.keys()):
        old, new = before.get(user_id, (0, None)), after.get(user_id, (0, None))
        if old != new:
            changes.append(StandingChange(user_id, old[0], new[0], old[1], new[1]))
    return changes


def apply_diff(
    settings: Settings, awards_db: sa.Engine, found: ReplayDiff, *, add: bool, revoke: bool
) -> dict[str, int]:
    """Write additions (backfill) and/or revocations to the database in one transaction, then
    publish them on the award topic for downstream consumers."""
    backfilled = [a.model_copy(update={"backfill": True}) for a in found.added] if add else []
    revocations = []
    if revoke:
        for row in found.no_longer_qualifying:
            revocations.append(AwardRecord(
                award_id=row["award_id"], user_id=row["user_id"], badge_id=row["badge_id"], tier=row["tier"],
                occurrence=row["occurrence"], awarded_at=row["awarded_at"], event_id=row["event_id"],
                catalog_version="replay", kind="revocation"))
    now = datetime.now(UTC)
    with awards_db.begin() as conn:
        result = db.upsert_awards(conn, [*backfilled, *revocations], now=now)
    producer = Producer(client_config(settings, **{"enable.idempotence": True, "partitioner": "murmur2_random"}))
    for record in [*backfilled, *revocations]:
        produce(producer, settings.awards_topic, record.user_id.encode(), record.model_dump_json().encode())
        producer.poll(0)
    if remaining := producer.flush(60):
        raise DeliveryError(f"{remaining} award records are in the database but were not acknowledged by the "
                            f"broker after 60s: consumers of {settings.awards_topic} have not seen them")
    return {"added": result.awards_inserted, "revoked": result.revocations_applied}


def render(found: ReplayDiff, result: ReplayResult, show: int) -> str:
    lines = [
        f"replayed {result.events} events ({result.invalid} invalid, {result.duplicates} duplicates) for "
        f"{result.users} users in {result.seconds:.1f}s ({result.events / max(result.seconds, 1e-9):,.0f} events/s)",
        f"awards recomputed: {len(result.awards)}",
    ]
    if found.empty:
        lines.append("no difference: the database holds exactly the recomputed awards")
        return "\n".join(lines)

    def section(title: str, rows: list[str], per_badge: Counter[str]) -> None:
        lines.append(f"{title}: {len(rows)}" + (f"  ({', '.join(f'{b}: {n}' for b, n in per_badge.most_common())})"
                                                if per_badge else ""))
        lines.extend(f"  {r}" for r in rows[:show])
        if len(rows) > show:
            lines.append(f"  ... and {len(rows) - show} more (--json for all)")

    def label(badge: str, tier: str | None) -> str:
        return f"{badge}/{tier}" if tier else badge

    section("awards to add", [f"{a.user_id}  {label(a.badge_id, a.tier)}  at {a.awarded_at.isoformat()}  "
                              f"(event {a.event_id})" for a in found.added],
            Counter(label(a.badge_id, a.tier) for a in found.added))
    section("awards that no longer qualify", [f"{r['user_id']}  {label(r['badge_id'], r['tier'])}  awarded "
                                              f"{r['awarded_at'].isoformat()}" for r in found.no_longer_qualifying],
            Counter(label(r["badge_id"], r["tier"]) for r in found.no_longer_qualifying))
    def change(row: dict[str, Any], award: AwardRecord) -> str:
        parts = []
        if row["awarded_at"] != award.awarded_at or row["event_id"] != award.event_id:
            parts.append(f"{row['awarded_at'].isoformat()} -> {award.awarded_at.isoformat()}")
        if row.get("points", 0) != award.points:
            parts.append(f"points {row.get('points', 0)} -> {award.points}")
        return f"{award.user_id}  {label(award.badge_id, award.tier)}  " + ", ".join(parts)

    section("awards whose deciding event, time or points changed", [change(r, a) for r, a in found.changed],
            Counter())
    if found.standings:
        section("users whose points or level change",
                [f"{c.user_id}  points {c.points_before} -> {c.points_after}"
                 + (f", level {c.level_before or '-'} -> {c.level_after or '-'}" if c.level_before != c.level_after
                    else "") for c in found.standings],
                Counter(f"level {c.level_after or '-'}" for c in found.standings if c.level_before != c.level_after))
    if found.reinstatable:
        section("revoked awards that qualify again", [f"{a.user_id}  {label(a.badge_id, a.tier)}"
                                                      for a in found.reinstatable], Counter())
    lines.append(f"users affected: {len(found.affected_users())}")
    return "\n".join(lines)


def replay_command(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    catalog = load_catalog(settings.catalog_path)
    print(f"replaying {', '.join(settings.input_topics)} with catalog {catalog.catalog_version}", file=sys.stderr)
    result = replay(settings, catalog, show_progress=not args.quiet)
    awards_db = db.make_engine(settings.database_url_value)
    try:
        db.upgrade(awards_db)
        found = diff(result.awards, database_awards(awards_db), {lv.id: lv.at for lv in catalog.levels})
        if args.json:
            print(json.dumps(found.as_json(), indent=2))
        else:
            print(render(found, result, args.show))
        if args.apply or args.revoke:
            applied = apply_diff(settings, awards_db, found, add=args.apply, revoke=args.revoke)
            print(f"applied: {applied['added']} awards added (backfill), {applied['revoked']} revoked",
                  file=sys.stderr)
        elif not found.empty:
            print("nothing written: --apply adds the missing awards, --revoke revokes the others", file=sys.stderr)
    finally:
        awards_db.dispose()
    return 0
