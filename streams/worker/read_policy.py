"""The safe consumer's decisions, with no Faust: accept, skip, hold back or read again each input
record, and which offset may be committed.

:class:`streams.worker.faust_seam.SafeConsumer` only translates Faust's calls into these; the rules
are tested with literal offsets (tests/unit/test_consumer.py). Why each rule exists:
docs/decisions/0001-safe-consumer.md.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)  # a topic partition


class Action(Enum):
    DELIVER = "deliver"  # hand the record to its stream
    SKIP = "skip"  # delivered before (a re-read after a seek): already on its way
    HOLD = "hold"  # before the seek that ends recovery: set aside with the rest of the batch
    REWIND = "rewind"  # records were skipped: seek back to ``expected``, discard the rest of the batch
    BRIDGE = "bridge"  # the same jump again from where we sought back: [expected, offset) do not exist


@dataclass(frozen=True)
class Decision:
    action: Action
    expected: int | None = None  # for REWIND and BRIDGE: the offset that was expected


class ReadPolicy(Generic[P]):
    """Per input partition: the next offset accepted, where a rewind went, where reading began."""

    def __init__(self) -> None:
        #: The offset of the next record accepted; missing or None: not known yet (no committed
        #: offset), the first record sets it.
        self.expected: dict[P, int | None] = {}
        #: Partitions sought back to an offset, and that offset: a second jump from it is a real gap.
        self.rewound_to: dict[P, int] = {}
        #: Partitions without a committed offset: the first offset read, where the first commit starts.
        self.origin: dict[P, int] = {}
        #: Records are accepted only between a seek and the next rebalance.
        self.ready = False
        #: Partitions whose records arrived before the seek and were set aside.
        self.set_aside: set[P] = set()
        self.rewinds = 0

    # --- one record ------------------------------------------------------------------------

    def decide(self, tp: P, offset: int) -> Decision:
        """What to do with the input record at ``offset`` of ``tp``."""
        if not self.ready:
            self.set_aside.add(tp)
            return Decision(Action.HOLD)
        want = self.expected.get(tp)
        if want is None:
            self.origin.setdefault(tp, offset)
            return Decision(Action.DELIVER)
        if offset < want:
            return Decision(Action.SKIP)
        if offset > want:
            return Decision(Action.BRIDGE if self.rewound_to.get(tp) == want else Action.REWIND, want)
        return Decision(Action.DELIVER)

    def delivered(self, tp: P, offset: int) -> None:
        """The record reached its stream: the next one is expected."""
        self.rewound_to.pop(tp, None)
        self.expected[tp] = offset + 1

    def cut_short(self, tp: P, offset: int) -> None:
        """The flow stopped before the record reached its stream: it was not read."""
        self.expected[tp] = offset

    def rewound(self, tp: P, offset: int) -> None:
        """The partition was sought back to ``offset`` after a jump."""
        self.rewinds += 1
        self.rewound_to[tp] = offset
        self.expected[tp] = offset

    # --- seeks and rebalances ---------------------------------------------------------------

    def sought(self, tp: P, offset: int, *, first_read: bool = False) -> None:
        """``tp`` was sought to ``offset`` (``first_read``: it has no committed offset; reading starts there)."""
        if first_read:
            self.origin[tp] = offset
        self.expected[tp] = offset
        self.rewound_to.pop(tp, None)

    def seeking(self) -> None:
        """A seek that ends recovery begins: hold input back until :meth:`resume`."""
        self.ready = False

    def resume(self) -> dict[P, int]:
        """The seek is done: accept input again; returns the partitions to seek once more (their
        records arrived meanwhile and were set aside, and the fetcher has moved past them)."""
        self.ready = True
        again = {tp: offset for tp in self.set_aside if (offset := self.expected.get(tp)) is not None}
        self.set_aside.clear()
        return again

    def revoked(self, tps: Iterable[P]) -> None:
        """A rebalance: nothing is accepted until the seek that follows it."""
        self.ready = False
        for tp in tps:
            self.expected.pop(tp, None)
            self.rewound_to.pop(tp, None)
            self.origin.pop(tp, None)

    # --- acknowledgements and commits -------------------------------------------------------

    @staticmethod
    def ack_counts(generation: int | None, current_generation: int | None, flow_active: bool) -> bool:
        """An acknowledgement counts towards a commit only from the current generation while the
        flow runs (Faust acks what it skips in a rebalance; that is read again after the seek)."""
        return generation == current_generation and flow_active

    @staticmethod
    def gap_start(offset_from: int, committed: int | None) -> int:
        """Where a gap may begin: never before the committed offset (the next one to read)."""
        return offset_from if committed is None else max(offset_from, committed)

    def commit_head(self, tp: P, committed: int | None) -> int | None:
        """The offset a commit must start at: the committed one, else where reading began."""
        return committed if committed is not None else self.origin.get(tp)

    @staticmethod
    def committable(acked: Sequence[int], head: int | None) -> int:
        """How many of the sorted ``acked`` offsets may be committed: the consecutive run at their
        start, and none while the record at ``head`` is still on its way (faust #606)."""
        if not acked or (head is not None and acked[0] > head):
            return 0
        run = 1
        while run < len(acked) and acked[run] == acked[run - 1] + 1:
            run += 1
        return run
