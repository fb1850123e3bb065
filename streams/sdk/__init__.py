"""The producer SDK upstream services use to emit events."""
