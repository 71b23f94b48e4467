"""Everything that talks to Kafka; no module outside this package imports the Kafka client.

- ``options``: client options (connection, security, compression) from ``[kafka]``.
- ``topics``: topic names, their configs, creating missing topics.
- ``writer``: the transactional writer (one transaction per ``events.Batch``).
- ``reader``: reading topics back (read_committed, to the end or following).
- ``group``: reading event topics for an application, committing offsets for its group (the
  consumer kit ``producer.consume`` reads through it).
- ``statetopic``: the ``<prefix>.state`` record format (key, headers; encode and decode).
- ``restore``: the state store and the checkpoints read back at start.
- ``probe``: does the broker answer (readiness, ``demo``).
"""
