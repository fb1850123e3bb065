"""The worker's table writes at a commit: one changelog record per changed key, one RocksDB write
batch per table partition, the changelog offsets kept in step, as quix-streams' checkpoints do.

Faust writes a table value the moment it is set: a RocksDB put, and a changelog record through its
aiokafka producer whose acknowledgement then writes the changelog offset to RocksDB (about 0.5 ms
of Python per write). Here the values of a commit are written in three steps instead:

1. :meth:`StateWriter.stage` (the state cache, for each value it writes) keeps the newest value of
   each key of each table partition. Reads see staged values first (:meth:`StateWriter.reader`).
2. :meth:`StateWriter.send` (at every commit, after the state cache wrote the values pending when the
   offsets were picked)
   produces one changelog record per staged key through the librdkafka producer that sends the
   outputs, into the table partition's changelog partition, exactly as Faust would send it.
3. :meth:`StateWriter.apply` (after the producer flush that precedes every commit, so every record
   sent is acknowledged) writes each batch to RocksDB as one write batch per table partition, with
   Faust's persisted changelog offset (the offset of the batch's last record there) in the same
   write batch. A record that failed raises :class:`DeliveryError`: nothing is committed.

The local store is never ahead of the changelog: a crash before step 3 leaves RocksDB at the last
batch applied, and Faust's recovery at the next start reads the changelog from the persisted offset
on, which holds every record sent and acknowledged since. A crash at any point before the input
offsets are committed leaves the input to be read again; the stored input marks recognise what the
state already holds (docs/worker-state.md). The persisted offset can never pass a record that is not
in RocksDB: it is written in the same atomic write batch as the values it covers.

Between steps, the staged and sent values are what reads return (``overlay``), so an event never
meets an older value in RocksDB than one already made. A rebalance discards only the staged values
(their events are read again); batches already sent are applied when their acknowledgement comes,
as Faust's own changelog acknowledgements are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.errors import DeliveryError

Changes = dict[bytes, "bytes | None"]
"""A table partition's changes: key -> the new value, or None to delete the key."""

Delivered = Callable[[Any, Any], None]
"""librdkafka's delivery callback: ``(error or None, message)``."""

Send = Callable[[str, int, bytes, "bytes | None", Delivered], None]
"""Produce ``(topic, partition, key, value or None, on_delivery)``."""


class Target(Protocol):
    """One table as the writer needs it (streams/worker/faust_store.py makes them of Faust's tables)."""

    changelog_topic: str

    def apply(self, partition: int, changes: Changes, offset: int) -> None:
        """Write ``changes`` and the persisted changelog ``offset`` of ``partition`` at once."""


@dataclass(slots=True)
class _Batch:
    """What one :meth:`StateWriter.send` produced, until it is applied."""

    changes: dict[tuple[str, int], Changes]
    sent: int
    #: acknowledged (topic, partition, offset); appended from librdkafka's delivery callbacks,
    #: which run in whichever thread serves the producer (``list.append`` is atomic)
    acks: list[tuple[str, int, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failures.append(f"{message.topic()}[{message.partition()}]: {error}")
        else:
            self.acks.append((message.topic(), message.partition(), message.offset()))

    @property
    def complete(self) -> bool:
        return len(self.acks) + len(self.failures) >= self.sent


class StateWriter:
    def __init__(self, targets: dict[str, Target], send: Send) -> None:
        #: tables by name, in the order their changes are sent and applied (the resend ids before
        #: the user values that list them)
        self._targets = targets
        self._send = send
        self._staged: dict[tuple[str, int], Changes] = defaultdict(dict)
        self._in_flight: list[_Batch] = []
        #: table -> key -> the newest staged or unapplied value (None: deleted)
        self._overlay: dict[str, Changes] = {name: {} for name in targets}
        self.records_sent = 0
        self.batches_applied = 0

    def stage(self, table: str, partition: int, key: bytes, value: bytes | None) -> None:
        self._staged[(table, partition)][key] = value
        self._overlay[table][key] = value

    def reader(self, table: str, read: Callable[[bytes], bytes | None]) -> Callable[[bytes], bytes | None]:
        """``read`` of ``table``, with the values staged or not yet applied in front of it."""
        overlay = self._overlay[table]
        missing = object()

        def read_through(key: bytes) -> bytes | None:
            value = overlay.get(key, missing)
            return read(key) if value is missing else value  # type: ignore[return-value]

        return read_through

    @property
    def staged(self) -> int:
        """Keys staged, not sent yet."""
        return sum(len(changes) for changes in self._staged.values())

    @property
    def in_flight(self) -> int:
        """Batches sent, not applied yet."""
        return len(self._in_flight)

    def send(self) -> int:
        """Produce a changelog record per staged key; returns how many."""
        if not self._staged:
            return 0
        order = {name: index for index, name in enumerate(self._targets)}
        staged = dict(sorted(self._staged.items(), key=lambda item: (order[item[0][0]], item[0][1])))
        self._staged = defaultdict(dict)
        batch = _Batch(staged, sum(len(changes) for changes in staged.values()))
        self._in_flight.append(batch)
        send, delivered = self._send, batch.delivered
        for (table, partition), changes in staged.items():
            topic = self._targets[table].changelog_topic
            for key, value in changes.items():
                send(topic, partition, key, value, delivered)
        self.records_sent += batch.sent
        return batch.sent

    def apply(self) -> int:
        """Write every acknowledged batch to its tables, oldest first; returns how many batches.
        Raises :class:`DeliveryError` if a record of one failed (its batch stays unapplied)."""
        applied = 0
        while self._in_flight and self._in_flight[0].complete:
            batch = self._in_flight[0]
            if batch.failures:
                raise DeliveryError(f"{len(batch.failures)} changelog records failed: "
                                    + "; ".join(batch.failures[:5]))
            last: dict[tuple[str, int], int] = {}
            for topic, partition, offset in batch.acks:
                last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
            for (table, partition), changes in batch.changes.items():
                target = self._targets[table]
                target.apply(partition, changes, last[(target.changelog_topic, partition)])
            del self._in_flight[0]
            self._forget(batch.changes)
            applied += 1
        self.batches_applied += applied
        return applied

    def _forget(self, written: dict[tuple[str, int], Changes]) -> None:
        """Drop overlay entries that RocksDB now holds (not those replaced by a newer value since)."""
        for (table, _partition), changes in written.items():
            overlay = self._overlay[table]
            for key, value in changes.items():
                if key in overlay and overlay[key] is value:
                    del overlay[key]

    def drop_staged(self) -> int:
        """A rebalance began: forget the staged values (their events are read again); returns how many.
        Sent batches stay, and are applied when acknowledged."""
        dropped = self.staged
        self._staged = defaultdict(dict)
        for overlay in self._overlay.values():
            overlay.clear()
        for batch in self._in_flight:  # what reads must still see until it is applied
            for (table, _partition), changes in batch.changes.items():
                self._overlay[table].update(changes)
        return dropped
