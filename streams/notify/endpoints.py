"""Webhook endpoints from settings: ``BADGESTREAM_WEBHOOK_URLS`` + one secret, or a YAML file of several."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ConfigurationError
from streams.settings import Settings

NotificationType = Literal["badge.awarded", "badge.revoked", "badge.nudge"]
ALL_TYPES: tuple[NotificationType, ...] = ("badge.awarded", "badge.revoked", "badge.nudge")
SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: the bytes the base64 decodes to (as standardwebhooks does)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):] + "==")
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not base64") from None
    if len(key) < 16:
        raise ValueError(f"the secret decodes to {len(key)} bytes; use at least 16 (24-64 is usual)")
    return key


class Endpoint(BaseModel):
    """One receiver: where to POST, how to sign, which notification types it wants, and whether backfills too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    secret: str = Field(repr=False)
    types: tuple[NotificationType, ...] = ALL_TYPES
    backfill: bool = False
    concurrency: int | None = Field(None, ge=1, le=1000)

    @field_validator("secret")
    @classmethod
    def _valid_secret(cls, value: str) -> str:
        secret_key(value)
        return value

    @property
    def key(self) -> bytes:
        return secret_key(self.secret)

    def wants(self, kind: NotificationType, backfill: bool) -> bool:
        return kind in self.types and (self.backfill or not backfill)


def load_endpoints(settings: Settings) -> list[Endpoint]:
    """Every configured endpoint; raises :class:`ConfigurationError` saying what is wrong and where."""
    endpoints: list[Endpoint] = []
    if settings.webhook_urls:
        if settings.webhook_secret is None:
            raise ConfigurationError("BADGESTREAM_WEBHOOK_URLS is set but BADGESTREAM_WEBHOOK_SECRET is not")
        for url in settings.webhook_urls:
            try:
                endpoints.append(Endpoint(url=url, secret=settings.webhook_secret.get_secret_value()))
            except ValidationError as exc:
                raise ConfigurationError(f"BADGESTREAM_WEBHOOK_URLS: {url}: {_first(exc)}") from None
    if settings.webhook_config is not None:
        endpoints += _from_yaml(settings.webhook_config)
    urls = [e.url for e in endpoints]
    duplicates = sorted({u for u in urls if urls.count(u) > 1})
    if duplicates:
        raise ConfigurationError(f"webhook endpoint configured twice: {', '.join(duplicates)}")
    return endpoints


def _from_yaml(path: Path) -> list[Endpoint]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the webhook config: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    items = raw.get("endpoints") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise ConfigurationError(f"{path}: expected 'endpoints: [{{url: ..., secret: whsec_...}}, ...]'")
    endpoints = []
    for index, item in enumerate(items):
        try:
            endpoints.append(Endpoint.model_validate(item))
        except ValidationError as exc:
            raise ConfigurationError(f"{path}: endpoints[{index}]: {_first(exc)}") from None
    return endpoints


def _first(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where + ': ' if where else ''}{error['msg'].removeprefix('Value error, ')}"
