"""The daemon's status page (``/`` on the HTTP port): HTML rendered from a status snapshot.

The snapshot is the JSON of ``/status.json`` (see ``producer.status.Snapshot``). The page is one
document with inline CSS and a small script served from ``/status.js`` that re-fetches the
server-rendered fragment ``/status.html`` every two seconds; without JavaScript a
``<noscript>`` refresh reloads the page. No framework and nothing from another origin, and a
``Content-Security-Policy`` that forbids both (and any inline script).

Every string that comes from a source, the config or an error (district ids, entity names,
error texts, commands) is HTML-escaped here, in one function, ``_e``; the snapshot carries no
secret (errors are redacted before they reach it).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from producer.status import ENTITY_COLUMNS, ago, span

#: Served with the page and the fragment: only our own script, no inline script, no other origin.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REFRESH_SECONDS: Final = 2

SCRIPT: Final = """\
// Re-fetch the server-rendered status fragment; the server escapes everything in it.
(function () {
  "use strict";
  var box = document.getElementById("status");
  var state = document.getElementById("connection");
  function refresh() {
    fetch("/status.html", { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        box.innerHTML = text;
        state.textContent = "live";
        state.className = "live";
      })
      .catch(function () {
        state.textContent = "daemon unreachable, retrying";
        state.className = "down";
      });
  }
  setInterval(refresh, REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))

_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2329;background:#f5f6f8}
header{background:#1d2b3a;color:#fff;padding:12px 20px;display:flex;gap:18px;align-items:baseline;
flex-wrap:wrap}
header h1{font-size:18px;margin:0}
main{padding:12px 20px}
.live{color:#8fe38f}.down{color:#ff9c9c}
.checks span{margin-right:12px}
.ok{color:#17803d}.fail{color:#c62828;font-weight:600}
section.district{background:#fff;border:1px solid #d8dde3;border-radius:6px;margin:0 0 16px;
padding:10px 14px}
section.district h2{font-size:16px;margin:0 0 6px;display:flex;gap:10px;align-items:baseline}
.tag{font-size:12px;font-weight:400;color:#52606d;background:#eef1f4;border-radius:4px;
padding:1px 6px}
.circuit-open{background:#fde2e2;color:#b71c1c}.circuit-closed{background:#e3f6e8;color:#17803d}
.running{background:#e3eefc;color:#1a4f9c}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef1f4;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.held td{background:#fff6e0}
.error{color:#b71c1c;margin:4px 0 8px;white-space:pre-wrap;word-break:break-word}
.holds{margin:8px 0 0;padding:8px 10px;background:#fff6e0;border:1px solid #f1d48a;
border-radius:4px}
code{font:13px ui-monospace,monospace;background:#f0f2f5;padding:1px 4px;border-radius:3px}
.empty{color:#52606d}
"""


def _e(value: object) -> str:
    """The one escaping function: any value as HTML text (quotes escaped for attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: str | None, now: datetime) -> str:
    if value is None:
        return '<td class="never">never</td>'
    return f'<td title="{_e(value)}">{_e(ago(value, now))}</td>'


def _entity_row(row: Mapping[str, Any], now: datetime) -> str:
    held = int(row.get("held_deletes") or 0)
    cells = [
        f"<td>{_e(row['entity'])}</td>",
        _when(row.get("last_full_sync_at"), now),
        _when(row.get("last_delta_sync_at"), now),
        f"<td>{_e(span(row.get('cursor_lag_seconds')))}</td>",
        *(
            f'<td class="n">{_e(row.get(k, 0))}</td>'
            for k in ("records", "created", "updated", "deleted", "dead_letters")
        ),
        f'<td class="n">{_e(held) if held else "-"}</td>',
    ]
    marked = ' class="held"' if held else ""
    return (
        f'<tr data-district="{_e(row["district"])}" data-entity="{_e(row["entity"])}"{marked}>'
        f"{''.join(cells)}</tr>"
    )


def _district(d: Mapping[str, Any], now: datetime) -> str:
    circuit = "open" if d.get("circuit_open") else "closed"
    tags = [
        f'<span class="tag">{_e(d.get("origin"))}</span>',
        f'<span class="tag">OneRoster {_e(d.get("version"))}</span>',
        f'<span class="tag circuit-{circuit}">circuit {circuit}'
        + (f" ({_e(d['consecutive_failures'])} failures)" if d.get("consecutive_failures") else "")
        + "</span>",
    ]
    if d.get("shard") is not None:
        owner = "" if d.get("owned", True) else " (another instance)"
        tags.append(f'<span class="tag shard">shard {_e(d["shard"])}{owner}</span>')
    if d.get("running"):
        tags.append('<span class="tag running">syncing</span>')
    parts = [
        f'<section class="district" data-district="{_e(d["id"])}">',
        f"<h2>{_e(d['id'])} {''.join(tags)}</h2>",
    ]
    if d.get("last_error"):
        parts.append(f'<p class="error">last error: {_e(d["last_error"])}</p>')
    head = "".join(f"<th>{_e(c)}</th>" for c in ENTITY_COLUMNS)
    rows = "".join(_entity_row(r, now) for r in d.get("entities", ()))
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    holds = [r for r in d.get("entities", ()) if r.get("held_deletes")]
    if holds:
        items = "".join(
            f"<li>{_e(r['held_deletes'])} {_e(r['entity'])} deletes held: check the source, "
            f'then run <code class="confirm">{_e(r["confirm_command"])}</code></li>'
            for r in holds
        )
        parts.append(f'<div class="holds"><strong>Held deletes</strong><ul>{items}</ul></div>')
    parts.append("</section>")
    return "".join(parts)


def _checks(checks: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for name, check in checks.items():
        ok = bool(check.get("ok"))
        detail = f": {check['detail']}" if check.get("detail") and not ok else ""
        mark = "ok" if ok else "not ready"
        out.append(f'<span class="{"ok" if ok else "fail"}">{_e(name)} {mark}{_e(detail)}</span>')
    return "".join(out)


def render_fragment(snapshot: Mapping[str, Any]) -> str:
    """The live part of the page (what ``/status.html`` serves and the script swaps in)."""
    now = datetime.fromisoformat(snapshot["generated_at"])
    ready = snapshot.get("readiness", {})
    districts: Sequence[Mapping[str, Any]] = snapshot.get("districts", ())
    parts = [
        f'<p class="checks" data-ready="{_e(bool(ready.get("ready")))}">'
        f"<strong>{'ready' if ready.get('ready') else 'not ready'}</strong> "
        f"{_checks(ready.get('checks', {}))}"
        f'<span class="tag" title="{_e(snapshot["generated_at"])}">updated '
        f"{_e(snapshot['generated_at'])}</span></p>"
    ]
    if not districts:
        parts.append('<p class="empty">No district yet (configured or discovered).</p>')
    parts += [_district(d, now) for d in districts]
    return "".join(parts)


def render_page(snapshot: Mapping[str, Any]) -> str:
    """The whole document: header, the fragment, and the refresh script."""
    instance = snapshot.get("instance", {})
    shards = ", ".join(str(s) for s in instance.get("shards", ())) or "none"
    if instance.get("shard_count") is not None:
        shards += f" of {instance['shard_count']}"
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>oneroster-cdc status</title>"
        f"<noscript><meta http-equiv=refresh content={REFRESH_SECONDS * 5}></noscript>"
        f"<style>{_STYLE}</style></head><body>"
        "<header><h1>oneroster-cdc</h1>"
        f"<span>topics {_e(instance.get('topic_prefix'))}.*</span>"
        f"<span>shards {_e(shards)}</span>"
        '<span id="connection" class="live">live</span></header>'
        f'<main id="status">{render_fragment(snapshot)}</main>'
        '<script src="/status.js"></script>'
        "</body></html>"
    )
