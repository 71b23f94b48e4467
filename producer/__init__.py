"""oneroster-cdc: OneRoster rosters as an exactly-once Kafka change stream."""

__version__ = "0.2.0"
