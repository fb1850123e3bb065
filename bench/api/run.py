"""Read API benchmark: requests/s and p50/p99 of the user endpoint, badge list and leaderboard over PostgreSQL.

1. A throwaway PostgreSQL (deploy/postgres) is filled by COPY with ``--users`` users (100k) and
   ``--awards`` awards (1M) of the demo catalog, ~3 progress rows per user, 1% of awards revoked.
2. The aggregates behind rarity and rankings are timed as plain queries, with and without
   migration 0003's partial indexes: what one uncached request would cost.
3. ``badgestream api --workers N`` runs as a real process; ``wrk`` (Debian package; else an httpx
   async client) puts 64 connections on each endpoint, with the aggregates cached
   (``BADGESTREAM_API_CACHE_TTL_S``, 30 s by default). Recomputing them per request is step 2's table.

    python -m bench.api.run [--users 100000] [--awards 1000000] [--workers 2] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.kafka.broker import free_port  # noqa: E402
from deploy.postgres.server import throwaway_postgres  # noqa: E402
from schemas.catalog import load_catalog  # noqa: E402
from schemas.records import make_award_id  # noqa: E402
from streams import db  # noqa: E402
from streams.settings import DEMO_CATALOG  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
CONNECTIONS = 64


def say(message: str) -> None:
    print(f"[bench.api] {message}", file=sys.stderr, flush=True)


# --- 1. data ------------------------------------------------------------------------------------

def award_slots(catalog_path: Path) -> list[tuple[str, str]]:
    """(badge_id, tier) pairs a user can hold, in the order a typical user earns them."""
    slots: list[tuple[str, str]] = []
    for row in db.catalog_rows(load_catalog(catalog_path)):
        tiers = [t["tier"] for t in row["tiers"] or []] or [db.NO_TIER]
        slots += [(row["id"], tier) for tier in tiers]
    return slots


def load(url: str, users: int, awards: int, seed: int = 7) -> None:
    """Bulk-load awards and progress with COPY, printing progress; then VACUUM ANALYZE."""
    db.upgrade(url)
    engine = db.make_engine(url)
    db.write_catalog(engine, load_catalog(DEMO_CATALOG))
    slots = award_slots(DEMO_CATALOG)
    rng = random.Random(seed)
    # Skewed like real users: most hold a few awards, some many (repeatable recruiter beyond the slots).
    counts = [min(int(rng.expovariate(1 / (awards / users))) + 1, 80) for _ in range(users)]
    while (excess := sum(counts) - awards) != 0:
        for number in rng.sample(range(users), min(abs(excess), users)):
            counts[number] = max(1, min(80, counts[number] - (1 if excess > 0 else -1)))
    columns = ("award_id", "user_id", "badge_id", "tier", "occurrence", "awarded_at", "event_id",
               "evaluation_metadata", "backfill", "revoked_at", "catalog_version", "points")
    began = time.perf_counter()
    written = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY user_badges ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for number in range(users):
                user = f"u-{number}"
                count = counts[number]
                for k in range(count):
                    if k < len(slots):
                        (badge, tier), occurrence = slots[k], 1
                    else:
                        badge, tier, occurrence = "recruiter", "", k - len(slots) + 2
                    at = START + timedelta(minutes=rng.randrange(365 * 24 * 60))
                    revoked = at + timedelta(days=1) if rng.random() < 0.01 else None
                    copy.write_row((make_award_id(user, badge, tier or None, occurrence), user, badge, tier, occurrence,
                                    at, f"e-{number}-{k}", '{"progress": 1, "target": 1}', False, revoked, "bench",
                                    rng.choice((0, 5, 10, 25))))
                written += count
                if (number + 1) % (users // 10 or 1) == 0:
                    say(f"awards: {written:,}/{awards:,} ({number + 1:,} users, {time.perf_counter() - began:.0f}s)")
        with cursor.copy("COPY user_badge_progress (user_id, badge_id, tier, progress, target, updated_at) "
                         "FROM STDIN") as copy:  # type: ignore[attr-defined]
            for number in range(users):
                for badge, tier, target in (("quiz_master", "gold", 30), ("explorer", "", 5), ("daily_warrior", "", 7)):
                    copy.write_row((f"u-{number}", badge, tier, rng.randrange(target), target, START))
        raw.commit()
    finally:
        raw.close()
    say(f"loaded {written:,} awards and {3 * users:,} progress rows in {time.perf_counter() - began:.0f}s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        counts = db.count_rows(conn)
    say(f"rows: {counts}")
    engine.dispose()


# --- 2. the aggregates as plain queries ---------------------------------------------------------

def time_queries(url: str, repeats: int = 5) -> list[tuple[str, float, float]]:
    """(query, median ms with the 0003 indexes, median ms without them)."""
    engine = db.make_engine(url)
    since, until = START + timedelta(days=90), START + timedelta(days=180)
    queries = {
        "holders + known users (rarity)": lambda c: db.holders(c),
        "ranking, all time": lambda c: db.standings(c),
        "ranking, one season": lambda c: db.standings(c, since=since, until=until),
        "ranking, one badge": lambda c: db.standings(c, badge_id="first_quiz"),
        "ranking by points": lambda c: db.standings(c, by="points"),
        "one user's awards + progress": lambda c: (db.held_awards(c, "u-4242"), db.user_progress(c, "u-4242")),
    }

    def measure() -> dict[str, float]:
        out = {}
        with engine.connect() as conn:
            for name, query in queries.items():
                query(conn)  # warm
                samples = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    query(conn)
                    samples.append((time.perf_counter() - began) * 1000)
                out[name] = statistics.median(samples)
        return out

    with_indexes = measure()
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_user_badges_held_badge"))
        conn.execute(sa.text("DROP INDEX ix_user_badges_held_user"))
    without = measure()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CREATE INDEX ix_user_badges_held_badge ON user_badges (badge_id, tier, user_id) "
                             "WHERE revoked_at IS NULL"))
        conn.execute(sa.text("CREATE INDEX ix_user_badges_held_user ON user_badges (user_id, awarded_at, points) "
                             "WHERE revoked_at IS NULL"))
        conn.execute(sa.text("VACUUM ANALYZE user_badges"))
    engine.dispose()
    return [(name, with_indexes[name], without[name]) for name in queries]


# --- 3. HTTP load -----------------------------------------------------------------------------

def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and its child processes (uvicorn's workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid, ppid = int(stat.parent.name), int(fields[1])
            if pid == root or ppid == root:
                total += (int(fields[11]) + int(fields[12])) / ticks
    return total


API_PID: list[int] = []
LOAD = ["?"]


@contextlib.contextmanager
def api_process(url: str, workers: int, ttl: float) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "BADGESTREAM_DATABASE_URL": url, "BADGESTREAM_API_CACHE_TTL_S": str(ttl)}
    env.pop("BADGESTREAM_API_TOKEN", None)
    log = tempfile.NamedTemporaryFile(prefix="bench-api-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "api", "--port", str(port), "--workers",
                             str(workers), "--log-level", "warning"], env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    API_PID[:] = [proc.pid]
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
        log.close()
        os.unlink(log.name)


WRK_RANDOM_USERS = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/v1/users/u-" .. math.random(0, {last}))
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, duration: float, script: str | None = None) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx) from ``wrk --latency`` with 64 connections."""
    args = ["wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", f"{duration:.0f}s", "--latency", "--timeout", "30s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        if script:
            lua.write(script)
    try:
        if script:
            args += ["-s", lua.name]
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(lua.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(bad.group(1)) if bad else 0


async def _httpx_load(base: str, paths: list[str], duration: float) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    bad = 0
    stop = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        async def one(worker: int) -> None:
            nonlocal bad
            rng = random.Random(worker)
            while time.perf_counter() < stop:
                began = time.perf_counter()
                response = await client.get(rng.choice(paths))
                latencies.append((time.perf_counter() - began) * 1000)
                bad += response.status_code >= 300
        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(CONNECTIONS)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return (len(latencies) / elapsed, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], bad)


async def _warm(base: str, path: str, workers: int) -> None:
    """Fill every worker's cache: concurrent requests on fresh connections reach every uvicorn process."""
    async with httpx.AsyncClient(base_url=base, timeout=600, headers={"Connection": "close"}) as client:
        await asyncio.gather(*(client.get(path) for _ in range(8 * workers)))


def load_test(base: str, endpoint: str, users: int, duration: float, workers: int,
              warm: bool) -> tuple[float, float, float, int, float]:
    """(requests/s, p50 ms, p99 ms, non-2xx, API CPU ms per request) of one endpoint under 64 connections."""
    began_cpu = None

    def measured(result: tuple[float, float, float, int]) -> tuple[float, float, float, int, float]:
        cpu = _tree_cpu_seconds(API_PID[0]) - (began_cpu or 0.0)
        return (*result, cpu * 1000 / max(result[0] * duration, 1))

    paths = {"user": None, "badges": "/v1/badges", "leaderboard": "/v1/leaderboard?limit=10"}
    path = paths[endpoint]
    if warm:  # each worker process has its own cache
        asyncio.run(_warm(base, path or "/v1/users/u-1", workers))
    began_cpu = _tree_cpu_seconds(API_PID[0])
    if shutil.which("wrk"):
        if path is None:
            return measured(wrk(base, duration, WRK_RANDOM_USERS.replace("{last}", str(users - 1))))
        return measured(wrk(base + path, duration))
    rng = random.Random(1)
    candidates = [f"/v1/users/u-{rng.randrange(users)}" for _ in range(10_000)] if path is None else [path]
    return measured(asyncio.run(_httpx_load(base, candidates, duration)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--awards", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--skip-queries", action="store_true", help="no query timing (step 2)")
    parser.add_argument("--cache-ttl", type=float, default=30.0, help="BADGESTREAM_API_CACHE_TTL_S of the cached runs")
    parser.add_argument("--postgres-url", default=None, help="an existing, empty database (default: throwaway)")
    args = parser.parse_args(argv)

    tool = "wrk" if shutil.which("wrk") else "httpx async client"
    with contextlib.ExitStack() as stack:
        url = args.postgres_url or stack.enter_context(throwaway_postgres("bench-api-pg-"))
        load(url, args.users, args.awards)
        query_times = [] if args.skip_queries else time_queries(url, repeats=3)
        for name, with_ms, without_ms in query_times:
            say(f"{name}: {with_ms:.0f} ms with the 0003 indexes, {without_ms:.0f} ms without")
        results = []
        # Recomputing the aggregates per request is not load-tested: at this size one request costs the
        # query times above, and 64 of them at once only queue up. The query table is that comparison.
        ttl = args.cache_ttl
        LOAD[0] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        with api_process(url, args.workers, ttl) as base:
            for endpoint in ("user", "badges", "leaderboard"):
                rps, p50, p99, bad, cpu = load_test(base, endpoint, args.users, args.duration, args.workers,
                                                    warm=True)
                say(f"{endpoint} ttl={ttl:g}: {rps:,.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, non-2xx {bad}, "
                    f"API CPU {cpu:.2f} ms/request")
                results.append((endpoint, ttl, rps, p50, p99, bad, cpu))

    out = io.StringIO()
    out.write(f"\n{args.users:,} users, {args.awards:,} awards, PostgreSQL, {args.workers} uvicorn workers, "
              f"{CONNECTIONS} connections ({tool}), {args.duration:g} s per run\n\n")
    out.write(f"load average before the HTTP runs: {LOAD[0]}\n\n")
    out.write("| endpoint | aggregates | requests/s | p50 ms | p99 ms | non-2xx | API CPU ms/request |\n"
              "|---|---|---|---|---|---|---|\n")
    for endpoint, ttl, rps, p50, p99, bad, cpu in results:
        mode = f"cached ({ttl:g} s)" if ttl else "recomputed per request"
        out.write(f"| {endpoint} | {mode} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {bad} | {cpu:.2f} |\n")
    if query_times:
        out.write("\n| query (one call, median of 3) | with 0003 indexes, ms | without, ms |\n|---|---|---|\n")
    for name, with_ms, without_ms in query_times:
        out.write(f"| {name} | {with_ms:.0f} | {without_ms:.0f} |\n")
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
