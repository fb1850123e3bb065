"""All configuration of badgestream in one pydantic-settings class, read from ``BADGESTREAM_*`` variables.

Every process (worker, sink, producer SDK, replay, CLI) builds its Kafka clients from the same
settings (``streams.kafka.client_config``), so security options reach every client and secrets are
never rendered in logs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_CATALOG = Path(__file__).resolve().parent.parent / "deploy" / "demo" / "catalog.yaml"

_URL_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]+:)(?P<password>[^@\s]+)(?P<tail>@)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """A database or broker URL with its password replaced, fit for logs and error messages."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", url)


class Settings(BaseSettings):
    """badgestream settings; each field is read from ``BADGESTREAM_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix="BADGESTREAM_", env_file=None, extra="ignore")

    # Kafka
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    # Topics
    input_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["user-events"], description="input topics, comma-separated"
    )
    awards_topic: str = "badge-awards"
    progress_topic: str = "badge-progress"
    nudges_topic: str = Field("badge-nudges", description="nudges (\"N to go\") decided by the engine")
    dlq_topic: str = "badge-events-dlq"
    sink_dlq_topic: str = "badge-sink-dlq"
    topic_partitions: int = Field(4, ge=1, description="partitions of every topic the project creates")
    topic_replication_factor: int = Field(1, ge=1)

    # Worker
    app_id: str = Field("badgestream", description="Faust app id: consumer group and changelog prefix")
    catalog_path: Path = Field(DEMO_CATALOG, description="badge catalog YAML")
    data_dir: Path = Field(Path("var/worker"), description="RocksDB state directory of the worker")
    web_port: int = Field(6066, description="worker HTTP port: metrics and state view")
    web_host: str = "127.0.0.1"
    worker_instance_id: str | None = Field(
        None, description="static group membership id of this worker (unique per worker); unset: derived from "
        "host name, data_dir and web address, so a restarted worker gets its partitions back at once; empty: "
        "dynamic membership"
    )
    session_timeout_s: float = Field(
        15.0, gt=0, description="consumer group session timeout: how soon a dead worker's or sink's partitions move"
    )
    worker_event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="event loop of the worker: uvloop (libuv, faster per message) or Python's asyncio"
    )
    worker_delivery: Literal["direct", "stream"] = Field(
        "direct", description="how input messages reach the evaluation: direct (the consumer's fetch loop calls it, "
        "in offset order, no per-message queue and stream) or stream (Faust's agent stream)"
    )
    worker_progress_coalesce_s: float = Field(
        1.0, ge=0, description="the worker publishes a user's progress at most this often per (badge, tier): "
        "the newest record of each wins, as in the sink; 0: every record at once"
    )
    worker_state_cache: int = Field(
        2000, ge=0, description="users whose new state the worker keeps in memory until the next commit (one "
        "table write per user per commit); past it the oldest are written at once; 0: every event writes"
    )
    worker_state_idle_s: float = Field(
        0.25, ge=0, description="a user's pending state unchanged this long is written between events, ahead of "
        "the commit, a slice at a time, so a commit does not hold up reading for all of them at once; 0: only "
        "at commits (and past worker_state_cache)"
    )
    resend_window_s: float = Field(
        86400.0, ge=0, description="an upstream resend (the same event_id in a new message) changes nothing when "
        "the user had that id within this many seconds of record time (Kafka record timestamps); older resends "
        "count again. Used by the worker and replay; `evaluate` treats a file as one moment"
    )

    # Sink
    database_url: SecretStr = Field(
        SecretStr("sqlite:///var/badgestream.db"), description="SQLAlchemy URL of the award database"
    )
    sink_group_id: str = "badgestream-sink"
    sink_batch_size: int = Field(1000, ge=1)
    sink_batch_timeout_ms: int = Field(200, ge=1)

    # Read API (`badgestream api`)
    api_host: str = Field("127.0.0.1", description="address the read API binds; 0.0.0.0 exposes it")
    api_port: int = Field(8000, ge=0, le=65535, description="port of the read API")
    api_token: SecretStr | None = Field(
        None, description="bearer token every /v1 call must carry; unset: none needed, include_hidden refused"
    )
    api_cache_ttl_s: float = Field(
        30.0, ge=0, description="seconds the API may serve the catalog and since/until window rankings before "
        "re-reading (rarity and period ranks are read from the sink's aggregates, never cached)"
    )
    api_workers: int = Field(1, ge=1, description="uvicorn worker processes of the read API")
    api_statement_timeout_s: float = Field(
        5.0, ge=0, description="PostgreSQL: the longest a read API query may run (statement_timeout) and wait for "
        "a new connection; the hot endpoints query on the event loop, so a database that stops answering holds a "
        "worker at most this long per request (a 503); 0: no bound"
    )
    worker_url: str | None = Field(
        None, description="base URL of a worker's web server (e.g. http://127.0.0.1:6066): explain and what-if read "
        "the user's live engine state there; unset: they explain from the award database alone"
    )
    worker_timeout_s: float = Field(2.0, gt=0, description="how long explain and what-if wait for the worker's state")

    # Notifier (docs/notifications.md)
    webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="webhook endpoints, comma-separated, all signed with webhook_secret"
    )
    webhook_secret: SecretStr | None = Field(None, description="Standard Webhooks secret, whsec_<base64>")
    webhook_config: Path | None = Field(None, description="YAML file of endpoints (url, secret, types, backfill)")
    notify_group_id: str = "badgestream-notify"
    notify_dlq_topic: str = "badge-notify-dlq"
    notify_outbox: Path = Field(Path("var/notify-outbox.sqlite"), description="durable queue of pending deliveries")
    notify_concurrency: int = Field(512, ge=1, le=1000, description="requests in flight per endpoint")
    notify_timeout_s: float = Field(10.0, gt=0, description="per-request timeout")
    notify_retry_base_s: float = Field(1.0, gt=0, description="first retry delay; doubles per attempt, jittered")
    notify_retry_max_delay_s: float = Field(600.0, gt=0, description="longest delay between two attempts")
    notify_max_age_s: float = Field(86400.0, gt=0, description="retries stop (DLQ) this long after the first attempt")
    notify_breaker_failures: int = Field(20, ge=1, description="failed attempts in a row that open a circuit...")
    notify_breaker_window_s: float = Field(5.0, ge=0, description="...once the first of them is this old")
    notify_breaker_cooldown_s: float = Field(5.0, gt=0, description="open circuit: wait before one probe (doubles per "
                                                                    "failed probe, up to 60 s)")
    notify_metrics_port: int = Field(9108, ge=0, description="notifier /metrics port (0: none)")

    # Every long-running process (streams/shutdown.py)
    shutdown_grace_s: float = Field(
        8.0, gt=0, description="seconds a stopping worker, sink, notifier or read API may spend finishing, "
        "flushing and committing before it exits anyway (what was not committed is delivered again)"
    )

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def resend_window_ms(self) -> int:
        return round(self.resend_window_s * 1000)

    @property
    def heartbeat_interval_s(self) -> float:
        """Group heartbeat of the worker and the sink: a fifth of the session timeout, at most 3 s."""
        return min(3.0, self.session_timeout_s / 5)

    @property
    def database_url_value(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def database_url_masked(self) -> str:
        return mask_url(self.database_url_value)


def settings_for(args: Any, **overrides: Any) -> Settings:
    """Settings from the environment, with the command line's ``--catalog`` and ``--database-url``
    (where the command has them, see ``streams.cli.options``) and ``overrides`` on top."""
    if getattr(args, "catalog", None):
        overrides.setdefault("catalog_path", Path(args.catalog))
    if getattr(args, "database_url", None):
        overrides.setdefault("database_url", args.database_url)
    return Settings(**overrides)
