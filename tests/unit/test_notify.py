"""The notifier's pure parts: signatures (checked by the standardwebhooks package), bodies, retry decisions, the
circuit breaker, config, the outbox."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from schemas.errors import ConfigurationError
from schemas.records import AwardRecord, NudgeRecord, make_award_id, make_nudge_id
from streams.notify.breaker import CircuitBreaker
from streams.notify.endpoints import Endpoint, load_endpoints, secret_key
from streams.notify.messages import Signer, UnusableRecord, notification
from streams.notify.outbox import Outbox, Outcomes
from streams.notify.policy import Attempt, RetryPolicy, parse_retry_after
from streams.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AT = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
AWARD = AwardRecord(award_id=make_award_id("ana", "quiz_master", "silver", 1), user_id="ana", badge_id="quiz_master",
                    tier="silver", awarded_at=AT, event_id="e9", catalog_version="v1")


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    note = notification(False, AWARD.model_dump_json().encode())
    now = int(datetime.now(UTC).timestamp())
    signer = Signer(secret_key(SECRET))
    sent = signer.headers(note.webhook_id, now, note.body)
    assert Webhook(SECRET).verify(note.body, sent) == orjson.loads(note.body)
    assert sent["webhook-signature"] == Webhook(SECRET).sign(note.webhook_id, datetime.fromtimestamp(now, UTC),
                                                             note.body.decode())
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(note.body + b" ", sent)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 32).verify(note.body, sent)
    # the prepared key is copied, never consumed: the next message signs as if it were the first
    other = notification(False, AWARD.model_copy(update={"award_id": "other"}).model_dump_json().encode())
    assert Webhook(SECRET).verify(other.body, signer.headers(other.webhook_id, now, other.body))
    assert signer.signature(note.webhook_id, now, note.body) == sent["webhook-signature"]


def test_bodies_and_webhook_ids_per_type() -> None:
    award = notification(False, AWARD.model_dump_json().encode())
    assert (award.type, award.webhook_id, award.backfill) == ("badge.awarded", AWARD.award_id, False)
    body = orjson.loads(award.body)
    assert body == {"type": "badge.awarded", "timestamp": "2026-11-21T09:30:00+00:00",
                    "data": orjson.loads(AWARD.model_dump_json())}
    revoked = notification(False, AWARD.model_copy(update={"kind": "revocation"}).model_dump_json().encode())
    assert (revoked.type, revoked.webhook_id) == ("badge.revoked", f"{AWARD.award_id}.revoked")
    backfill = notification(False, AWARD.model_copy(update={"backfill": True}).model_dump_json().encode())
    assert backfill.backfill
    nudge = NudgeRecord(nudge_id=make_nudge_id("ben", "daily_warrior", None, 1, 1), user_id="ben",
                        badge_id="daily_warrior", threshold=1, remaining=1, progress=6, target=7, nudged_at=AT,
                        event_id="e2", catalog_version="v1")
    note = notification(True, nudge.model_dump_json().encode())
    assert (note.type, note.webhook_id) == ("badge.nudge", nudge.nudge_id)
    assert notification(True, nudge.model_dump_json().encode()).body == note.body  # the same bytes every time
    for value in (None, b"{}", b"not json", nudge.model_dump_json().encode()):
        with pytest.raises(UnusableRecord):
            notification(False, value)


@pytest.mark.parametrize(("attempt", "action"), [
    (Attempt(200), "delivered"), (Attempt(204), "delivered"),
    (Attempt(500), "retry"), (Attempt(503), "retry"), (Attempt(408), "retry"), (Attempt(429), "retry"),
    (Attempt(None, "timeout"), "retry"), (Attempt(None, "ConnectError: refused"), "retry"),
    (Attempt(400), "dead"), (Attempt(401), "dead"), (Attempt(404), "dead"), (Attempt(410), "dead"),
    (Attempt(301), "dead"),
])
def test_retry_classes(attempt: Attempt, action: str) -> None:
    assert RetryPolicy().decide(attempt, 1, 0.0).action == action
    # the breaker counts what says the endpoint cannot take it now; a 4xx answer shows it is up
    assert attempt.endpoint_failed == (action == "retry")


def test_circuit_breaker_opens_after_failures_in_a_row_probes_with_one_request_and_closes_on_success() -> None:
    breaker = CircuitBreaker(failures=3, window=2.0, cooldown=5.0, max_cooldown=12.0)
    assert breaker.limit(0.0) is None and breaker.admit(8, 0.0) == 8
    assert [breaker.failed(0.0, 1.0), breaker.failed(0.1, 1.1)] == ["closed", "closed"]
    assert breaker.succeeded(0.2) == "closed"  # an answer in between: the count starts again
    # three in a row, but the first was sent only 1.5 s before: a burst, not yet an endpoint that keeps failing
    assert [breaker.failed(1.0, 2.0), breaker.failed(1.1, 2.1), breaker.failed(1.2, 2.5)] == ["closed"] * 3
    assert breaker.failed(2.9, 3.0) == "open" and breaker.reopens_at() == 8.0  # 2 s after the first was sent
    assert (breaker.limit(7.9), breaker.admit(8, 7.9)) == (0, 0)  # open: nothing goes
    assert breaker.failed(2.95, 7.0) == "open" and breaker.succeeded(2.95) == "open"  # sent before it opened
    assert breaker.reopens_at() == 8.0
    assert (breaker.limit(8.0), breaker.admit(8, 8.0)) == (1, 1)  # past the cooldown: one probe
    assert breaker.state == "half_open" and breaker.limit(8.1) == 0 and breaker.admit(8, 8.1) == 0
    assert breaker.failed(8.0, 9.0) == "open" and breaker.reopens_at() == 19.0  # failed probe: cooldown doubled
    assert breaker.admit(1, 19.0) == 1 and breaker.failed(19.0, 20.0) == "open" and breaker.reopens_at() == 32.0
    assert breaker.admit(0, 32.0) == 0 and breaker.state == "open"  # nothing to send: no probe taken
    assert breaker.admit(3, 32.0) == 1 and breaker.succeeded(32.0) == "closed"
    assert breaker.limit(32.5) is None and breaker.admit(8, 32.5) == 8
    assert [breaker.failed(33.0, 40.0) for _ in range(3)][-1] == "open"  # timeouts: sent long before they failed
    assert breaker.reopens_at() == 45.0  # the cooldown starts again from 5 s


def test_backoff_doubles_with_jitter_is_capped_honours_retry_after_and_stops_at_max_age() -> None:
    policy = RetryPolicy(base=1.0, max_delay=8.0, max_age=100.0)
    rand = random.Random(7)
    delays = [policy.decide(Attempt(500), n, 0.0, rand).delay for n in range(1, 7)]
    for n, delay in enumerate(delays, 1):
        ceiling = min(8.0, 2.0 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert policy.decide(Attempt(429, retry_after=30.0), 1, 0.0).delay == 30.0
    # at attempt 9 the delay is 4-8 s (8 s cap, half of it jitter): past 96 s every draw crosses the
    # 100 s max age, before 92 s none does; the seeded draws make both sides certain, not likely
    for draw in range(50):
        late = policy.decide(Attempt(500), 9, 96.5, random.Random(draw))
        assert late.action == "dead" and "gave up after 9 attempts" in late.reason
        assert policy.decide(Attempt(500), 9, 91.5, random.Random(draw)).action == "retry"
    assert parse_retry_after("120") == 120.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Sat, 21 Nov 2026 09:31:00 GMT", now=AT) == 60.0


def test_endpoints_from_urls_and_yaml(tmp_path: Path) -> None:
    config = tmp_path / "hooks.yaml"
    config.write_text(f"endpoints:\n  - {{url: 'https://push.example/h', secret: {SECRET}, types: [badge.nudge]}}\n"
                      f"  - {{url: 'https://mail.example/h', secret: {SECRET}, backfill: true}}\n")
    found = load_endpoints(Settings(webhook_urls="http://a.example/x, http://b.example/y", webhook_secret=SECRET,
                                    webhook_config=config))
    assert [e.url for e in found] == ["http://a.example/x", "http://b.example/y", "https://push.example/h",
                                      "https://mail.example/h"]
    assert found[2].types == ("badge.nudge",) and found[3].backfill and not found[0].backfill
    assert found[0].wants("badge.awarded", False) and not found[0].wants("badge.awarded", True)
    assert found[3].wants("badge.awarded", True) and not found[2].wants("badge.awarded", False)
    assert SECRET not in repr(found[0])
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET is not"):
        load_endpoints(Settings(webhook_urls="http://a.example/x"))
    with pytest.raises(ConfigurationError, match="starts with 'whsec_'"):
        load_endpoints(Settings(webhook_urls="http://a.example/x", webhook_secret="hunter2"))
    config.write_text("endpoints:\n  - {url: 'ftp://x', secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}\n")
    with pytest.raises(ConfigurationError, match=r"endpoints\[0\]: url"):
        load_endpoints(Settings(webhook_config=config))
    config.write_text(f"endpoints:\n  - {{url: 'https://x.example', secret: {SECRET}, types: [badge.lost]}}\n")
    with pytest.raises(ConfigurationError, match=r"endpoints\[0\]: types"):
        load_endpoints(Settings(webhook_config=config))
    assert Endpoint(url="http://x.example", secret=SECRET).key == secret_key(SECRET)


def test_outbox_queues_once_leases_reschedules_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    assert box.add([("e1", "w1", "badge.awarded", b"{}"), ("e1", "w2", "badge.nudge", b"{}"),
                    ("e2", "w1", "badge.awarded", b"{}")], now=10.0) == 3
    assert box.add([("e1", "w1", "badge.awarded", b"{}")], now=11.0) == 0  # redelivered input: no second row
    taken = box.claim("e1", now=10.0, limit=1, lease_until=20.0)
    assert [r.webhook_id for r in taken] == ["w1"]
    assert [r.webhook_id for r in box.claim("e1", now=15.0, limit=5, lease_until=25.0)] == ["w2"]  # w1 is leased
    box.settle(Outcomes(retries=[(1, 30.0, "HTTP 500", "e1", "w1")], done=[("e1", "w2")]))
    assert box.next_due("e1") == 30.0 and box.next_due("e3") is None
    box.close()
    box = Outbox(path)  # as after a crash
    assert box.claim("e1", now=29.0, limit=5, lease_until=40.0) == []
    (row,) = box.claim("e1", now=30.0, limit=5, lease_until=40.0)
    assert (row.attempts, row.last_error, row.queued_at) == (1, "HTTP 500", 10.0)
    backlog = box.backlog()
    assert (backlog["e1"].pending, backlog["e1"].retrying, backlog["e2"].pending) == (1, 1, 1)
    outcomes = Outcomes(released=[("e1", "w1")])
    box.settle(outcomes)  # an abandoned attempt: due again at once
    assert len(outcomes) == 0 and [r.webhook_id for r in box.claim("e1", now=31.0, limit=5, lease_until=50.0)] == ["w1"]
    box.close()
