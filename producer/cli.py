"""``oneroster-cdc``: the command line.

Exit codes: 0 success; 1 a sync or runtime failure (``sync`` after finishing the other
districts); 2 a usage or configuration error (the message names the key).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import orjson
import structlog

from producer import __version__
from producer.config import Config, describe_errors, load_config, resolve_config_path
from producer.errors import BrokerUnavailable, CdcError, ConfigError, NotAuthorized
from producer.logs import configure_logging, redact_text, register_secrets
from producer.model import ENTITIES, Entity
from producer.status import (
    ENTITY_COLUMNS,
    Row,
    ago,
    checkpoint_row,
    confirm_command,
    print_rows,
    span,
)

if TYPE_CHECKING:
    from producer.kafka.fleet import Fleet
    from producer.service import Service
    from producer.sync import EntityResult

log = structlog.get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneroster-cdc",
        description="OneRoster rosters as an exactly-once Avro change stream on Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"oneroster-cdc {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        help="config file (default: $ONEROSTER_CDC_CONFIG, then config/oneroster-cdc.toml)",
    )
    parser.add_argument("--log-format", choices=("json", "console", "auto"), default="auto")
    parser.add_argument(
        "--log-level",
        help="INFO unless given; libraries (aiokafka, aiohttp) log at WARNING in one-shot "
        "commands unless this is given",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="the daemon; runs until SIGTERM/SIGINT")

    sync = sub.add_parser("sync", help="one pass over the chosen districts, then exit")
    chosen = sync.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--district", action="append", metavar="ID", help="a district (repeat)")
    chosen.add_argument(
        "--all", action="store_true", help="every district: configured and ClassLink-discovered"
    )
    sync.add_argument("--entity", action="append", choices=ENTITIES, help="an entity (repeat)")
    sync.add_argument("--full", action="store_true", help="full listing (finds hard deletes)")
    sync.add_argument(
        "--json", action="store_true", help="one JSON object per district and entity result"
    )

    status = sub.add_parser("status", help="cursors, last syncs and counts per district and entity")
    status.add_argument("--json", action="store_true", help="one JSON object per line")

    tail = sub.add_parser("tail", help="decode and print change events")
    tail.add_argument("entity", choices=ENTITIES)
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--district", metavar="ID")
    tail.add_argument("--json", action="store_true", help="full envelopes as JSON lines")
    tail.add_argument("--max", type=int, metavar="N", help="stop after N events")
    tail.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after idle seconds")

    from producer.simulator import cli as simulator_cli  # noqa: PLC0415 - keeps startup lean

    simulate = sub.add_parser("simulate", help="serve simulated OneRoster districts")
    simulator_cli.add_arguments(simulate)

    demo = sub.add_parser(
        "demo", help="local Kafka + simulator + daemon, events shown as they flow"
    )
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--port", type=int, default=8000, help="simulator port (default 8000)")

    check = sub.add_parser("check-config", help="validate the config and say what is wrong")
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not resolve env:/file: secrets (validate a config kept in a repository)",
    )

    confirm = sub.add_parser("confirm-deletes", help="apply deletes held by the mass-delete guard")
    confirm.add_argument("--district", required=True, metavar="ID")
    confirm.add_argument("--entity", required=True, choices=ENTITIES)

    forget = sub.add_parser(
        "forget",
        help="erase a district: DELETED events and tombstones for every record, checkpoints "
        "removed (refused while daemons of the deployment run, like confirm-deletes)",
    )
    forget.add_argument("--district", required=True, metavar="ID")
    forget.add_argument(
        "--force",
        action="store_true",
        help="even if the config still lists the district (its next poll snapshots it again)",
    )

    reshard = sub.add_parser(
        "reshard",
        help="move the state and checkpoints into the sharded layout (every instance stopped)",
    )
    reshard.add_argument(
        "--shards", type=int, metavar="N", help="the shard count (default: kafka.shards)"
    )
    reshard.add_argument(
        "--batch", type=int, default=2000, metavar="KEYS", help="keys moved per transaction"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oneroster-cdc`` console script."""
    args = _parser().parse_args(argv)
    # Only the daemon lets the libraries speak at INFO: one-shot commands print their result,
    # not aiokafka's "Updating subscribed topics".
    library_level = args.log_level or ("INFO" if args.command == "run" else "WARNING")
    try:
        configure_logging(args.log_format, args.log_level or "INFO", library_level=library_level)
    except ValueError as exc:
        print(f"oneroster-cdc: --log-level: {exc}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"oneroster-cdc: {exc}", file=sys.stderr)
        return 2
    except CdcError as exc:
        log.error("command_failed", command=args.command, error=str(exc))
        print(f"oneroster-cdc {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        # The work is over and its exit code decided: a late SIGTERM (while the interpreter
        # winds down) must not turn it into "killed by signal".
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, os.environ)
    register_secrets(config.secrets())
    return config


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "simulate":
        from producer.simulator import cli as simulator_cli  # noqa: PLC0415

        return simulator_cli.run(args)
    if command == "check-config":
        return _check_config(args)
    if command == "demo":
        from producer.demo import run_demo  # noqa: PLC0415

        return asyncio.run(run_demo(args, config_path=args.config))
    config = _config(args)
    return asyncio.run(_COMMANDS[command](config, args))


async def _run(config: Config, args: argparse.Namespace) -> int:
    from producer.daemon import Daemon  # noqa: PLC0415

    return await Daemon(config).run()


async def _tail(config: Config, args: argparse.Namespace) -> int:
    from producer.tail import tail  # noqa: PLC0415

    return await tail(
        config,
        args.entity,
        from_beginning=args.from_beginning,
        district=args.district,
        as_json=args.json,
        limit=args.max,
        idle_timeout=args.timeout,
        out=sys.stdout,
    )


async def _status_command(config: Config, args: argparse.Namespace) -> int:
    return await _status(config, args.json, sys.stdout)


async def _confirm_command(config: Config, args: argparse.Namespace) -> int:
    return await _confirm(config, args.district, args.entity)


def _check_config(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config, os.environ)
    resolve = not args.no_secrets
    problems = describe_errors(args.config, os.environ, resolve_secrets=resolve)
    if problems:
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 2
    config = load_config(args.config, os.environ, resolve_secrets=resolve)
    print(
        f"{path}: ok: {len(config.districts)} district(s), "
        f"broker {','.join(config.kafka.bootstrap_servers)}, prefix {config.kafka.topic_prefix!r}"
        + (", ClassLink discovery on" if config.classlink else "")
        + (
            f", privacy: {_privacy_summary(config)}"
            if config.privacy.omit or config.privacy.hash
            else ""
        )
        + ("" if resolve else " (env:/file: secrets not resolved)")
    )
    return 0


def _privacy_summary(config: Config) -> str:
    from producer.privacy import PrivacyRules  # noqa: PLC0415

    privacy = config.privacy
    return PrivacyRules.parse(privacy.omit, privacy.hash, privacy.hash_key).describe()


async def _districts(service: Service, config: Config, wanted: Sequence[str] | None) -> list[str]:
    """The districts a command acts on (``wanted``, or all when None), running ClassLink
    discovery first when it is configured and the choice may include discovered districts.

    Raises:
        ConfigError: a wanted district is neither configured nor discovered.
        CdcError: discovery failed.
    """
    static = {d.id for d in config.districts}
    if config.classlink is not None and (wanted is None or not set(wanted) <= static):
        await service.refresh_discovery(config.classlink)
    if wanted is None:
        return service.district_ids
    for district_id in wanted:
        service.districts.get(district_id)  # ConfigError naming the known ones
    return list(dict.fromkeys(wanted))


def _result_row(r: EntityResult) -> Row:
    return {
        "district": r.district_id,
        "entity": r.entity,
        "status": "ok" if r.skipped is None else "skipped",
        "mode": r.mode,
        "fetched": r.fetched,
        "created": r.created,
        "updated": r.updated,
        "deleted": r.deleted,
        "rejected": r.rejected,
        "held_deletes": r.held_deletes,
        "confirm_command": confirm_command(r.district_id, r.entity) if r.held_deletes else None,
        "cursor": r.cursor,
        "seconds": round(r.seconds, 3),
        "sync_id": r.sync_id,
        "error": r.skipped,
    }


def _failure_row(district_id: str | None, entity: str | None, exc: BaseException) -> Row:
    return {
        "district": district_id,
        "entity": entity,
        "status": "failed",
        "error": redact_text(str(exc)),
        "error_type": type(exc).__name__,
    }


_SYNC_COLUMNS: Final = (
    "district",
    "entity",
    "status",
    "mode",
    "fetched",
    "created",
    "updated",
    "deleted",
    "rejected",
    "held_deletes",
    "error",
)


async def _sync(config: Config, args: argparse.Namespace) -> int:
    """One pass over the chosen districts; every result (and failure) becomes a row: a JSON line
    as it happens with ``--json``, else a table at the end. A failure is also an error-level log
    event, and the exit code is 1 when anything failed."""
    from producer.service import Service  # noqa: PLC0415

    entities: list[Entity] | None = args.entity
    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        if args.json:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
            sys.stdout.flush()

    await _refuse_beside_live_group(config, "sync")
    async with Service(config) as service:
        try:
            ids = await _districts(service, config, None if args.all else args.district)
        except ConfigError:
            raise
        except CdcError as exc:
            log.error("sync.discovery_failed", error=str(exc), error_type=type(exc).__name__)
            emit(_failure_row(None, None, exc))
            ids = [d.id for d in config.districts] if args.all else []
        if not ids:
            log.warning("sync.no_districts", note="no district is configured or discovered")
        for district_id in ids:
            done: list[EntityResult] = []
            try:
                await service.sync(district_id, full=args.full, entities=entities, progress=done)
            except CdcError as exc:
                chosen = service.district_sync(district_id).chosen(entities)
                entity = chosen[len(done)] if len(done) < len(chosen) else None
                log.error(
                    "sync.district_failed",
                    district=district_id,
                    entity=entity,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
                for r in done:
                    emit(_result_row(r))
                emit(_failure_row(district_id, entity, exc))
                continue
            for r in done:
                emit(_result_row(r))
    if not args.json:
        shown = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
        print_rows(shown, _SYNC_COLUMNS, sys.stdout, title="oneroster-cdc sync")
    return 1 if any(row["status"] == "failed" for row in rows) else 0


_STATUS_COLUMNS: Final = ("district", *ENTITY_COLUMNS)


async def _status(config: Config, as_json: bool, out: TextIO) -> int:
    """Read the checkpoints topic (no writer is started, so a running daemon is untouched) and
    the group's description. A checkpoint counts where the sharded layout reads it (its shard's
    partition) and, before a reshard moved it, wherever it is."""
    from producer.avro import Schemas  # noqa: PLC0415
    from producer.events import Encoder  # noqa: PLC0415
    from producer.kafka.layout import current_checkpoints, latest_records  # noqa: PLC0415
    from producer.kafka.options import consumer_options  # noqa: PLC0415
    from producer.kafka.shards import shard_of  # noqa: PLC0415
    from producer.kafka.topics import TopicNames  # noqa: PLC0415

    topics = TopicNames(config.kafka.topic_prefix)
    encoder = Encoder(Schemas.load(), topics)
    shards = config.kafka.shards
    records = await latest_records(
        consumer_options(config.kafka),
        topics.checkpoints,
        action=f"reading checkpoints from {topics.checkpoints} failed",
    )
    found = sorted(
        (
            encoder.decode_checkpoint(r.value)
            for r in current_checkpoints(records.values(), shards).values()
            if r.value is not None
        ),
        key=lambda cp: (cp.district_id, cp.entity),
    )
    now = datetime.now(UTC)
    fleet, unknown = await _fleet_or_reason(config)
    rows: list[Row] = []
    for cp in found:
        row = checkpoint_row(cp, now)
        row["shard"] = shard = shard_of(cp.district_id, shards)
        owner = None if fleet is None else fleet.owner(shard)
        row["owner"] = None if owner is None else owner.client_id
        row["owner_host"] = None if owner is None else owner.host
        row["group_live"] = None if fleet is None else fleet.live
        rows.append(row)
    if as_json:
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
        return 0
    shown = [
        {
            "district": row["district"],
            "entity": row["entity"],
            "cursor lag": span(row["cursor_lag_seconds"]),
            "last full sync": ago(row["last_full_sync_at"], now),
            "last delta sync": ago(row["last_delta_sync_at"], now),
            "records": str(row["records"]),
            "created": str(row["created"]),
            "updated": str(row["updated"]),
            "deleted": str(row["deleted"]),
            "dead letters": str(row["dead_letters"]),
            "held deletes": str(row["held_deletes"]) if row["held_deletes"] else "-",
        }
        for row in rows
    ]
    title = f"oneroster-cdc status ({config.kafka.topic_prefix})"
    print_rows(shown, _STATUS_COLUMNS, out, title=title)
    for row in rows:
        if row["confirm_command"]:
            out.write(f"held deletes: {row['confirm_command']}\n")
    group = f"group {config.kafka.client_id!r}"
    if fleet is None:
        out.write(f"shards: owners unknown: {unknown}\n")
    elif not fleet.live:
        out.write(f"shards: no live group ({group} has no member: no instance runs)\n")
    else:
        owners = _shard_rows(fleet, shards, rows)
        out.write(f"shards ({group}: {fleet.state}, {len(fleet.members)} instance(s)):\n")
        print_rows(
            [{k: "-" if v is None else str(v) for k, v in r.items()} for r in owners],
            ("shard", "owner", "host", "districts"),
            out,
            title="shards",
        )
    return 0


async def _fleet_or_reason(config: Config) -> tuple[Fleet | None, str | None]:
    """The group's description, or None and why it could not be read (``status`` still shows
    the checkpoints: an operator principal may read them without Describe on the group)."""
    from producer.kafka.fleet import describe_fleet  # noqa: PLC0415

    try:
        return await describe_fleet(config.kafka), None
    except (NotAuthorized, BrokerUnavailable) as exc:
        return None, str(exc)


def _shard_rows(fleet: Fleet, shards: int, rows: Sequence[Row]) -> list[Row]:
    """Each shard's owner (client id and host; None when unowned) and how many of the
    districts with checkpoints are in it."""
    districts: dict[int, set[str]] = {}
    for row in rows:
        districts.setdefault(row["shard"], set()).add(row["district"])
    out: list[Row] = []
    for shard in range(shards):
        owner = fleet.owner(shard)
        out.append(
            {
                "shard": shard,
                "owner": None if owner is None else owner.client_id,
                "host": None if owner is None else owner.host,
                "districts": len(districts.get(shard, ())),
            }
        )
    return out


async def _confirm(config: Config, district_id: str, entity: Entity) -> int:
    from producer.service import Service  # noqa: PLC0415

    await _refuse_beside_live_group(config, "confirm-deletes")
    async with Service(config) as service:
        await _districts(service, config, [district_id])
        held = service.checkpoint(district_id, entity).held_deletes
        results = await service.sync(district_id, entities=[entity], confirm_deletes=True)
    deleted = sum(r.deleted for r in results)
    print(f"{district_id}/{entity}: {held} delete(s) were held; {deleted} applied")
    return 0


async def _forget_command(config: Config, args: argparse.Namespace) -> int:
    return await _forget(config, args.district, force=args.force)


async def _forget(config: Config, district_id: str, *, force: bool) -> int:
    from producer.forget import forget_district  # noqa: PLC0415
    from producer.service import Service  # noqa: PLC0415

    listed = [i for i, d in enumerate(config.districts) if d.id == district_id]
    if listed and not force:
        raise ConfigError(
            f"districts[{listed[0]}]",
            f"district {district_id!r} is still listed: the next poll (a running daemon's, or "
            "after its restart) would snapshot it again; remove its [[districts]] table first, "
            "or pass --force to forget it anyway",
        )
    await _refuse_beside_live_group(config, "forget")
    async with Service(config) as service:
        result = await forget_district(service, district_id, batch_size=config.sync.batch_size)
    if not result.total and not result.checkpoints:
        print(f"{district_id}: nothing of this district in the state")
        return 0
    counts = ", ".join(f"{n} {e}" for e, n in result.deleted.items() if n)
    print(
        f"{district_id}: {result.total} record(s) deleted ({counts or 'none'}) and "
        f"{result.checkpoints} checkpoint(s) removed; compaction drops them from the state topic"
    )
    if config.classlink is not None and district_id.startswith("classlink-"):
        print(
            f"{district_id}: a ClassLink district: unless its application is gone from "
            "ClassLink, the next discovery adds it again and it is snapshotted anew",
            file=sys.stderr,
        )
    return 0


async def _refuse_beside_live_group(config: Config, command: str) -> None:
    """``GroupLive`` (exit 1, naming the members) while daemons of this deployment run."""
    from producer.kafka.fleet import require_no_live_group  # noqa: PLC0415

    await require_no_live_group(config.kafka, f"oneroster-cdc {command}")


async def _reshard_command(config: Config, args: argparse.Namespace) -> int:
    from producer.reshard import reshard  # noqa: PLC0415

    shards: int = config.kafka.shards if args.shards is None else args.shards
    if not 1 <= shards <= 1000:
        raise ConfigError("--shards", f"must be between 1 and 1000, not {shards}")
    if args.batch < 1:
        raise ConfigError("--batch", f"must be at least 1, not {args.batch}")
    report = await reshard(config, shards=shards, batch=args.batch)
    out = sys.stdout
    out.write(f"oneroster-cdc reshard (prefix {config.kafka.topic_prefix!r}): {shards} shards\n")
    out.write(f"fenced: {', '.join(report.fenced)}\n")
    for topic in report.topics:
        out.write(topic.describe() + "\n")
    if report.changed:
        out.write(
            f"done: the sharded layout of {shards} shards ({report.checkpoints} checkpoints); "
            "`run` continues from the committed cursors\n"
        )
    else:
        out.write(f"nothing to move: already the sharded layout of {shards} shards\n")
    if shards != config.kafka.shards:
        out.write(
            f"set kafka.shards = {shards} in the config (it says {config.kafka.shards}) "
            "before starting the instances\n"
        )
    return 0


_COMMANDS: dict[str, Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "sync": _sync,
    "status": _status_command,
    "tail": _tail,
    "confirm-deletes": _confirm_command,
    "forget": _forget_command,
    "reshard": _reshard_command,
}
