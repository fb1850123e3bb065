"""HTTP clients for the notifier compared: CPU time per signed POST, aiohttp against httpx.

The receiver (streams/devstack/receiver.py) runs in a child process, so this process's CPU time
(time.process_time: all its threads) is the client's alone: building and signing the request,
sending it over a keep-alive pool, reading the answer.

    python -m bench.notify.clients [--requests 4000] [--inflight 1 8 64]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from streams.notify.endpoints import secret_key  # noqa: E402
from streams.notify.messages import Signer  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = (b'{"type":"badge.awarded","timestamp":"2026-11-21T00:00:00+00:00","data":{"award_id":"0123456789abcdef",'
        b'"user_id":"u1","badge_id":"bench","tier":null,"occurrence":1,"awarded_at":"2026-11-21T00:00:00+00:00",'
        b'"event_id":"e1","catalog_version":"bench","metadata":{}}}')
SERVE = ("import sys; from streams.devstack.receiver import WebhookReceiver; "
         f"r = WebhookReceiver({SECRET!r}).start(); print(r.port, flush=True); sys.stdin.read()")

Post = Callable[[str, dict[str, str]], Awaitable[int]]


async def measure(post: Post, url: str, requests: int, inflight: int) -> tuple[float, float]:
    """(requests/s, CPU µs per request) for ``requests`` POSTs with ``inflight`` at a time."""
    signer = Signer(secret_key(SECRET))
    queue = iter(range(requests))

    async def worker() -> None:
        for i in queue:
            status = await post(url, signer.headers(f"id-{i}", int(time.time()), BODY))
            assert status == 200, status

    for i in range(50):  # warm the pool
        await post(url, signer.headers(f"warm-{i}", int(time.time()), BODY))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return requests / wall, cpu / requests * 1e6


async def run(url: str, requests: int, inflights: list[int]) -> None:
    print("| client | in flight | requests/s | client CPU per request |\n|---|---|---|---|")
    for inflight in inflights:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as session:
            async def aiohttp_post(url: str, headers: dict[str, str], session: aiohttp.ClientSession = session) -> int:
                async with session.post(url, data=BODY, headers=headers) as answer:
                    await answer.read()
                    return answer.status

            rate, cpu = await measure(aiohttp_post, url, requests, inflight)
            print(f"| aiohttp {aiohttp.__version__} | {inflight} | {rate:,.0f} | {cpu:,.0f} µs |", flush=True)
        limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
        async with httpx.AsyncClient(limits=limits) as client:
            async def httpx_post(url: str, headers: dict[str, str], client: httpx.AsyncClient = client) -> int:
                return (await client.post(url, content=BODY, headers=headers)).status_code

            rate, cpu = await measure(httpx_post, url, requests, inflight)
            print(f"| httpx {httpx.__version__} | {inflight} | {rate:,.0f} | {cpu:,.0f} µs |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    receiver = subprocess.Popen([sys.executable, "-c", SERVE], cwd=REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        asyncio.run(run(f"http://127.0.0.1:{port}/hook", args.requests, args.inflight))
    finally:
        receiver.terminate()
        receiver.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
