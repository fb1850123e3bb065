"""The ``badgestream`` command line."""
