"""Per-user engine state: compact, immutable between events, and serialisable to versioned bytes.

What is kept, and what bounds it (docs/engine.md, "State size", repeats this):

* per badge the user has made progress on: the fingerprint of the definition the progress was made
  under, the awards granted (tier names or an occurrence count), and the rule's progress —
  a count, a sum, up to ``count`` distinct values (dropped once the rule is met), the active days or
  ISO weeks of a streak as a bitmap from the first one (one bit per period: ten years of days are
  457 bytes; a new bitmap after a long gap; dropped once met), or a custom evaluator's memory (at most
  :data:`evaluators.base.MAX_MEMORY_BYTES`);
* the user's points: one total over the awards granted (a number, not a list of awards). Levels
  reached are badge entries like any other award.

The engine never mutates a :class:`UserState` or :class:`BadgeState`: it builds new ones and
shares what did not change, so a caller may keep the previous state (for example to retry).
"""

from __future__ import annotations

import struct
from base64 import b64decode, b64encode
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import orjson

from schemas.errors import BadgestreamError

STATE_FORMAT = 1
_MAGIC = b"BSu"
_HEADER = struct.Struct(">3sBI")  # magic, format version, length of the JSON body
_OLD_DIGEST_BYTES = 8  # states written before resends moved out of them end with 8-byte event-id digests
_INT64 = 2**63


class StateDecodeError(BadgestreamError, ValueError):
    """Stored bytes are not a user state this engine can read."""


def _number_out(value: int | Fraction) -> int | str:
    # orjson writes only 64-bit integers, and a Fraction not at all: larger or fractional sums go as text.
    if isinstance(value, int) and -_INT64 < value < _INT64:
        return value
    return str(value)


def _number_in(value: Any) -> int | Fraction:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        number = Fraction(value)
        return int(number) if number.denominator == 1 else number
    raise StateDecodeError(f"a stored sum must be an integer or a fraction, got {value!r}")


def _bitmap_out(bits: int) -> str:
    # Little-endian bytes, so the text grows at its end as later periods are added; base64 keeps
    # ten years of days (457 bytes) at 612 characters of JSON.
    return b64encode(bits.to_bytes((bits.bit_length() + 7) // 8, "little")).decode("ascii")


def _bitmap_in(text: Any) -> int:
    if not isinstance(text, str):
        raise StateDecodeError(f"a stored streak bitmap must be base64 text, got {text!r}")
    return int.from_bytes(b64decode(text, validate=True), "little")


Stretches = tuple[tuple[int, int], ...]
"""A streak's active periods: sorted ``(first, bitmap)`` pairs, bit i of a bitmap standing for period
``first + i`` (bit 0 set), each pair far enough from the next that no range within the badge's
freeze budget joins them (:data:`evaluators.streaks.STREAK_SPLIT_GAP`)."""


def _stretches_out(stretches: Stretches) -> list[int | str]:
    return [part for first, bits in stretches for part in (first, _bitmap_out(bits))]


def _stretches_in(value: Sequence[Any]) -> Stretches:
    return tuple((int(first), _bitmap_in(text)) for first, text in zip(value[0::2], value[1::2], strict=True))


def upcast_streak_runs(bounds: Sequence[Any]) -> Stretches:
    """A streak's stored runs ``[start, end, start, end, ...]`` (inclusive ordinals, sorted) as bitmaps.

    Streak progress was once kept as merged runs, and only those within ``length + freezes + 60``
    periods of the newest: one bitmap from the first run holds exactly their periods (a single
    bitmap is always valid; splitting at long gaps only saves space).
    """
    ends = [int(b) for b in bounds]
    if len(ends) % 2 or not ends:
        raise StateDecodeError(f"stored streak runs must be non-empty pairs of bounds, got {list(bounds)!r}")
    first = ends[0]
    active = 0
    for start, end in zip(ends[0::2], ends[1::2], strict=True):
        if start < first or end < start:
            raise StateDecodeError(f"stored streak runs are not sorted runs: {list(bounds)!r}")
        active |= ((1 << (end - start + 1)) - 1) << (start - first)
    return ((first, active),)


class BadgeState:
    """One badge's progress and awards for one user. Immutable by convention: :meth:`copy` before changing.

    Which fields a rule uses: ``n`` counts events (count, tiers), distinct values, the best length
    a streak reached (capped at its target) or the listed badges held (meta-badges); ``total`` is a
    sum (exact: int or Fraction); ``values`` holds distinct values and ``active`` a streak's active
    day or week ordinals (:data:`Stretches`) until the rule is met; ``memory``, ``earned`` and
    ``reported`` belong to custom evaluators. ``granted`` counts occurrences awarded
    and ``tiers`` names the tiers awarded; both survive a definition change, when ``base`` records
    how many occurrences were granted under the old definition.
    """

    __slots__ = ("active", "base", "earned", "fp", "granted", "memory", "n", "reported", "tiers", "total", "values")

    def __init__(
        self, fp: str, n: int = 0, total: int | Fraction = 0, values: frozenset[str] = frozenset(),
        active: Stretches = (), memory: Mapping[str, Any] | None = None, earned: int = 0,
        reported: tuple[float | None, float | None] = (None, None), granted: int = 0,
        tiers: tuple[str, ...] = (), base: int = 0,
    ) -> None:
        self.fp = fp
        self.n = n
        self.total = total
        self.values = values
        self.active = active
        self.memory = memory
        self.earned = earned
        self.reported = reported
        self.granted = granted
        self.tiers = tiers
        self.base = base

    def copy(self) -> BadgeState:
        # One call with every field (not ``__new__`` and assignments): as fast in CPython, and
        # the only way a mypyc-compiled class can be instantiated.
        return BadgeState(self.fp, self.n, self.total, self.values, self.active, self.memory, self.earned,
                          self.reported, self.granted, self.tiers, self.base)

    def reset(self, fp: str) -> BadgeState:
        """Progress back to zero under definition ``fp``; awards already granted are kept."""
        fresh = BadgeState(fp)
        fresh.granted = self.granted
        fresh.tiers = self.tiers
        fresh.base = self.granted
        return fresh

    @property
    def held(self) -> bool:
        """The user holds this badge (any tier, any occurrence)."""
        return self.granted > 0 or bool(self.tiers)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"f": self.fp}
        if self.n:
            out["n"] = self.n
        if self.total:
            out["s"] = _number_out(self.total)
        if self.values:
            out["v"] = sorted(self.values)
        if self.active:
            out["a"] = _stretches_out(self.active)
        if self.memory is not None:
            out["m"] = self.memory
        if self.earned:
            out["e"] = self.earned
        if self.reported != (None, None):
            out["p"] = list(self.reported)
        if self.granted:
            out["g"] = self.granted
        if self.tiers:
            out["t"] = list(self.tiers)
        if self.base:
            out["b"] = self.base
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BadgeState:
        """Read :meth:`to_json` output. On the hot path of every stored event: one pass over the keys present."""
        state = cls(str(raw["f"]))
        for key, value in raw.items():
            if key == "n":
                state.n = int(value)
            elif key == "g":
                state.granted = int(value)
            elif key == "t":
                state.tiers = tuple(str(t) for t in value)
            elif key == "s":
                state.total = _number_in(value)
            elif key == "v":
                state.values = frozenset(str(v) for v in value)
            elif key == "m":
                state.memory = dict(value)
            elif key == "e":
                state.earned = int(value)
            elif key == "p":
                progress, target = value
                state.reported = (progress, target)
            elif key == "b":
                state.base = int(value)
            elif key == "a":
                state.active = _stretches_in(value)
            elif key == "r":  # stored before streaks kept bitmaps
                state.active = upcast_streak_runs(value)
        return state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadgeState) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable-looking value object: compared, never hashed

    def __repr__(self) -> str:
        return f"BadgeState({self.to_json()!r})"


class BadgeMap(Mapping[str, BadgeState]):
    """The badges of one user state: decoded from stored JSON only when the engine asks for one.

    A state read from bytes usually has a dozen badges of which an event touches two or three;
    building every :class:`BadgeState` up front cost more than the evaluation itself. Immutable
    from outside: :meth:`with_changes` makes a new map that shares the untouched entries.
    """

    __slots__ = ("_decoded", "_raw")

    def __init__(self, decoded: Mapping[str, BadgeState] | None = None, raw: Mapping[str, Any] | None = None) -> None:
        self._raw: Mapping[str, Any] = raw if raw is not None else {}
        # Decoded entries and changes; filled on first access (a cache, so reading stays pure).
        self._decoded: dict[str, BadgeState] = dict(decoded) if decoded is not None else {}

    def get(self, badge_id: str, default: Any = None) -> Any:
        state = self._decoded.get(badge_id)
        if state is None:
            raw = self._raw.get(badge_id)
            if raw is None:
                return default
            try:
                state = BadgeState.from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:
                raise StateDecodeError(f"stored state of badge {badge_id!r} is malformed: {exc}") from None
            self._decoded[badge_id] = state
        return state

    def __getitem__(self, badge_id: str) -> BadgeState:
        state: BadgeState | None = self.get(badge_id)
        if state is None:
            raise KeyError(badge_id)
        return state

    @property
    def decoded(self) -> Mapping[str, BadgeState]:
        """The entries decoded so far (the engine's fast path; :meth:`get` covers the rest)."""
        return self._decoded

    @property
    def undecoded(self) -> Mapping[str, Any]:
        """Stored entries, some perhaps not decoded yet (those also in :attr:`decoded` are stale)."""
        return self._raw

    def __contains__(self, badge_id: object) -> bool:
        return badge_id in self._decoded or badge_id in self._raw

    def __iter__(self) -> Iterator[str]:
        yield from self._decoded
        for badge_id in self._raw:
            if badge_id not in self._decoded:
                yield badge_id

    def __len__(self) -> int:
        return len(self._decoded) + sum(1 for badge_id in self._raw if badge_id not in self._decoded)

    def with_changes(self, changes: Mapping[str, BadgeState]) -> BadgeMap:
        if not changes:
            return self
        new = BadgeMap(None, self._raw)
        new._decoded = {**self._decoded, **changes}
        return new

    def to_json(self) -> dict[str, Any]:
        out = dict(self._raw)
        for badge_id, state in self._decoded.items():
            out[badge_id] = state.to_json()
        return out


class BadgeOverlay(Mapping[str, BadgeState]):
    """One event's changed badges over the stored ones (the engine's working map): reads fall
    through to the stored :class:`BadgeMap`, writes stay in :attr:`changes`.

    Not a ``dict`` subclass overriding ``get``: compiled with mypyc, a ``dict`` subclass is read
    with ``dict``'s own primitives, which would skip the fall-through.
    """

    __slots__ = ("base", "changes")

    def __init__(self, base: BadgeMap) -> None:
        self.base = base
        self.changes: dict[str, BadgeState] = {}

    def get(self, badge_id: str, default: Any = None) -> Any:
        state = self.changes.get(badge_id)
        return state if state is not None else self.base.get(badge_id, default)

    def __getitem__(self, badge_id: str) -> BadgeState:
        state: BadgeState | None = self.get(badge_id)
        if state is None:
            raise KeyError(badge_id)
        return state

    def __setitem__(self, badge_id: str, state: BadgeState) -> None:
        self.changes[badge_id] = state

    def __contains__(self, badge_id: object) -> bool:
        return badge_id in self.changes or badge_id in self.base

    def __iter__(self) -> Iterator[str]:
        yield from self.changes
        for badge_id in self.base:
            if badge_id not in self.changes:
                yield badge_id

    def __len__(self) -> int:
        return len(self.changes) + sum(1 for badge_id in self.base if badge_id not in self.changes)


class UserState:
    """Everything the engine remembers about one user. Build new ones; never change one in place.

    Event ids seen are not part of it: resends are recognised outside the engine, by record time
    (:mod:`evaluators.resends`), so the state does not grow with traffic."""

    __slots__ = ("badges", "catalog_fp", "points", "user_id")

    def __init__(self, user_id: str, badges: Mapping[str, BadgeState] | None = None,
                 catalog_fp: str = "", points: int = 0) -> None:
        self.user_id = user_id
        self.badges: BadgeMap = badges if isinstance(badges, BadgeMap) else BadgeMap(badges)
        self.catalog_fp = catalog_fp
        self.points = points  # the sum of the points of every award granted

    @classmethod
    def empty(cls, user_id: str) -> UserState:
        return cls(user_id)

    def held(self, badge_id: str) -> bool:
        """Whether the user holds ``badge_id`` (any tier, any occurrence)."""
        badge = self.badges.get(badge_id)
        return badge is not None and badge.held

    # --- bytes ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Versioned bytes: a header and a JSON body (orjson, keys sorted)."""
        fields: dict[str, Any] = {"u": self.user_id, "c": self.catalog_fp, "b": self.badges.to_json()}
        if self.points:
            fields["p"] = _number_out(self.points)  # absent when 0: states without points read as before
        body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        return _HEADER.pack(_MAGIC, STATE_FORMAT, len(body)) + body

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        """Read :meth:`to_bytes` output; raises :class:`StateDecodeError` on anything else.

        Bytes after the body are the event-id digests that states kept before resends were
        recognised by record time: read past, not kept."""
        if len(raw) < _HEADER.size:
            raise StateDecodeError("stored user state is too short")
        magic, version, length = _HEADER.unpack_from(raw)
        if magic != _MAGIC:
            raise StateDecodeError("stored bytes are not a badgestream user state")
        if version != STATE_FORMAT:
            raise StateDecodeError(f"stored user state has format {version}, this engine reads {STATE_FORMAT}")
        end = _HEADER.size + length
        if end > len(raw) or (len(raw) - end) % _OLD_DIGEST_BYTES:
            raise StateDecodeError("stored user state is truncated or has a malformed event-id list")
        try:
            body = orjson.loads(raw[_HEADER.size : end])
            badges = body["b"]
            if not isinstance(badges, dict) or not all(isinstance(b, dict) and "f" in b for b in badges.values()):
                raise StateDecodeError("stored user state has a malformed badge table")
            points = _number_in(body.get("p", 0))
            if not isinstance(points, int) or points < 0:
                raise StateDecodeError(f"stored points must be a whole number >= 0, got {points!r}")
            return cls(str(body["u"]), BadgeMap(raw=badges), str(body.get("c", "")), points)
        except StateDecodeError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateDecodeError(f"stored user state is malformed: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UserState)
            and self.user_id == other.user_id
            and self.catalog_fp == other.catalog_fp
            and self.points == other.points
            and self.badges.to_json() == other.badges.to_json()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UserState({self.user_id!r}, {len(self.badges)} badges)"
