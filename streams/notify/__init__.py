"""Webhook notifications: awards, revocations and nudges POSTed, signed as Standard Webhooks do, to every endpoint.

``endpoints`` (configuration), ``messages`` (record -> signed request), ``policy`` (what a response
means: delivered, retry later, dead letter), ``breaker`` (when to stop sending to an endpoint and
probe it), ``outbox`` (the durable queue of pending deliveries, a SQLite file) and
``outbox_postgres`` (the same in PostgreSQL, shared by several notifiers), ``dispatcher``
(deliveries to one endpoint), ``dead_letters`` (the dead-letter topic), ``notifier`` (the
``badgestream notify`` process). See docs/notifications.md.
"""
