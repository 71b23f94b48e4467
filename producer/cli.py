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
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog

from producer import __version__
from producer.config import Config, describe_errors, load_config, resolve_config_path
from producer.errors import CdcError, ConfigError
from producer.logs import configure_logging, register_secrets
from producer.model import ENTITIES, Entity

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
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="the daemon; runs until SIGTERM/SIGINT")

    sync = sub.add_parser("sync", help="one pass over the chosen districts, then exit")
    chosen = sync.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--district", action="append", metavar="ID", help="a district (repeat)")
    chosen.add_argument("--all", action="store_true", help="every configured district")
    sync.add_argument("--entity", action="append", choices=ENTITIES, help="an entity (repeat)")
    sync.add_argument("--full", action="store_true", help="full listing (finds hard deletes)")

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

    sub.add_parser("check-config", help="validate the config and say what is wrong")

    confirm = sub.add_parser("confirm-deletes", help="apply deletes held by the mass-delete guard")
    confirm.add_argument("--district", required=True, metavar="ID")
    confirm.add_argument("--entity", required=True, choices=ENTITIES)

    forget = sub.add_parser(
        "forget",
        help="erase a district: DELETED events and tombstones for every record, checkpoints "
        "removed (fences a running daemon, like confirm-deletes)",
    )
    forget.add_argument("--district", required=True, metavar="ID")
    forget.add_argument(
        "--force",
        action="store_true",
        help="even if the config still lists the district (its next poll snapshots it again)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oneroster-cdc`` console script."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
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
    problems = describe_errors(args.config, os.environ)
    if problems:
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 2
    config = load_config(args.config, os.environ)
    print(
        f"{path}: ok: {len(config.districts)} district(s), "
        f"broker {','.join(config.kafka.bootstrap_servers)}, prefix {config.kafka.topic_prefix!r}"
        + (", ClassLink discovery on" if config.classlink else "")
        + (
            f", privacy: {_privacy_summary(config)}"
            if config.privacy.omit or config.privacy.hash
            else ""
        )
    )
    return 0


def _privacy_summary(config: Config) -> str:
    from producer.privacy import PrivacyRules  # noqa: PLC0415

    privacy = config.privacy
    return PrivacyRules.parse(privacy.omit, privacy.hash, privacy.hash_key).describe()


async def _sync(config: Config, args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from producer.service import Service  # noqa: PLC0415

    console = Console(stderr=True)
    entities: list[Entity] | None = args.entity
    failed: list[str] = []
    table = Table(title="oneroster-cdc sync")
    for column in ("district", "entity", "mode", "fetched", "created", "updated", "deleted"):
        table.add_column(column)
    table.add_column("rejected")
    table.add_column("held deletes")
    async with Service(config) as service:
        ids = service.district_ids if args.all else args.district
        for district_id in ids:
            with console.status(f"syncing {district_id} ..."):
                try:
                    results = await service.sync(district_id, full=args.full, entities=entities)
                except CdcError as exc:
                    failed.append(district_id)
                    console.print(f"[red]{district_id}: {exc}[/red]")
                    continue
            for r in results:
                table.add_row(
                    r.district_id,
                    r.entity,
                    r.mode if r.skipped is None else "skipped",
                    *(str(v) for v in (r.fetched, r.created, r.updated, r.deleted, r.rejected)),
                    str(r.held_deletes),
                )
    Console().print(table)
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
        return 1
    return 0


def _checkpoint_row(cp: Any) -> dict[str, Any]:
    return {
        "district": cp.district_id,
        "entity": cp.entity,
        "cursor": cp.cursor,
        "last_full_sync_at": cp.last_full_sync_at.isoformat() if cp.last_full_sync_at else None,
        "last_delta_sync_at": cp.last_delta_sync_at.isoformat() if cp.last_delta_sync_at else None,
        "records": cp.record_count,
        "created": cp.created_count,
        "updated": cp.updated_count,
        "deleted": cp.deleted_count,
        "rejected": cp.rejected_count,
        "held_deletes": cp.held_deletes,
        "delta_supported": cp.delta_supported,
    }


async def _status(config: Config, as_json: bool, out: TextIO) -> int:
    """Read the checkpoints topic (no writer is started, so a running daemon is untouched)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from producer.avro import Schemas  # noqa: PLC0415
    from producer.events import Encoder  # noqa: PLC0415
    from producer.kafka.options import consumer_options  # noqa: PLC0415
    from producer.kafka.restore import load_checkpoints  # noqa: PLC0415
    from producer.kafka.topics import TopicNames  # noqa: PLC0415

    topics = TopicNames(config.kafka.topic_prefix)
    found = await load_checkpoints(
        Encoder(Schemas.load(), topics),
        topic=topics.checkpoints,
        consumer_config=consumer_options(config.kafka),
    )
    rows = [_checkpoint_row(cp) for _, cp in sorted(found.items())]
    if as_json:
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
        return 0
    table = Table(title=f"oneroster-cdc status ({config.kafka.topic_prefix})")
    columns = ("district", "entity", "cursor", "last_full_sync_at", "last_delta_sync_at")
    for column in (*columns, "records", "held_deletes"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c] or "-") for c in (*columns, "records", "held_deletes")))
    Console(file=out).print(table)
    return 0


async def _confirm(config: Config, district_id: str, entity: Entity) -> int:
    from producer.service import Service  # noqa: PLC0415

    async with Service(config) as service:
        held = service.book.get(district_id, entity).held_deletes
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


_COMMANDS: dict[str, Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "sync": _sync,
    "status": _status_command,
    "tail": _tail,
    "confirm-deletes": _confirm_command,
    "forget": _forget_command,
}
