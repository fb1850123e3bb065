"""The worker: the Faust app, its per-event processor, output producer, safe consumer and metrics."""
