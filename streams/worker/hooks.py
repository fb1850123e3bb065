"""The typed interface between the worker and its Faust seam: what the consumer calls back, and when.

No Faust here: :mod:`streams.worker.faust_seam` installs these into Faust's consumer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DirectDelivery:
    """Input topics whose messages the fetch loop hands straight to ``handle``, in offset order.

    Faust delivers each message through its conductor, a queue per channel, the agent's stream and
    an event object, and acknowledges it when the stream asks for the next one: tens of
    microseconds of Python per message, more than the worker's own work on a mature user. On the
    direct path the fetch loop calls ``handle(message)`` itself and acknowledges the message when it
    returns: nothing is acknowledged before it was evaluated, and a commit (which writes the pending
    states first) only ever sees messages that were. Messages arriving while the flow is stopped (a
    rebalance) are not handled: they count as cut short and are read again after the seek."""

    topics: set[str] = field(default_factory=set)
    handle: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class ConsumerHooks:
    """What the worker wants told, and done, at the consumer's moments."""

    #: Called with (topic, partition) whenever a jump was refused and the partition re-read.
    on_rewind: Callable[[str, int], object] | None = None
    #: Awaited at every commit, once its offsets are picked and before the producers are flushed:
    #: writes what must be durable before those offsets are committed (the worker's pending user
    #: states: streams/worker/state_cache.py). Its synchronous start runs right after the offsets
    #: are picked; it may yield to the event loop after that. False: commit nothing.
    before_commit: Callable[[], Awaitable[bool]] | None = None
    #: Called when partitions are revoked (a rebalance begins) and when new ones are assigned.
    on_revoke: Callable[[], object] | None = None
    on_assign: Callable[[], object] | None = None
    #: Called with the seconds every commit took (pending states, producer flush, commit).
    on_commit: Callable[[float], object] | None = None
    #: Topics evaluated on the direct path, and how.
    direct: DirectDelivery | None = None
