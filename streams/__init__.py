"""Everything with side effects: the Faust app, the award sink, the producer SDK, replay, settings, CLI."""
