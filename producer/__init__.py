"""oneroster-cdc: OneRoster rosters as an exactly-once Kafka change stream."""

__version__ = "0.1.0"
