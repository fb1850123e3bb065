"""The one error root of badgestream and every named kind, so callers can catch exactly what they mean.

Kinds by layer: bad input (:class:`InvalidEventError`, with its dead-letter code), bad catalog
(:class:`CatalogError`), an isolated rule failure (:class:`EvaluatorError`); and for the processes in
``streams/``: settings and environment (:class:`ConfigurationError`, :class:`TopicNotFoundError`), a
command used wrongly (:class:`UsageError`), records the broker did not accept (:class:`DeliveryError`)
and the sink (:class:`SinkError`, :class:`SinkStopped`).
"""

from __future__ import annotations

from typing import Literal

DeadLetterCode = Literal[
    # input events (schemas.events.parse_event and the catalog's per-type checks)
    "too_large", "invalid_json", "invalid_envelope", "invalid_data",
    # the worker: a parser or engine bug must not lose the event either
    "unexpected_error", "processing_error",
    # the sink: output records it cannot store, or a message from a topic it does not read
    "invalid_award", "invalid_progress", "unknown_topic",
]
"""Every ``error_code`` a dead letter can carry."""


class BadgestreamError(Exception):
    """Root of every error badgestream raises on purpose."""


class InvalidEventError(BadgestreamError):
    """An input event cannot be used; ``code`` is the dead-letter error code."""

    def __init__(self, code: DeadLetterCode, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code: DeadLetterCode = code
        self.reason = reason


class CatalogError(BadgestreamError):
    """The badge catalog is invalid; the message names the badge, the field and, when known, the line."""


class EvaluatorError(BadgestreamError):
    """A rule or custom evaluator failed on one event; isolated, counted, never fatal."""


class ConfigurationError(BadgestreamError):
    """Settings or the local environment do not allow the requested operation."""


class TopicNotFoundError(ConfigurationError):
    """A topic the operation reads does not exist on the broker."""


class UsageError(BadgestreamError):
    """A command was called with arguments that do not fit together."""


class DeliveryError(BadgestreamError):
    """The broker did not accept records (after the producer's own retries); nothing was committed past them."""


class SinkError(BadgestreamError):
    """The award sink cannot write or decode what it consumed."""


class SinkStopped(SinkError):
    """The sink was asked to stop while a batch could not be written; the batch stays uncommitted."""
