"""Process entry point of ``oneroster-cdc``: take SIGTERM first, then load the program.

Loading the CLI and its libraries takes a noticeable moment; a SIGTERM in that window would
otherwise kill the process by the default action (exit status -15) before the daemon installs
its graceful handler. Here a SIGTERM that arrives while the program is still loading ends it
cleanly: exit 0 for ``run`` (nothing had started, so stopping is complete) and 143 otherwise.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

#: Global options that take a value (the command is the first other bare word).
_VALUED = frozenset({"--config", "--log-format", "--log-level"})


def command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (the CLI arguments), if any."""
    words = iter(argv)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main() -> int:
    """Install the early SIGTERM handler, then run the CLI."""
    code = 0 if command_of(sys.argv[1:]) == "run" else 128 + signal.SIGTERM

    def stop_while_loading(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(code)

    signal.signal(signal.SIGTERM, stop_while_loading)
    from producer.cli import main as cli_main  # noqa: PLC0415 - only after the handler is set

    return cli_main()
