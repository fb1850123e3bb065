"""Broker restart in the middle of a run: worker, sink and producer recover on their own and the
result is identical to the clean run.

The test runs its own single-node broker (deploy/kafka/broker.py) in its temporary directory on
fixed ports, so that it can stop it and start it again on the same port with the same data. The
worker and the sink run as subprocesses, the sink writes to SQLite; a producer thread sends the
simulated stream through the project's SDK (``streams.sdk.producer.BadgeEvents``) at a steady rate.
Once the worker has produced part of its output, the broker is stopped (SIGTERM, a controlled
shutdown; or ``kill -9``), kept down for several seconds and started again. Nothing else is
restarted: the worker, the sink and the producer must reconnect on their own, every event must be
delivered, and the database must end up with exactly the awards and progress rows of a clean run
(computed offline with the same engine) and no duplicate row.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message

from deploy.kafka.broker import LocalBroker
from schemas.events import parse_event
from streams.sdk.producer import BadgeEvents
from streams.settings import Settings
from tests.integration import harness
from tests.integration.harness import Process, StackConfig
from tests.reliability import support

pytestmark = pytest.mark.kafka

EVENTS = 5_000
USERS = 300
RATE = 250.0  # events per second: the stream lasts ~20 s, so it goes on through the outage and after it
DOWNTIME = 8.0  # seconds between "the broker is gone" and starting it again


def fixed_ports(count: int) -> list[int]:
    """Distinct free ports below the kernel's ephemeral range (32768 and up), so that no client's
    outgoing connection can take one while the broker is down and the broker can bind it again."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(500):
        port = rng.randrange(20_000, 32_000)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports in 20000-32000")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test alone; stopped (and its process gone) however the test ends."""
    from schemas.errors import ConfigurationError
    from tests.conftest import unavailable

    port, controller_port = fixed_ports(2)
    local = LocalBroker(data_dir=tmp_path / "kafka", port=port, controller_port=controller_port)
    try:
        try:
            local.start(timeout=120)
        except ConfigurationError as exc:
            unavailable(f"a local Kafka broker ({exc})")
        yield local
    finally:
        pid = local.running_pid()
        local.stop()
        if pid is not None:
            _reap(pid)
        assert local.running_pid() is None, "the test's broker is still running"


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


@pytest.fixture
def stack(broker: LocalBroker, unique_name: Callable[[str], str], tmp_path: Path) -> StackConfig:
    # No topic clean-up: the broker and its data go away with the test.
    return StackConfig(bootstrap=broker.bootstrap, suffix=unique_name("brk"), data_dir=tmp_path, partitions=4,
                       database_url=f"sqlite:///{tmp_path / 'awards.db'}").create_topics()


@dataclass
class PacedProducer:
    """The SDK producer in a thread: sends every event at ``rate`` per second and is never restarted;
    it counts the broker's delivery reports, and its final flush waits for the last of them."""

    settings: Settings
    lines: list[bytes]
    rate: float
    delivered: int = 0
    failed: list[str] = field(default_factory=list)
    error: BaseException | None = None
    sending_took: float = 0.0
    flush_took: float = 0.0
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> PacedProducer:
        self.thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)
        self.thread.start()
        return self

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        # Called from the SDK's poller thread and from flush: count under a lock.
        with self.lock:
            if err is None:
                self.delivered += 1
            else:
                self.failed.append(str(err))

    def _run(self) -> None:
        began = time.monotonic()
        try:
            with BadgeEvents(self.settings) as events:
                for n, line in enumerate(self.lines, 1):
                    events.send(parse_event(line), callback=self._on_delivery)
                    delay = began + n / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self.sending_took = time.monotonic() - began
                # librdkafka retries on its own (message.timeout.ms, 300 s by default), so the flush
                # outlasts the outage; it raises DeliveryError for anything left or failed.
                events.flush(timeout=180)
                self.flush_took = time.monotonic() - began - self.sending_took
        except BaseException as exc:  # reported by the test
            self.error = exc

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the producer did not finish within {timeout:.0f}s"


def wait_for_line(process: Process, text: str, timeout: float) -> None:
    def seen() -> bool:
        assert process.alive(), f"{process.args[0]} died:\n{process.log()[-4000:]}"
        return text in process.log()

    harness.wait_until(seen, timeout=timeout, what=f"{text!r} in the {process.args[0]} log", interval=0.2)


def run_with_broker_restart(stack: StackConfig, broker: LocalBroker, *, hard: bool, seed: int) -> None:
    events_file = stack.data_dir / "events.jsonl"
    simulated = support.write_simulated(events_file, users=USERS, events=EVENTS, seed=seed)
    # What the SDK sends is the envelope it validated: the reference is computed from exactly that.
    lines = [parse_event(line).model_dump_json().encode() for line in simulated]
    support.write_lines(events_file, lines)
    expected = support.expected_offline(events_file)
    clean_output = expected.progress_records
    how = "kill -9" if hard else "SIGTERM"
    record = support.CrashLog(f"broker_restart_{'kill9' if hard else 'sigterm'}", events=len(lines),
                              users=expected.users)
    assert stack.database_url is not None
    worker = harness.worker(stack, **support.FAST_FAILOVER).start()
    sink = support.sink(stack).start()
    watch: support.OutputWatch | None = None
    began = time.monotonic()
    try:
        wait_for_line(worker, "]: Ready", timeout=90)
        watch = support.OutputWatch(stack.bootstrap, stack.progress_topic, through_outage=True)
        producer = PacedProducer(stack.settings(), lines, RATE).start()
        # Mid-run: the worker is processing and the producer still sending.
        point = int(clean_output * 0.2)

        def reached() -> bool:
            assert watch is not None
            assert worker.alive(), f"the worker died:\n{worker.log()[-4000:]}"
            return watch.produced() >= point

        harness.wait_until(reached, timeout=90, what=f"{point} progress records from the worker", interval=0.1)
        at = watch.produced()
        delivered_at_stop = producer.delivered
        pid = broker.running_pid()
        assert pid is not None
        stop_began = time.monotonic()
        if hard:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        broker.stop()
        gone = time.monotonic()
        time.sleep(DOWNTIME)
        for proc in (worker, sink):
            assert proc.alive(), f"{proc.args[0]} died while the broker was down:\n{proc.log()[-4000:]}"
        restart_began = time.monotonic()
        broker.start(timeout=120)
        back = time.monotonic()
        downtime = back - stop_began
        record.crash(f"broker {how} (stop took {gone - stop_began:.1f}s, down {restart_began - gone:.1f}s, "
                     f"start took {back - restart_began:.1f}s; {delivered_at_stop} events delivered before)",
                     at, clean_output)
        producer.join(timeout=240)
        assert producer.error is None, f"the producer failed: {producer.error!r}"
        assert not producer.failed, f"{len(producer.failed)} events not delivered, e.g. {producer.failed[:3]}"
        assert producer.delivered == len(lines)
        support.wait_for_database(stack.database_url, expected, timeout=150, watch=[worker, sink])
        published = harness.consume(stack.bootstrap, stack.awards_topic, idle=2, timeout=60)
        # Neither was restarted, and neither gave up: both still run.
        for proc in (worker, sink):
            assert proc.alive(), f"{proc.args[0]} died:\n{proc.log()[-4000:]}"
            assert proc.starts == 1
    finally:
        if watch is not None:
            watch.close()
        worker.stop()
        sink.stop()
    got = support.read_database(stack.database_url)
    republished = sum(n - 1 for n in Counter(m.value() for m in published).values() if n > 1)
    worker_log = worker.log()
    rejoins = worker_log.count("Joined group") - 1
    record.notes.append(
        f"wall time {time.monotonic() - began:.0f}s; producer: all {producer.delivered} events delivered, its "
        f"final flush took {producer.flush_took:.1f}s; worker starts {worker.starts} (group rejoins "
        f"{rejoins}, input partitions read again {worker_log.count('reading again from')}), sink starts "
        f"{sink.starts}; aiokafka 'Unable connect to node' errors in the worker log: "
        f"{worker_log.count('Unable connect to node')}; the award topic holds {len(published)} records, "
        f"{republished} re-published (absorbed by the sink)")
    record.report(broker_stop=how, downtime_s=round(downtime, 1), awards_expected=len(expected.awards),
                  awards_in_db=got.rows, progress_rows=len(got.progress), duplicates=got.duplicates,
                  republished=republished, worker_rejoins=rejoins)
    support.assert_same_result(got, expected)


def test_broker_sigterm_restart_mid_run_gives_the_clean_result(stack: StackConfig, broker: LocalBroker) -> None:
    run_with_broker_restart(stack, broker, hard=False, seed=21)


def test_broker_kill9_restart_mid_run_gives_the_clean_result(stack: StackConfig, broker: LocalBroker) -> None:
    run_with_broker_restart(stack, broker, hard=True, seed=22)
