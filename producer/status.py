"""What an operator reads about each district and entity: rows for ``status``, ``sync`` and the
status page, with times as ISO strings (for scripts) or as ages (for people).

- ``checkpoint_row`` turns a committed ``Checkpoint`` into a flat row: ISO-8601 UTC times
  (``...Z``), the cursor lag in seconds, the cumulative counts, dead letters, held deletes and,
  when deletes are held, the exact ``confirm-deletes`` command.
- ``ago`` and ``span`` say a number of seconds the way people read it ("3 min ago", "2 h").
- ``print_rows`` prints rows as a table: a rich table in a terminal, plain aligned columns
  otherwise. Nothing is ever cut: a script reading the output gets every character.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from producer.checkpoints import Checkpoint

#: A row as ``status --json`` prints it (one per district and entity).
Row = dict[str, Any]


#: The per-entity columns people read (``status`` in a table, the status page).
ENTITY_COLUMNS: Final = (
    "entity",
    "last full sync",
    "last delta sync",
    "cursor lag",
    "records",
    "created",
    "updated",
    "deleted",
    "dead letters",
    "held deletes",
)


def iso(moment: datetime | None) -> str | None:
    """``2026-12-01T10:41:09.123Z`` (UTC, milliseconds), or None."""
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def confirm_command(district_id: str, entity: str) -> str:
    """The command that applies an entity's held deletes."""
    return f"oneroster-cdc confirm-deletes --district {district_id} --entity {entity}"


def checkpoint_row(cp: Checkpoint, now: datetime) -> Row:
    """A checkpoint as a flat row (times ISO, lag in seconds as of ``now``)."""
    cursor = cp.cursor_time()
    return {
        "district": cp.district_id,
        "entity": cp.entity,
        "cursor": cp.cursor,
        "cursor_lag_seconds": None
        if cursor is None
        else round(max(0.0, (now - cursor).total_seconds()), 3),
        "last_full_sync_at": iso(cp.last_full_sync_at),
        "last_delta_sync_at": iso(cp.last_delta_sync_at),
        "records": cp.record_count,
        "created": cp.created_count,
        "updated": cp.updated_count,
        "deleted": cp.deleted_count,
        "rejected": cp.rejected_count,
        "dead_letters": cp.rejected_count,
        "held_deletes": cp.held_deletes,
        "confirm_command": confirm_command(cp.district_id, cp.entity) if cp.held_deletes else None,
        "delta_supported": cp.delta_supported,
    }


def district_row(
    district_id: str,
    *,
    origin: str,
    version: str,
    checkpoints: Sequence[Checkpoint],
    now: datetime,
    circuit_open: bool = False,
    consecutive_failures: int = 0,
    running: bool = False,
    last_error: str | None = None,
    last_success: float | None = None,
    shard: int | None = None,
    owned: bool = True,
) -> Row:
    """One district of the status snapshot (``last_error`` must already be redacted): its
    shard, and whether this instance owns that shard (when not, another instance polls it and
    this one has no checkpoint of it to show)."""
    return {
        "id": district_id,
        "origin": origin,
        "version": version,
        "shard": shard,
        "owned": owned,
        "circuit_open": circuit_open,
        "consecutive_failures": consecutive_failures,
        "running": running,
        "last_error": last_error,
        "last_success_at": None
        if last_success is None
        else iso(datetime.fromtimestamp(last_success, UTC)),
        "entities": [checkpoint_row(cp, now) for cp in checkpoints],
    }


def span(seconds: float | None) -> str:
    """``45 s``, ``3 min``, ``5 h``, ``2 d`` (``-`` for None)."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def ago(moment: str | datetime | None, now: datetime) -> str:
    """How long before ``now`` an ISO time (or datetime) was: ``3 min ago``; ``never``."""
    if moment is None:
        return "never"
    when = moment if isinstance(moment, datetime) else datetime.fromisoformat(moment)
    return f"{span((now - when).total_seconds())} ago"


def _plain(rows: Sequence[Sequence[str]], columns: Sequence[str], out: TextIO) -> None:
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for line in (columns, *rows):
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")


def print_rows(
    rows: Sequence[Mapping[str, str]],
    columns: Sequence[str],
    out: TextIO,
    *,
    title: str,
    terminal: bool | None = None,
) -> None:
    """``rows`` (already formatted) as a table on ``out``: rich in a terminal, plain aligned
    text otherwise (never truncated, one line per row)."""
    cells = [[row.get(c, "") for c in columns] for row in rows]
    if not (out.isatty() if terminal is None else terminal):
        _plain(cells, columns, out)
        return
    from rich.console import Console  # noqa: PLC0415 - only terminals need it
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for line in cells:
        table.add_row(*line)
    Console(file=out).print(table)
