"""The seam to Faust's table stores: the only module besides :mod:`streams.worker.faust_seam` that
uses private Faust names (tests/unit/test_consumer.py hashes the upstream code it relies on).

:class:`TableTarget` lets :class:`streams.worker.state_writer.StateWriter` write a commit's values
of one Faust table the way Faust's own changelog recovery writes them
(``RocksDBStore.apply_changelog_batch``): one RocksDB write batch per partition, with Faust's
persisted changelog offset (``RocksDBStore.offset_key``, read back by ``persisted_offset`` when the
table recovers) in the same batch. The ``memory://`` store (tests) keeps a plain dict and no offsets.
"""

from __future__ import annotations

from typing import Any

import rocksdict
from faust.streams import current_event

from streams.worker.state_writer import Changes


class TableTarget:
    """One Faust table (raw bytes keys and values) as a :class:`streams.worker.state_writer.Target`."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.changelog_topic: str = table.changelog_topic.get_topic_name()

    def read(self, key: bytes) -> bytes | None:
        """The value of ``key``, read as Faust's RocksDB store reads it under the current event (from the
        event's partition), without the table's mapping layers: a missing key there costs a
        ``KeyError`` raised and caught through four of them. Outside an event (the views), and on
        the ``memory://`` store, Faust's own ``get``."""
        event = current_event()
        store = self._table.data
        if event is None or not hasattr(store, "_db_for_partition"):
            value: bytes | None = self._table.get(key)
            return value
        partition = event.message.partition
        value = store._db_for_partition(partition).get(key)
        if value is not None:
            store._key_index[key] = partition
        return value

    def apply(self, partition: int, changes: Changes, offset: int) -> None:
        store = self._table.data  # made by Faust when the app starts
        if not hasattr(store, "_db_for_partition"):
            data = store.data
            for key, value in changes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            return
        write_batch(store._db_for_partition(partition), changes, store.offset_key, offset)
        key_index = store._key_index  # where reads outside an event (the views) look first
        for key, value in changes.items():
            if value is not None:
                key_index[key] = partition


def write_batch(db: rocksdict.Rdict, changes: Changes, offset_key: bytes, offset: int) -> None:
    """``changes`` and the changelog ``offset`` (under ``offset_key``) in one atomic RocksDB write batch."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in changes.items():
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    batch.put(offset_key, str(offset).encode())
    db.write(batch)
