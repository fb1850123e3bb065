"""The pure badge engine: per-user state, rule kinds, custom evaluators and safe expressions."""
