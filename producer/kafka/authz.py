"""Kafka authorization failures -> ``NotAuthorized``, naming the operation and the resource.

The broker says only *that* a request was denied (``TOPIC_AUTHORIZATION_FAILED`` and friends);
which ACL is missing follows from what the caller was doing, so each place that talks to Kafka
says which operation it needed (``Write`` while producing, ``Read`` while restoring, ``Create``
while creating topics ...). See the README's "Data protection" section for the full list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from producer.errors import NotAuthorized

#: Kafka error codes of authorization failures.
TOPIC_DENIED: Final = TopicAuthorizationFailedError.errno
CLUSTER_DENIED: Final = ClusterAuthorizationFailedError.errno
AUTHORIZATION_CODES: Final = frozenset(
    {
        TOPIC_DENIED,
        GroupAuthorizationFailedError.errno,
        CLUSTER_DENIED,
        TransactionalIdAuthorizationFailed.errno,
    }
)


def principal_of(options: Mapping[str, Any]) -> str | None:
    """The SASL user of aiokafka client options, if any (a name, not a secret)."""
    user = options.get("sasl_plain_username")
    return str(user) if user else None


def _topic_of(exc: BaseException) -> str | None:
    for arg in exc.args:
        if isinstance(arg, str) and arg and " " not in arg:
            return arg
        if isinstance(arg, (set, frozenset, list, tuple)) and arg:
            return ", ".join(sorted(str(a) for a in arg))
    return None


def denied(
    exc: BaseException,
    *,
    operation: str,
    topic: str | None = None,
    transactional_id: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> NotAuthorized | None:
    """The ``NotAuthorized`` that ``exc`` stands for, or None when it is no authorization
    failure. ``operation`` is what the caller needed on a topic (``topic`` is the one it was
    working on, used when the error does not name one)."""
    principal = principal_of(options or {})
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        return NotAuthorized(
            "Write", f"transactional id {transactional_id or _topic_of(exc)!r}", principal=principal
        )
    if isinstance(exc, ClusterAuthorizationFailedError):
        return NotAuthorized(
            "IdempotentWrite" if operation == "Write" else operation,
            "cluster kafka-cluster",
            principal=principal,
        )
    if isinstance(exc, GroupAuthorizationFailedError):
        return NotAuthorized("Read", f"group {_topic_of(exc)!r}", principal=principal)
    if isinstance(exc, TopicAuthorizationFailedError):
        return NotAuthorized(
            operation, f"topic {_topic_of(exc) or topic or '?'!r}", principal=principal
        )
    return None
