"""Pydantic models for everything that crosses a process boundary; no I/O lives here."""
