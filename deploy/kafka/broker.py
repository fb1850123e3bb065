"""Fetch, format, start and stop a single-node KRaft Kafka broker on 127.0.0.1.

One module serves the CLI (``badgestream kafka start``), the Makefile and the test fixtures. The
broker jars come from Maven Central through ``deploy/kafka/pom.xml`` into a local cache; the
broker runs as a plain JVM process with a small heap, its pid and ports recorded in the data
directory so that a second ``start`` finds the running broker instead of formatting anything.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.lifetime import die_with_parent
from schemas.errors import ConfigurationError

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.xml"
REPO_ROOT = HERE.parent.parent
DEFAULT_LIB_DIR = Path(os.environ.get("BADGESTREAM_KAFKA_LIB_DIR", HERE / "lib"))
DEFAULT_DATA_DIR = REPO_ROOT / "var" / "kafka"
DEFAULT_PORT = 9092
DEFAULT_HEAP = os.environ.get("BADGESTREAM_KAFKA_HEAP", "512m")


def _say(message: str) -> None:
    print(f"[kafka] {message}", file=sys.stderr, flush=True)


def fetch_libs(lib_dir: Path = DEFAULT_LIB_DIR) -> Path:
    """Lay every broker jar into ``lib_dir`` with Maven; a stamp of the pom makes it a no-op when current."""
    stamp = lib_dir / ".pom-sha256"
    want = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want and any(lib_dir.glob("kafka_2.13-*.jar")):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigurationError(
            "Maven (mvn) is not on PATH: it is needed once to fetch Apache Kafka from Maven Central "
            "(install it, e.g. `apt-get install maven`), or point BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS "
            "at an existing broker"
        )
    _say(f"fetching Apache Kafka jars from Maven Central into {lib_dir} ...")
    if lib_dir.exists():
        shutil.rmtree(lib_dir)
    lib_dir.mkdir(parents=True)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={lib_dir}", "-DincludeScope=runtime"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigurationError(
            f"Maven could not fetch Kafka (exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    stamp.write_text(want + "\n")
    _say(f"fetched {len(list(lib_dir.glob('*.jar')))} jars")
    return lib_dir


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ConfigurationError(
            "Java 17+ is needed for the local Kafka broker (e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    return java


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); read its state to tell.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def metadata_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True once the broker answers a metadata request (not merely accepts TCP connections)."""
    from confluent_kafka.admin import AdminClient

    # Its log lines (e.g. "Connect ... failed" while a broker starts) go through Python logging, as
    # every client's do (streams/kafka.py), not raw onto stderr.
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000),
                              "logger": logging.getLogger("badgestream.librdkafka")}
    admin = AdminClient(config)
    try:
        meta = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(meta.brokers)


@dataclass
class LocalBroker:
    """A single-node combined broker+controller, everything under ``data_dir``."""

    data_dir: Path = DEFAULT_DATA_DIR
    port: int = DEFAULT_PORT
    controller_port: int | None = None
    heap: str = DEFAULT_HEAP
    lib_dir: Path = DEFAULT_LIB_DIR
    tied_to_parent: bool = False
    """Stop (SIGTERM) when the process that started it dies, however it dies (deploy/lifetime.py):
    for a broker of ``badgestream up`` or of a test run, not for ``badgestream kafka start``."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "logs"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def _write_config(self) -> None:
        # Ports of an existing data dir are kept: the quorum voters are part of the formatted state.
        if self.config_file.exists():
            for line in self.config_file.read_text().splitlines():
                if line.startswith("listeners="):
                    ports = [int(part.rsplit(":", 1)[1]) for part in line.split("=", 1)[1].split(",")]
                    if ports[0] != self.port:
                        _say(f"data dir {self.data_dir} was formatted for port {ports[0]}; using it")
                    self.port, self.controller_port = ports[0], ports[1]
                    return
        controller = self.controller_port or free_port()
        self.controller_port = controller
        self.config_file.write_text(
            "\n".join(
                [
                    "# written by deploy/kafka/broker.py: single-node KRaft, loopback only",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.log_dirs}",
                    "num.partitions=1",
                    "default.replication.factor=1",
                    "offsets.topic.replication.factor=1",
                    # Small internal topics: a 2-core machine should not create 50 partitions.
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    # Topics are created on purpose, with the partition count the worker's state
                    # table needs; a typo'd or early producer must not create a 1-partition topic.
                    "auto.create.topics.enable=false",
                    "delete.topic.enable=true",
                    "log.retention.hours=-1",
                    "log.segment.bytes=67108864",
                    "log.cleaner.dedupe.buffer.size=8388608",
                    "",
                ]
            )
        )

    def _format_if_needed(self, java: str, classpath: str) -> None:
        if (self.log_dirs / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().bytes
        import base64

        cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
        result = subprocess.run(
            [java, "-cp", classpath, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
             # "=" form: a base64 id may start with "-", which argparse would take for an option.
             "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(self.config_file)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise ConfigurationError(f"formatting the KRaft storage failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 90.0) -> float:
        """Start (or find running) and wait for metadata; returns seconds until ready."""
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.running_pid() is not None:
            self._write_config()
            if self.wait_ready(timeout):
                _say(f"already running at {self.bootstrap} (pid {self.running_pid()})")
                return time.monotonic() - began
            raise ConfigurationError(f"a broker process is running from {self.data_dir} but does not answer")
        if port_open(self.port) and not self.config_file.exists():
            raise ConfigurationError(f"port {self.port} is taken by another process; choose another with --port")
        lib_dir = fetch_libs(self.lib_dir)
        java = _java()
        classpath = f"{lib_dir}/*"
        self._write_config()
        self._format_if_needed(java, classpath)
        log = self.log_file.open("ab")
        proc = subprocess.Popen(
            [java, f"-Xms{min_heap(self.heap)}", f"-Xmx{self.heap}", "-XX:+UseSerialGC",
             "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
             f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={self.data_dir}",
             "-cp", classpath, "kafka.Kafka", str(self.config_file)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent() if self.tied_to_parent else None,
        )
        log.close()
        self.pid_file.write_text(f"{proc.pid}\n")
        _say(f"starting broker pid {proc.pid} on {self.bootstrap} (heap {self.heap}, data {self.data_dir})")
        deadline = began + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-4000:]
                raise ConfigurationError(f"the broker exited with {proc.returncode}; log tail:\n{tail}")
            if port_open(self.port) and metadata_ready(self.bootstrap, timeout=1.0):
                elapsed = time.monotonic() - began
                _say(f"ready at {self.bootstrap} after {elapsed:.1f}s")
                return elapsed
            time.sleep(0.25)
        self.stop()
        raise ConfigurationError(f"the broker did not answer within {timeout:.0f}s; see {self.log_file}")

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if metadata_ready(self.bootstrap, timeout=1.0):
                return True
            time.sleep(0.25)
        return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM for a controlled shutdown (clean logs, no recovery next time), SIGKILL if it hangs."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            _reap(pid)
            time.sleep(0.1)
        if _pid_alive(pid):
            _say(f"broker pid {pid} ignored SIGTERM for {timeout:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        _say("stopped")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def throwaway_broker(prefix: str = "badgestream-kafka-") -> Iterator[str]:
    """A local broker in a temporary directory on a free port for the block; stopped and removed after,
    and stopped by the kernel should this process be killed before."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    broker = LocalBroker(data_dir=data_dir, port=free_port(), tied_to_parent=True)
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def configured_or_throwaway_broker(prefix: str = "badgestream-kafka-") -> Iterator[str]:
    """``BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS`` when set, else a :func:`throwaway_broker` (benchmarks)."""
    configured = os.environ.get("BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    with throwaway_broker(prefix) as bootstrap:
        yield bootstrap


def min_heap(heap: str) -> str:
    return "128m" if heap.lower().endswith("m") and int(heap[:-1]) >= 128 else heap


def cli(args: argparse.Namespace) -> int:
    """``badgestream kafka start|stop|status`` (also ``python -m deploy.kafka.broker``)."""
    broker = LocalBroker(
        data_dir=Path(args.data_dir) if args.data_dir else DEFAULT_DATA_DIR,
        port=args.port or int(os.environ.get("BADGESTREAM_LOCAL_KAFKA_PORT", DEFAULT_PORT)),
    )
    if args.action == "start":
        broker.start()
        print(broker.bootstrap)
    elif args.action == "stop":
        broker.stop()
    else:
        pid = broker.running_pid()
        if pid is None:
            print("stopped")
            return 1
        broker._write_config()
        print(f"running pid {pid} at {broker.bootstrap}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.kafka.broker")
    parser.add_argument("action", choices=["fetch", "start", "stop", "status"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    try:
        if args.action == "fetch":
            fetch_libs()
            return 0
        return cli(args)
    except ConfigurationError as exc:
        print(f"badgestream kafka: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
