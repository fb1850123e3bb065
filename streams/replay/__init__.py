"""Replay: recompute awards from the input topics, diff against the database, apply."""
