"""Helpers for the reliability tests: TOML configs, the daemon and CLI as subprocesses, ports.

The simulator runs inside the test's event loop, so every wait here is asynchronous (the
subprocesses are polled with ``asyncio.sleep``), never a blocking ``subprocess.run``: a blocking
wait would stop the simulator from answering the daemon.

Each subprocess writes its stdout and stderr to files (appended across restarts), which the
tests read to follow the daemon's JSON log lines and to scan for secrets afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"


# --------------------------------------------------------------------------- subprocesses


def cli_command() -> list[str]:
    """How to run ``oneroster-cdc`` from this venv."""
    script = Path(sys.executable).parent / "oneroster-cdc"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from producer.cli import main; sys.exit(main())"]


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEROSTER_CDC")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int | None:
    """The exit code once ``proc`` ends within ``within`` seconds, else None (still running)."""
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return proc.returncode


@dataclass
class CliResult:
    """A finished CLI run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


async def run_cli(
    config: Path,
    *args: str,
    logs: Path,
    within: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> CliResult:
    """Run ``oneroster-cdc --config CONFIG --log-format json ARGS`` to completion (bounded)."""
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local tmp dir, instant
    stamp = f"{time.monotonic_ns()}"
    out_path, err_path = logs / f"cli-{stamp}.out", logs / f"cli-{stamp}.err"
    argv = [*cli_command(), "--config", str(config), "--log-format", "json", *args]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=_env(env), cwd=ROOT)  # noqa: ASYNC220 - polled asynchronously below
        code = await wait_exit(proc, within)
        if code is None:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"{' '.join(args)} did not finish within {within}s; stderr tail: "
                + err_path.read_text(errors="replace")[-2000:]
            )
    return CliResult(
        list(args),
        code,
        out_path.read_text(encoding="utf-8", errors="replace"),
        err_path.read_text(encoding="utf-8", errors="replace"),
    )


def parse_log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``text`` (other lines are skipped)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
    return out


@dataclass
class DaemonProcess:
    """``oneroster-cdc run`` as a subprocess that a test starts, kills and restarts.

    stdout and stderr of every incarnation are appended to ``<logs>/daemon.out|err``.
    """

    config: Path
    logs: Path
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    _offset: int = 0
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def out_path(self) -> Path:
        return self.logs / "daemon.out"

    @property
    def err_path(self) -> Path:
        return self.logs / "daemon.err"

    def start(self) -> None:
        """Start a new incarnation (the previous one must have ended)."""
        assert self.proc is None or self.proc.poll() is not None, "the daemon is still running"
        self._close_files()
        self.logs.mkdir(parents=True, exist_ok=True)
        self._offset = self.err_path.stat().st_size if self.err_path.exists() else 0
        out, err = self.out_path.open("ab"), self.err_path.open("ab")
        self._files = [out, err]
        argv = [*cli_command(), "--config", str(self.config), "--log-format", "json", "run"]
        self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=_env(self.env), cwd=ROOT)
        self.starts += 1

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the running incarnation and reap it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.kills += 1
        self.proc.wait(timeout=30)
        self._close_files()

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM and wait (bounded) for a graceful exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await wait_exit(self.proc, within)
        if code is None:
            self.kill()
            self._close_files()
            raise AssertionError(f"the daemon did not stop within {within}s of SIGTERM")
        self._close_files()
        return code

    def close(self) -> None:
        """Make sure nothing is left running (fixture teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._close_files()

    def lines(self, *, current: bool = True) -> list[dict[str, Any]]:
        """The JSON log lines (of the current incarnation, or of all of them)."""
        if not self.err_path.exists():
            return []
        data = self.err_path.read_bytes()
        if current:
            data = data[self._offset :]
        return parse_log_lines(data.decode("utf-8", errors="replace"))

    def all_output(self) -> str:
        """Everything every incarnation wrote to stdout and stderr."""
        paths = (self.out_path, self.err_path)
        parts = [p.read_text(errors="replace") for p in paths if p.exists()]
        return "\n".join(parts)

    async def wait_log(
        self,
        event: str,
        *,
        within: float,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        current: bool = True,
    ) -> dict[str, Any]:
        """The first log line named ``event`` (matching ``where``); fails after ``within`` s."""
        deadline = time.monotonic() + within
        while True:
            for line in self.lines(current=current):
                if line.get("event") == event and where(line):
                    return line
            if self.proc is not None and self.proc.poll() is not None and current:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) before logging {event!r}; "
                    f"stderr tail: {self.err_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {event!r} log line within {within}s; stderr tail: "
                    f"{self.err_path.read_text(errors='replace')[-3000:]}"
                )
            await asyncio.sleep(0.1)

    async def http_url(self, within: float = 60.0) -> str:
        """The daemon's HTTP root, from its ``daemon.http`` log line."""
        line = await self.wait_log("daemon.http", within=within)
        return str(line["url"])


async def http_get(url: str, within: float = 10.0) -> tuple[int, str]:
    """Status and body of a GET (loopback only)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=within)) as resp,
    ):
        return resp.status, await resp.text()


async def eventually(
    check: Callable[[], Any],
    *,
    within: float,
    interval: float = 1.0,
    message: Callable[[], str] | str = "condition not met",
) -> Any:
    """Await ``check()`` (sync or async) until it returns a truthy value; fail after ``within``."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"not within {within}s: {text}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- a private broker


@dataclass
class PrivateBroker:
    """A single-node Kafka of its own (``scripts/kafka`` with its own port and data dir)."""

    port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.port + 1),
            "KAFKA_DATA_DIR": str(self.data_dir),
            "KAFKA_HEAP": os.environ.get("RELIABILITY_KAFKA_HEAP", "-Xms128m -Xmx512m"),
            "KAFKA_START_TIMEOUT": "120",
        }

    async def _script(self, *args: str, within: float = 150.0) -> subprocess.CompletedProcess[str]:
        proc = await asyncio.create_subprocess_exec(
            str(KAFKA_SCRIPT),
            *args,
            env=self._env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), within)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"scripts/kafka {' '.join(args)} took over {within}s") from None
        code = proc.returncode
        assert code is not None
        return subprocess.CompletedProcess(list(args), code, out.decode(), err.decode())

    async def start(self, *, keep: bool = False) -> None:
        done = await self._script("start", *(["--keep"] if keep else []))
        if done.returncode != 0:
            raise AssertionError(f"scripts/kafka start failed: {done.stderr[-2000:]}")

    async def kill(self) -> None:
        done = await self._script("kill")
        if done.returncode != 0:
            raise AssertionError(f"scripts/kafka kill failed: {done.stderr[-2000:]}")

    async def stop(self) -> None:
        await self._script("stop")
