"""How badgestream runs: local single-node Kafka and PostgreSQL for development and tests, manifests."""
