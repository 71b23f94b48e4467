"""Client CPU per request on a kept-alive connection against a new connection per request,
over plain HTTP and over TLS: what sharing one connection pool per host across districts saves
(``producer/districts.py``; with ``poll_interval`` longer than aiohttp's 15 s keep-alive, a
district with its own pool opens a new connection at every poll).

    .venv/bin/python -m bench.connections [--requests 300]

A minimal aiohttp server (a child process, so only the client is measured) answers a tiny JSON
page; the certificate comes from a throwaway CA (``tests.security_helpers.make_pki``, which
needs the ``openssl`` CLI).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import ssl
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.run import free_port
from tests.security_helpers import Pki, make_pki


def _serve(port: int, pki: Pki | None, ready: Event) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=b'{"orgs": []}', content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/orgs", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = pki.server_context() if pki is not None else None
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        ready.set()
        await asyncio.sleep(3600)

    asyncio.run(main())


async def cpu_per_request(url: str, *, fresh: bool, requests: int, cafile: str | None) -> float:
    """Client CPU seconds per GET, each on a new connection when ``fresh``."""
    tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
    connector = aiohttp.TCPConnector(force_close=fresh, ssl=tls)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm up
            async with session.get(url) as resp:
                await resp.read()
        started = time.process_time()
        for _ in range(requests):
            async with session.get(url) as resp:
                await resp.read()
        return (time.process_time() - started) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    ctx = mp.get_context("spawn")
    results: dict[tuple[bool, bool], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp) / "pki")
        for tls in (False, True):
            port, ready = free_port(), ctx.Event()
            server = ctx.Process(target=_serve, args=(port, pki if tls else None, ready))
            server.daemon = True
            server.start()
            try:
                if not ready.wait(30):
                    raise RuntimeError("the server did not start")
                url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/orgs"
                for _ in range(args.rounds):
                    for fresh in (False, True):
                        cafile = str(pki.ca_cert) if tls else None
                        got = asyncio.run(
                            cpu_per_request(url, fresh=fresh, requests=args.requests, cafile=cafile)
                        )
                        results[tls, fresh] = min(results.get((tls, fresh), got), got)
            finally:
                server.terminate()
                server.join(5)
    print(f"load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f}; best of {args.rounds}")
    for tls in (False, True):
        kept, new = results[tls, False], results[tls, True]
        print(
            f"{'TLS  ' if tls else 'plain'}: kept alive {kept * 1e3:.3f} ms, new connection"
            f" {new * 1e3:.3f} ms of client CPU per request (a new connection costs"
            f" {(new - kept) * 1e3:.3f} ms more)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
