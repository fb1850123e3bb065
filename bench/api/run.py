"""Read API benchmark: requests/s and p50/p99 of the user endpoint, badge list and leaderboard over PostgreSQL.

1. A throwaway PostgreSQL (deploy/postgres) at migration 0003 is filled by COPY with ``--users``
   users (100k) and ``--awards`` awards (1M) of the demo catalog, ~3 progress rows per user, 1% of
   awards revoked; then migration 0004 builds the sink's aggregates from those rows (timed).
2. Every query behind rarity and the leaderboards is timed as a plain query: its first call on a
   fresh connection (cold) and the median of the next five; and an arbitrary ``since``/``until``
   window, which still aggregates the awards.
3. ``badgestream api --workers N`` runs as a real process; ``wrk`` (Debian package; else an httpx
   async client) puts 64 connections on each endpoint. Only the catalog and window rankings are
   cached (``BADGESTREAM_API_CACHE_TTL_S``); rarity and ranks are read from the aggregates per request.

    python -m bench.api.run [--users 100000] [--awards 1000000] [--workers 2] [--duration 10] [--before DIR]

With ``--before DIR`` (an older commit's tree) step 3 runs twice on the same data: that tree's API, then this one.
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
from streams.db.aggregates import period_bounds, period_start  # noqa: E402
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


def load(url: str, users: int, awards: int, seed: int = 7) -> float:
    """Bulk-load awards and progress with COPY at migration 0003, printing progress; then migrate to the head
    (0004 builds the aggregates from the rows) and VACUUM ANALYZE. Returns the seconds migration 0004 took."""
    db.upgrade(url, "0003")
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
    began = time.perf_counter()
    db.upgrade(engine)
    migration_s = time.perf_counter() - began
    say(f"migration 0004 built the aggregates in {migration_s:.1f}s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        counts = db.count_rows(conn)
    say(f"rows: {counts}")
    engine.dispose()
    return migration_s


# --- 2. the aggregates as plain queries ---------------------------------------------------------

AT = START + timedelta(days=160)  # a Wednesday in June: the period boards of the bench
LOW_USER = "u-99999"  # holds few awards: far down the boards, the dearest rank and neighbours


def time_queries(url: str, repeats: int = 5) -> list[tuple[str, float, float]]:
    """(query, ms of its first call on a fresh connection, median ms of the next ``repeats``)."""
    engine = db.make_engine(url, isolation_level="AUTOCOMMIT")
    since, until = START + timedelta(days=90), START + timedelta(days=180)
    week = db.Board(period="week", starts=period_start("week", AT))
    queries = {
        "holders + known users (rarity)": lambda c: db.holders(c),
        "one user's awards + progress + holders": lambda c: db.user_with_holders(c, "u-4242"),
        "top 10, all time": lambda c: db.top(c, db.Board(), 10),
        "top 10, all time by points": lambda c: db.top(c, db.Board(by="points"), 10),
        "top 10, one day": lambda c: db.top(c, db.Board(period="day", starts=period_start("day", AT)), 10),
        "top 10, one week": lambda c: db.top(c, week, 10),
        "top 10, one month": lambda c: db.top(c, db.Board(period="month", starts=period_start("month", AT)), 10),
        "top 10, one badge": lambda c: db.top(c, db.Board(badge_id="first_quiz"), 10),
        "top 1000, all time": lambda c: db.top(c, db.Board(), 1000),
        "own rank, low user, all time": lambda c: db.standing(c, db.Board(), LOW_USER),
        "around a low user, all time (10)": lambda c: db.around(c, db.Board(), LOW_USER, 10),
        "around a low user, one week (10)": lambda c: db.around(c, week, LOW_USER, 10),
        "window since/until (every user ranked)": lambda c: db.standings(c, since=since, until=until),
        "window, one badge in a week": lambda c: db.standings(c, badge_id="first_quiz",
                                                              since=period_bounds("week", week.starts)[0],  # type: ignore[arg-type]
                                                              until=period_bounds("week", week.starts)[1]),  # type: ignore[arg-type]
    }
    out = []
    for name, query in queries.items():
        with engine.connect() as conn:  # a fresh connection: nothing prepared or cached by the session
            began = time.perf_counter()
            query(conn)
            cold = (time.perf_counter() - began) * 1000
            samples = []
            for _ in range(repeats):
                began = time.perf_counter()
                query(conn)
                samples.append((time.perf_counter() - began) * 1000)
        out.append((name, cold, statistics.median(samples)))
    engine.dispose()
    return out


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
def api_process(url: str, workers: int, ttl: float, source: Path = REPO) -> Iterator[str]:
    """``badgestream api`` from the source tree ``source`` (this one, or an older commit's, for a before/after)."""
    port = free_port()
    env = {**os.environ, "BADGESTREAM_DATABASE_URL": url, "BADGESTREAM_API_CACHE_TTL_S": str(ttl),
           "PYTHONPATH": str(source)}
    env.pop("BADGESTREAM_API_TOKEN", None)
    log = tempfile.NamedTemporaryFile(prefix="bench-api-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "api", "--port", str(port), "--workers",
                             str(workers), "--log-level", "warning"], env=env, cwd=source, stdout=log,
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
math.randomseed(7)
request = function()
  return wrk.format("GET", "{path}" .. math.random(0, {last}){tail})
end
"""
AT_TEXT = AT.date().isoformat()
ENDPOINTS: dict[str, tuple[str, str] | str] = {
    # name: a fixed path, or (prefix, suffix) around a random user u-N
    "user": ("/v1/users/u-", ""),
    "badges": "/v1/badges",
    "leaderboard": "/v1/leaderboard?limit=10",
    "leaderboard week": f"/v1/leaderboard?period=week&at={AT_TEXT}&limit=10",
    "leaderboard around user": ("/v1/leaderboard?limit=10&around=u-", ""),
}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


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
    # The latency distribution's lines: "50%" alone at the start of a line (a "+/- Stdev" of 68.50% is not one).
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
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

    path = ENDPOINTS[endpoint]
    if warm:  # each worker process has its own catalog cache and connection pool
        asyncio.run(_warm(base, path if isinstance(path, str) else f"{path[0]}1{path[1]}", workers))
    began_cpu = _tree_cpu_seconds(API_PID[0])
    if shutil.which("wrk"):
        if isinstance(path, tuple):
            script = WRK_RANDOM_USERS.replace("{path}", path[0]).replace("{last}", str(users - 1))
            return measured(wrk(base, duration, script.replace("{tail}", f' .. "{path[1]}"' if path[1] else "")))
        return measured(wrk(base + path, duration))
    rng = random.Random(1)
    candidates = [f"{path[0]}{rng.randrange(users)}{path[1]}" for _ in range(10_000)] if isinstance(path, tuple) \
        else [path]
    return measured(asyncio.run(_httpx_load(base, candidates, duration)))


def first_requests(base: str) -> list[tuple[str, float]]:
    """(path, ms) of the first requests a freshly started API answers: nothing cached, pool empty."""
    out = []
    for path in ("/v1/badges", "/v1/leaderboard?limit=10", f"/v1/leaderboard?period=week&at={AT_TEXT}",
                 "/v1/users/u-4242"):
        began = time.perf_counter()
        httpx.get(base + path, timeout=600).raise_for_status()
        out.append((path, (time.perf_counter() - began) * 1000))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--awards", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--skip-queries", action="store_true", help="no query timing (step 2)")
    parser.add_argument("--cache-ttl", type=float, default=30.0, help="BADGESTREAM_API_CACHE_TTL_S of the cached runs")
    parser.add_argument("--postgres-url", default=None, help="an existing, empty database (default: throwaway)")
    parser.add_argument("--before", type=Path, default=None,
                        help="the source tree of an older commit (`git archive COMMIT | tar -x -C DIR`): its API is "
                             "measured first, on the same data, in the same run")
    args = parser.parse_args(argv)

    tool = "wrk" if shutil.which("wrk") else "httpx async client"
    with contextlib.ExitStack() as stack:
        url = args.postgres_url or stack.enter_context(throwaway_postgres("bench-api-pg-"))
        migration_s = load(url, args.users, args.awards)
        query_times = [] if args.skip_queries else time_queries(url)
        for name, cold_ms, warm_ms in query_times:
            say(f"{name}: {cold_ms:.1f} ms cold, {warm_ms:.1f} ms warm")
        results = []
        firsts = []
        ttl = args.cache_ttl
        LOAD[0] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        sources = [("before", args.before.resolve()), ("after", REPO)] if args.before else [("", REPO)]
        for label, source in sources:
            with api_process(url, args.workers, ttl, source) as base:
                firsts += [(label, path, ms) for path, ms in first_requests(base)]
                for endpoint in ENDPOINTS:
                    rps, p50, p99, bad, cpu = load_test(base, endpoint, args.users, args.duration, args.workers,
                                                        warm=True)
                    say(f"{label} {endpoint}: {rps:,.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, non-2xx {bad}, "
                        f"API CPU {cpu:.2f} ms/request")
                    results.append((label, endpoint, rps, p50, p99, bad, cpu))

    out = io.StringIO()
    out.write(f"\n{args.users:,} users, {args.awards:,} awards, PostgreSQL, {args.workers} uvicorn workers, "
              f"{CONNECTIONS} connections ({tool}), {args.duration:g} s per run\n\n")
    out.write(f"migration 0004 (aggregates built from the rows): {migration_s:.1f} s\n")
    out.write(f"load average before the HTTP runs: {LOAD[0]}\n\n")
    out.write("| code | endpoint | requests/s | p50 ms | p99 ms | non-2xx | API CPU ms/request |\n"
              "|---|---|---|---|---|---|---|\n")
    for label, endpoint, rps, p50, p99, bad, cpu in results:
        out.write(f"| {label} | {endpoint} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {bad} | {cpu:.2f} |\n")
    out.write("\n| code | first request to a fresh API | ms |\n|---|---|---|\n")
    for label, path, ms in firsts:
        out.write(f"| {label} | `{path}` | {ms:.1f} |\n")
    if query_times:
        out.write("\n| query | cold (first call, fresh connection) ms | warm (median of 5) ms |\n|---|---|---|\n")
    for name, cold_ms, warm_ms in query_times:
        out.write(f"| {name} | {cold_ms:.2f} | {warm_ms:.2f} |\n")
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
