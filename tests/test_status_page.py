"""The status page: rendered HTML escapes what sources send, and the daemon's page works in a
real headless browser (Debian's chromium driven by Selenium through chromium-driver)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from producer.simulator import DistrictSpec, Simulator
from producer.status_page import render_fragment, render_page
from tests.harness import district_entry, free_port, write_config_file
from tests.test_cli import ROOT

T = TypeVar("T")
SENTINEL = "sentinel-secret-7f3a9c1e55"
HOSTILE = '<b>bold</b><img src=x onerror="alert(1)"> & "quoted"'
#: Set to a path (e.g. docs/status-page.png) to keep the screenshot the test takes.
SCREENSHOT_ENV = "STATUS_PAGE_SCREENSHOT"


def _snapshot(**district: Any) -> dict[str, Any]:
    row = {
        "district": "d1",
        "entity": "classes",
        "cursor": "2026-12-01T10:00:00.000Z",
        "cursor_lag_seconds": 125.0,
        "last_full_sync_at": "2026-12-01T10:00:00.000Z",
        "last_delta_sync_at": None,
        "records": 7,
        "created": 7,
        "updated": 0,
        "deleted": 0,
        "dead_letters": 1,
        "held_deletes": 3,
        "confirm_command": "oneroster-cdc confirm-deletes --district d1 --entity classes",
    }
    return {
        "generated_at": "2026-12-01T10:02:05.000Z",
        "instance": {"topic_prefix": "oneroster", "shard_count": 6, "shards": [0, 4]},
        "readiness": {"ready": False, "checks": {"broker": {"ok": False, "detail": HOSTILE}}},
        "districts": [
            {
                "id": "d1",
                "origin": "config",
                "version": "1.2",
                "circuit_open": True,
                "consecutive_failures": 5,
                "running": False,
                "last_error": HOSTILE,
                "entities": [row],
                **district,
            }
        ],
    }


def test_fragment_escapes_source_strings_and_names_the_confirm_command() -> None:
    """Error texts and check details from sources are escaped (no tag of theirs survives), the
    held deletes carry the exact `confirm-deletes` command, and ages are relative."""
    text = render_fragment(_snapshot())
    assert "<b>" not in text
    assert "<img" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "oneroster-cdc confirm-deletes --district d1 --entity classes" in text
    assert "2 min ago" in text
    assert "circuit open (5 failures)" in text
    page = render_page(_snapshot())
    assert '<script src="/status.js"></script>' in page
    assert "<script>" not in page  # no inline script: the CSP forbids it
    assert "http://" not in page
    assert "https://" not in page


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        reason = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return chromium, driver


@asynccontextmanager
async def _echoing_token_server() -> AsyncIterator[str]:
    """An outside OAuth 2.0 server that refuses every client and echoes the secret it was sent
    (and some markup) in its error description, as careless servers do."""

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        basic = request.headers.get("Authorization", "").removeprefix("Basic ")
        secret = base64.b64decode(basic).decode() if basic else str(form.get("client_secret"))
        body = {"error": "invalid_client", "error_description": f"{secret} refused {HOSTILE}"}
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _config(
    path: Path, sim: Simulator, leaky: str, *, bootstrap: str, prefix: str, port: int
) -> Path:
    sync = {
        "poll_interval": "1s",
        "jitter": "0s",
        "overlap": "5s",
        "full_sync_interval": "5s",
        "failure_backoff": "1s",
        "failure_backoff_max": "2s",
        "circuit_breaker_threshold": 2,
    }
    springfield = {**district_entry(sim, "springfield"), "page_size": 200, "concurrency": 2}
    leaky_entry = {
        "id": "leaky-district",
        "base_url": leaky,
        "version": "1.2",
        "auth": "oauth2",
        "client_id": "leaky",
        "client_secret": SENTINEL,
        "token_url": f"{leaky}/oauth/token",
        "request_timeout": "2s",
        "max_retries": 0,
    }
    return write_config_file(
        path, bootstrap=bootstrap, prefix=prefix, districts=[springfield, leaky_entry], sync=sync,
        listen=f"127.0.0.1:{port}",
    )  # fmt: skip


async def _until(
    what: str, check: Callable[[], T | None], *, within: float = 90.0, every: float = 0.5
) -> T:
    """Polls the (blocking) ``check`` in a thread until it returns a truthy value."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.mark.integration
async def test_status_page_in_a_real_browser(
    kafka_bootstrap: str, unique_prefix: str, tmp_path: Path
) -> None:
    """Loaded in headless chromium while the daemon snapshots a district, the page fills in the
    district's seven entity rows by itself (no reload), then shows a held delete with its exact
    `confirm-deletes` command after a third of the classes vanish. A failing district shows its
    open circuit and last error, escaped, with the client secret it echoed redacted: no
    sentinel secret anywhere in the page or its JSON. A screenshot is taken."""
    chromium, driver_path = _browser_paths()
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service as DriverService  # noqa: PLC0415

    sim = Simulator([DistrictSpec(id="springfield", version="1.2", size="small", seed=21)])
    port = free_port()
    async with sim.serve(), _echoing_token_server() as leaky:
        config = _config(
            tmp_path / "c.toml", sim, leaky, bootstrap=kafka_bootstrap, prefix=unique_prefix,
            port=port,
        )  # fmt: skip
        log = (tmp_path / "daemon.log").open("wb")
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "producer", "--config", str(config), "--log-format", "json",
            "run", stdout=asyncio.subprocess.DEVNULL, stderr=log, cwd=ROOT,
        )  # fmt: skip
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100"):
            options.add_argument(flag)
        options.add_argument("--disable-dev-shm-usage")
        browser = None
        try:
            base = f"http://127.0.0.1:{port}"

            async def page_served() -> bool:
                try:
                    async with aiohttp.ClientSession() as http, http.get(base + "/") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = time.monotonic() + 60
            while not await page_served():
                assert time.monotonic() < deadline, "the status page never answered"
                await asyncio.sleep(0.2)
            browser = await asyncio.to_thread(
                webdriver.Chrome, options=options, service=DriverService(driver_path)
            )
            await asyncio.to_thread(browser.get, base + "/")

            def seen(script: str) -> Any:
                # One script run reads the page atomically: the fragment is swapped every 2 s,
                # so elements found by one call may be gone by the next.
                return browser.execute_script(script)

            rows_script = """return Array.from(document.querySelectorAll('tr[data-district]'))
                .map(r => [r.dataset.district, r.dataset.entity,
                           Array.from(r.cells).map(c => c.textContent)]);"""
            users_total = str(len(sim.district("springfield").truth_state("users")))

            def users_synced() -> bool:
                found = [r for r in seen(rows_script) if r[0] == "springfield"]
                users = [r[2] for r in found if r[1] == "users"]
                return len(found) == 7 and bool(users) and users[0][4] == users_total

            await _until("the snapshot's rows to appear", users_synced, within=120)

            d = sim.district("springfield")
            classes = sorted(d.truth_state("classes"))
            for sid in classes[: len(classes) // 3]:
                d.hard_delete("classes", sid)
            command = "oneroster-cdc confirm-deletes --district springfield --entity classes"

            def held_shown() -> str:
                return str(
                    seen(
                        "return Array.from(document.querySelectorAll('code.confirm'))"
                        ".map(c => c.textContent).join(' ');"
                    )
                )

            assert command in await _until("the held delete", held_shown, within=90)

            def failure_shown() -> list[Any]:
                return list(
                    seen(
                        """const s = document.querySelector(
                               'section[data-district="leaky-district"]');
                        const e = s && s.querySelector('.error');
                        if (!e || !s.querySelector('.circuit-open')) { return []; }
                        return [e.textContent, e.querySelectorAll('*').length,
                                document.querySelectorAll('main img').length,
                                document.getElementById('connection').textContent,
                                document.documentElement.outerHTML];"""
                    )
                )

            error, markup, images, connection, source = await _until(
                "the failing district's error", failure_shown, within=60
            )
            assert "<b>bold</b>" in error  # shown as text, not rendered as markup
            assert (markup, images) == (0, 0)
            assert "[REDACTED]" in error
            assert SENTINEL not in source
            assert connection == "live"

            shot = tmp_path / "status-page.png"
            assert await asyncio.to_thread(browser.save_screenshot, str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            keep = os.environ.get(SCREENSHOT_ENV)
            if keep:
                shutil.copyfile(shot, keep)
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/status.json") as resp:
                    snapshot = await resp.text()
                async with http.get(base + "/") as resp:
                    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert SENTINEL not in snapshot
            assert json.loads(snapshot)["readiness"]["ready"] is True
        finally:
            if browser is not None:
                await asyncio.to_thread(browser.quit)
            if daemon.returncode is None:
                daemon.terminate()
                try:
                    await asyncio.wait_for(daemon.wait(), 60)
                except TimeoutError:
                    daemon.kill()
                    await daemon.wait()
            log.close()
    assert SENTINEL not in (tmp_path / "daemon.log").read_text()
