"""A local single-node Apache Kafka (KRaft) from the official artifacts on Maven Central."""
