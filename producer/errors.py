"""The one exception tree of oneroster-cdc.

Third-party errors (HTTP, the Kafka client, fastavro, pydantic) are wrapped where they enter,
with ``raise ... from exc``. Whether an error is worth retrying is decided by the class attribute
``retriable``, never by a message string. Messages are written for operators: they say what
happened and what to do, and never contain a secret.

    CdcError
    ├── ConfigError                   bad config; exit code 2; names the key
    ├── SourceError                   talking to a OneRoster / ClassLink server
    │   ├── SourceUnavailable         network error, timeout, 429, 5xx         (retriable)
    │   │   └── RateLimited           429; carries retry_after seconds          (retriable)
    │   ├── BadResponse               truncated JSON, HTML, error envelope      (retriable)
    │   ├── ListingIncomplete         the total changed while paging            (retriable)
    │   ├── AuthFailed                401 after one re-authentication
    │   ├── Forbidden                 403 (e.g. demographics scope not granted)
    │   ├── NotFound                  404 (unknown object)
    │   └── BadRequest                400
    │       └── FilterUnsupported     the server rejected the delta filter
    ├── SinkError                     talking to Kafka
    │   ├── BrokerUnavailable         broker down or timing out                 (retriable)
    │   ├── BrokerAuthFailed          the broker refused our SASL credentials
    │   ├── NotAuthorized             the broker's authorizer denied an operation (missing ACL)
    │   ├── Fenced                    a newer instance took over our transactional_id
    │   ├── TopicMisconfigured        e.g. the state topic exists but is not compacted
    │   └── NotShardedLayout          state/checkpoints not in kafka.shards' layout: reshard
    ├── GroupLive                     a one-shot command met live members of the daemons' group
    ├── ReshardRefused                reshard cannot do what was asked (e.g. shrink the shards)
    ├── EncodingError                 a value does not fit its Avro schema
    ├── WorkerDied                    a sync.workers process died mid-page      (retriable)
    ├── MassDeleteHeld                the mass-delete guard refused a full-sync's deletes
    └── ClientClosed                  a closed client or writer was used again
"""

from __future__ import annotations


class CdcError(Exception):
    """Root of every error oneroster-cdc raises on purpose."""

    retriable: bool = False


class ConfigError(CdcError):
    """The configuration is invalid; ``key`` names the offending setting (dotted path)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config: {key}: {message}")
        self.key = key


class SourceError(CdcError):
    """A OneRoster or ClassLink server did not give us what we asked for."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class SourceUnavailable(SourceError):
    """Network error, timeout or a 5xx answer: try again later."""

    retriable = True


class RateLimited(SourceUnavailable):
    """429: the server asks us to slow down, for ``retry_after`` seconds if it said so."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
        url: str | None = None,
    ) -> None:
        super().__init__(message, status=status, url=url)
        self.retry_after = retry_after


class BadResponse(SourceError):
    """The server answered, but not with a usable page (truncated JSON, HTML, no data key)."""

    retriable = True


class ListingIncomplete(SourceError):
    """A listing cannot be trusted as complete (e.g. its total changed while paging)."""

    retriable = True


class AuthFailed(SourceError):
    """Credentials were refused even after re-authenticating once: check them."""


class Forbidden(SourceError):
    """403: the server refuses this collection (often a missing scope)."""


class NotFound(SourceError):
    """404: unknown object or path."""


class BadRequest(SourceError):
    """400: the server rejected our query."""


class FilterUnsupported(BadRequest):
    """The server rejected the ``dateLastModified`` delta filter: fall back to full listings."""


class SinkError(CdcError):
    """Kafka did not accept what we wrote."""


class BrokerUnavailable(SinkError):
    """The broker cannot be reached or timed out: nothing was committed; retry later."""

    retriable = True


class BrokerAuthFailed(SinkError):
    """The broker refused the SASL credentials: fix ``kafka.sasl_*``; retrying cannot help."""


class NotAuthorized(SinkError):
    """The broker's authorizer denied ``operation`` on ``resource``: grant the ACL; retrying
    cannot help (the README's "Data protection" section lists every ACL the producer needs)."""

    def __init__(self, operation: str, resource: str, *, principal: str | None = None) -> None:
        who = f"User:{principal}" if principal else "this client's principal"
        super().__init__(
            f"Kafka denied {operation} on {resource} to {who}: grant that ACL "
            f"(kafka-acls --add --allow-principal {who.replace(' ', '-')} --operation "
            f'{operation} ...; README "Data protection" lists every ACL oneroster-cdc needs); '
            "retrying cannot help"
        )
        self.operation = operation
        self.resource = resource
        self.principal = principal


class Fenced(SinkError):
    """Another instance started with our transactional_id; this one must stop writing."""


class TopicMisconfigured(SinkError):
    """An existing topic has settings that would break the guarantees (e.g. not compacted)."""


class NotShardedLayout(SinkError):
    """The state or checkpoints topic is not in the sharded layout that ``kafka.shards`` asks
    for (another partition count, a checkpoint without or with another ``shards`` header, or in
    another partition than its shard's): ``oneroster-cdc reshard`` moves it; retrying cannot
    help."""


class GroupLive(CdcError):
    """The daemons' consumer group has live members: a one-shot command that writes (``sync``,
    ``confirm-deletes``, ``forget``, ``reshard``) refuses to run beside them."""


class ReshardRefused(CdcError):
    """``oneroster-cdc reshard`` cannot do what was asked (fewer shards than partitions: Kafka
    cannot remove partitions); the message says what to do instead."""


class EncodingError(CdcError):
    """A value does not fit its Avro schema (strict encoding)."""


class WorkerDied(CdcError):
    """A worker process of ``sync.workers`` died while it prepared a page (killed, out of
    memory): the pass fails before its cursor moves, and the next pass starts new workers."""

    retriable = True


class MassDeleteHeld(CdcError):
    """A full sync would delete more than the guard allows; run ``confirm-deletes`` to apply."""

    def __init__(self, district_id: str, entity: str, count: int, total: int) -> None:
        super().__init__(
            f"mass-delete guard: {count} of {total} {entity} of district {district_id!r} are "
            f"missing from a complete listing; held back until "
            f"`oneroster-cdc confirm-deletes --district {district_id} --entity {entity}`"
        )
        self.district_id = district_id
        self.entity = entity
        self.count = count
        self.total = total


class ClientClosed(CdcError):
    """A client, store or writer was used after ``close()``."""
