"""What is POSTed: a record from ``badge-awards`` or ``badge-nudges`` as a Standard Webhooks message, and its signature.

The body is built once, when the record is queued, from the record alone (its ``timestamp`` is
the award's or nudge's event time), so every retry sends the same bytes under the same
``webhook-id``; only ``webhook-timestamp`` and the signature are made per attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from schemas.records import AwardRecord, NudgeRecord
from streams.notify.endpoints import NotificationType


class UnusableRecord(ValueError):
    """A record on an input topic that is not an award or nudge; dead-lettered with this reason."""


@dataclass(frozen=True, slots=True)
class Notification:
    webhook_id: str
    type: NotificationType
    body: bytes
    backfill: bool
    user_id: str


def notification(topic_is_nudges: bool, value: bytes | None) -> Notification:
    """The notification for one input record; raises :class:`UnusableRecord` saying why there is none."""
    if value is None:
        raise UnusableRecord("the record has no value (tombstone)")
    try:
        record: AwardRecord | NudgeRecord = (NudgeRecord if topic_is_nudges else AwardRecord).model_validate_json(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        raise UnusableRecord(f"not {'a nudge' if topic_is_nudges else 'an award'} record: "
                             f"{where + ': ' if where else ''}{error['msg']}") from None
    if isinstance(record, NudgeRecord):
        kind: NotificationType = "badge.nudge"
        webhook_id, at, backfill = record.nudge_id, record.nudged_at, False
    elif record.kind == "revocation":
        kind, webhook_id, at, backfill = "badge.revoked", f"{record.award_id}.revoked", record.awarded_at, False
    else:
        kind, webhook_id, at, backfill = "badge.awarded", record.award_id, record.awarded_at, record.backfill
    body = orjson.dumps({"type": kind, "timestamp": at.isoformat(), "data": record.model_dump(mode="json")})
    return Notification(webhook_id=webhook_id, type=kind, body=body, backfill=backfill, user_id=record.user_id)


class Signer:
    """Signs for one endpoint: its HMAC key is prepared once, each signature starts from a copy of it."""

    __slots__ = ("_mac",)

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def signature(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, the Standard Webhooks signature."""
        mac = self._mac.copy()
        mac.update(f"{webhook_id}.{timestamp}.".encode())
        mac.update(body)
        return "v1," + base64.b64encode(mac.digest()).decode("ascii")

    def headers(self, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(webhook_id, timestamp, body),
        }
