"""Webhook notifications: awards, revocations and nudges POSTed, signed as Standard Webhooks do, to every endpoint.

``endpoints`` (configuration), ``messages`` (record -> signed request), ``policy`` (what a response
means: delivered, retry later, dead letter), ``outbox`` (the durable queue of pending deliveries),
``notifier`` (the ``badgestream notify`` process). See docs/notifications.md.
"""
