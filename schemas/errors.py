"""The one error root of badgestream and its named kinds, so callers can catch exactly what they mean."""

from __future__ import annotations


class BadgestreamError(Exception):
    """Root of every error badgestream raises on purpose."""


class InvalidEventError(BadgestreamError):
    """An input event cannot be used; ``code`` is the dead-letter error code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class CatalogError(BadgestreamError):
    """The badge catalog is invalid; the message names the badge, the field and, when known, the line."""


class EvaluatorError(BadgestreamError):
    """A rule or custom evaluator failed on one event; isolated, counted, never fatal."""


class SinkError(BadgestreamError):
    """The award sink cannot write or decode what it consumed."""


class ConfigurationError(BadgestreamError):
    """Settings or the local environment do not allow the requested operation."""
