"""bench/worker --scale-out: several worker processes in one consumer group, what each one adds.

For each worker count (1, 2, 3 by default), on topics of their own with 8 partitions: start that many
``badgestream worker`` processes in one group (each with its own data dir and web port, so its own
static member id; the first alone, then the others), wait until the group is stable with all of them,
then produce the stream and time the group from its first event handled to its last. Reported: the
aggregate events/s, the workers' CPU summed (from /proc) and so events per worker CPU-second, each
worker's share, and the ratio to one worker. Every process shares the machine with the broker and the
bench: the machine's busy CPU and the load average are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, ConsumerGroupState, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.worker.run import Worker, bench_settings, produce
from deploy.kafka.broker import free_port
from streams.devstack.simulate import simulate_events

GOAL_PER_CPU_SECOND = 40_000  # issue 21: 25 us of worker CPU per event
PROGRESS_EVERY_S = 5.0
# Each look at a worker's /metrics costs that worker CPU: 10 a second each is enough to time the end.
POLL_S = 0.1
STALL_S = 60.0


class Stuck(SystemExit):
    """A worker died or the group stopped handling events: the run ends and keeps its logs."""


@dataclass
class GroupRun:
    """One worker count's figures."""

    workers: int
    rate: float = float("nan")  # aggregate events/s, first event handled to last
    cpu_seconds: float = float("nan")  # the workers' CPU over that time, summed
    elapsed: float = float("nan")
    handled: float = 0.0
    each: list[tuple[float, float]] = field(default_factory=list)  # per worker: events handled, CPU seconds
    partitions: list[int] = field(default_factory=list)  # partitions per member once stable
    load: float = float("nan")
    machine_cpu_seconds: float = float("nan")  # the whole machine's busy CPU over the same time

    @property
    def us_per_event(self) -> float:
        return self.cpu_seconds / self.handled * 1e6

    @property
    def per_cpu_second(self) -> float:
        return self.handled / self.cpu_seconds


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (Linux /proc/stat): with the
    workers' own CPU it shows how much of the machine was left to them."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def lag(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """Per partition of ``topic``: records past the group's committed offset."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        committed = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [c.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0) for tp in committed]
    finally:
        c.close()


def group_state(admin: AdminClient, group: str, topic: str) -> tuple[ConsumerGroupState | None, list[int]]:
    """The group's state and how many partitions of ``topic`` each member holds (largest first)."""
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:  # the coordinator is not ready yet, or the group does not exist yet
        return None, []
    counts = [sum(tp.topic == topic for tp in m.assignment.topic_partitions) for m in description.members]
    return description.state, sorted(counts, reverse=True)


def wait_for_group(admin: AdminClient, group: str, topic: str, workers: list[Worker],
                   timeout: float = 180) -> list[int]:
    """Until the group is stable with every worker in it; returns how many partitions of ``topic`` each holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is not None:
                raise SystemExit(f"a worker stopped while joining; see {worker.log_path}")
        state, counts = group_state(admin, group, topic)
        if state == ConsumerGroupState.STABLE and len(counts) == len(workers):
            return counts
        time.sleep(0.5)
    raise SystemExit(f"group {group} not stable with {len(workers)} members after {timeout:.0f}s")


def run_group(bootstrap: str, label: str, count: int, values: list[bytes], keys: list[bytes],
              partitions: int) -> GroupRun:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-worker-scale-{count}-"))
    suffix = f"scale{count}-{uuid.uuid4().hex[:6]}"
    settings = bench_settings(bootstrap, suffix, partitions, workdir)
    workers = []
    for n in range(count):
        own = workdir / f"w{n}"
        own.mkdir()
        # One group (the app id), a data dir and a web port each: a static member id each, too.
        workers.append(Worker(settings.model_copy(update={"web_port": free_port()}), own))
    result = GroupRun(count)
    kept = False
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        began_start = time.perf_counter()
        topic = settings.input_topics[0]
        # The first alone until it is in the group (its changelog topics created), then the others: a
        # worker started while another is creating the changelog topics crashes at its first commit
        # with Faust's PartitionsMismatch (0 partitions in its metadata), seen here on 2026-12-02.
        workers[0].start()
        wait_for_group(admin, settings.app_id, topic, workers[:1])
        for worker in workers[1:]:
            worker.start()
        assignment = wait_for_group(admin, settings.app_id, topic, workers)
        print(f"[{label} x{count}] group stable after {time.perf_counter() - began_start:.1f}s, "
              f"input partitions per worker {'+'.join(map(str, assignment))}", flush=True)
        total = len(values)

        def handled() -> list[float]:
            return [max(w.processed(), 0.0) for w in workers]

        # Produced once the group is settled (no rebalance, no redelivery inside the measurement), in
        # the background: the workers start on the first events while the rest are still being sent.
        producing = threading.Thread(target=produce, args=(bootstrap, topic, values, keys), daemon=True)
        producing.start()
        while sum(handled()) < 1:
            time.sleep(0.005)
        began, at_start = time.perf_counter(), handled()
        cpu_start = [w.cpu_seconds() for w in workers]
        machine_start = machine_busy_seconds()
        last = moved = began
        seen = 0.0
        while sum(now_handled := handled()) < total:
            for worker in workers:
                if worker.process is not None and worker.process.poll() is not None:
                    raise Stuck(f"a worker stopped (exit {worker.process.returncode}); see {worker.log_path}")
            now = time.perf_counter()
            if sum(now_handled) > seen:
                seen, moved = sum(now_handled), now
            elif now - moved > STALL_S:
                raise Stuck(f"no event handled for {STALL_S:.0f}s at {seen:,.0f} of {total:,} "
                            f"(per worker, -1: its /metrics did not answer: "
                            f"{', '.join(f'{w.processed():,.0f}' for w in workers)}; the group's lag per input "
                            f"partition: {lag(bootstrap, settings.app_id, topic, partitions)}); see the logs "
                            f"{', '.join(str(w.log_path) for w in workers)}")
            if now - last >= PROGRESS_EVERY_S:
                last = now
                done = sum(now_handled) - sum(at_start)
                print(f"[{label} x{count}] {sum(now_handled):,.0f} of {total:,} events, {done / (now - began):,.0f}/s "
                      f"so far; per worker {', '.join(f'{h:,.0f}' for h in now_handled)}", flush=True)
            time.sleep(POLL_S)
        result.elapsed = time.perf_counter() - began
        cpu_end = [w.cpu_seconds() for w in workers]
        result.machine_cpu_seconds = machine_busy_seconds() - machine_start
        producing.join()
        result.load = os.getloadavg()[0]
        result.each = [(end - start, cpu_e - cpu_s)
                       for start, end, cpu_s, cpu_e in zip(at_start, now_handled, cpu_start, cpu_end, strict=True)]
        result.handled = sum(h for h, _ in result.each)
        result.cpu_seconds = sum(c for _, c in result.each)
        result.rate = result.handled / result.elapsed
        result.partitions = group_state(admin, settings.app_id, topic)[1]
        print(f"[{label} x{count}] {result.rate:,.0f} events/s, {result.cpu_seconds / result.elapsed:.2f} cores, "
              f"{result.us_per_event:,.0f} us CPU per event = {result.per_cpu_second:,.0f} events per worker "
              f"CPU-second (load {result.load:.1f})", flush=True)
    except Stuck:
        kept = True  # the logs say why
        raise
    finally:
        for worker in workers:
            worker.stop()
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def table(label: str, users: int, events: int, partitions: int, runs: list[GroupRun]) -> list[str]:
    one = next((r for r in runs if r.workers == 1), None)
    previous = {r.workers: r for r in runs}
    heads = [f"{r.workers} worker{'s' if r.workers > 1 else ''}" for r in runs]
    rows = {
        "events/s (whole group)": [f"{r.rate:,.0f}" for r in runs],
        "x one worker": [f"{r.rate / one.rate:.2f}x" if one else "n/a" for r in runs],
        "events/s added by the last worker started": [
            f"{r.rate - previous[r.workers - 1].rate:+,.0f}" if r.workers - 1 in previous else "" for r in runs],
        "worker CPU, summed (cores)": [f"{r.cpu_seconds / r.elapsed:.2f}" for r in runs],
        "worker CPU us per event": [f"{r.us_per_event:,.0f}" for r in runs],
        f"events per worker CPU-second (goal {GOAL_PER_CPU_SECOND:,})": [f"{r.per_cpu_second:,.0f}" for r in runs],
        "per worker: events/s (CPU share of a core)": [
            "; ".join(f"{h / r.elapsed:,.0f} ({c / r.elapsed:.0%})" for h, c in r.each) for r in runs],
        "input partitions per worker": ["+".join(map(str, r.partitions)) for r in runs],
        "seconds, first event to last": [f"{r.elapsed:.1f}" for r in runs],
        f"machine busy, all processes (cores of {os.cpu_count()})": [
            f"{r.machine_cpu_seconds / r.elapsed:.2f}" for r in runs],
        "load average at the end": [f"{r.load:.1f}" for r in runs],
    }
    lines = [f"scale-out, {label} stream ({users:,} users, {events:,} events, {partitions} partitions)", "",
             "| figure | " + " | ".join(heads) + " |", "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return lines


def run_scale_out(bootstrap: str, streams: dict[str, tuple[int, int]], args: argparse.Namespace) -> list[str]:
    """Every chosen stream at every worker count; the tables, one per stream."""
    counts = [int(n) for n in args.workers.split(",")]
    lines: list[str] = []
    for label in args.streams.split(","):
        users, events = streams[label]
        dicts = list(simulate_events(users, events, seed=7))
        values = [orjson.dumps(e) for e in dicts]
        keys = [e["user_id"].encode() for e in dicts]
        runs = [run_group(bootstrap, label, n, values, keys, args.partitions) for n in counts]
        lines += [*table(label, users, events, args.partitions, runs), ""]
    return lines
