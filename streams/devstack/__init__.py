"""The whole system on one machine: ``badgestream up`` and ``simulate``."""
