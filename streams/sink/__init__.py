"""The award sink: award and progress topics in, durable database rows out."""
