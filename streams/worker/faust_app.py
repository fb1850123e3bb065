"""The worker's Faust application object: how it talks to Kafka, where it keeps its tables, how it joins its group."""

from __future__ import annotations

import hashlib
import socket

import faust

from streams.kafka import faust_brokers, faust_credentials
from streams.settings import Settings


def new_faust_app(settings: Settings, store: str) -> faust.App:
    """The Faust app for ``settings``, its tables in ``store`` (``rocksdb://``; ``memory://`` in tests)."""
    partitions = settings.topic_partitions
    return faust.App(
        settings.app_id,
        broker=faust_brokers(settings),
        broker_credentials=faust_credentials(settings),
        store=store,
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_allow_declare=True,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Faust's own producer sends little: the tables' changelog records, awards and progress go
        # through streams/worker/output.py (streams/worker/state_writer.py).
        producer_linger=0.005,
        producer_max_batch_size=262_144,
        table_standby_replicas=0,
        broker_commit_livelock_soft_timeout=600.0,
        stream_wait_empty=True,
        # Faust's 60 s default keeps a crashed worker's partitions idle for a minute.
        broker_session_timeout=settings.session_timeout_s,
        # Static membership: a restarted worker rejoins under the same id and the coordinator hands
        # its partitions straight back, instead of waiting out the session of its former self.
        consumer_group_instance_id=worker_instance_id(settings),
        broker_heartbeat_interval=settings.heartbeat_interval_s,
    )


def worker_instance_id(settings: Settings) -> str | None:
    """The static group member id: configured, or stable per host, state directory and web address.

    Two workers never share a state directory (RocksDB locks it), so the id is unique among live
    workers and the same after a restart. The web address is part of it because a static member
    gets its previous assignment back as it was, and Faust's assignor refuses one made out to
    another URL. A worker that dies for good keeps its partitions only until its session times
    out, as with dynamic membership."""
    if settings.worker_instance_id is not None:
        return settings.worker_instance_id or None
    where = f"{settings.data_dir.resolve()}|{settings.web_host}:{settings.web_port}"
    return f"{settings.app_id}-{socket.gethostname()}-{hashlib.blake2b(where.encode(), digest_size=4).hexdigest()}"
