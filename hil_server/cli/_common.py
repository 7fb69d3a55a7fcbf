"""Small pieces the command modules share: the shared secret from the command line, and a progress line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from hil_server.cli._loop import LOOP_CHOICES

log = structlog.get_logger(__name__)


def add_listen_args(parser: argparse.ArgumentParser, speed_help: str) -> None:
    """The options of a command that serves clients: bind address, port, speed, limits, secret, loop."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=7700)
    parser.add_argument("--speed", type=float, default=1.0, help=speed_help)
    parser.add_argument("--max-clients", type=int, default=64)
    parser.add_argument("--secret-file", help="require challenge-response auth with the secret in this file")
    parser.add_argument("--secret-env", help="... or in this environment variable")
    add_event_loop_arg(parser)


def add_event_loop_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-loop",
        choices=LOOP_CHOICES,
        default="auto",
        help="asyncio event loop (default: uvloop when installed)",
    )


def add_secret_args(parser: argparse.ArgumentParser) -> None:
    """The options of a client of a server that may require authentication: the shared secret, from a file
    or an environment variable (one of the two)."""
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret-file", help="shared secret for the server's challenge-response auth, in this file"
    )
    secret.add_argument("--secret-env", help="... or in this environment variable")


def read_secret(args: argparse.Namespace) -> bytes | None:
    """The shared secret of ``--secret-file`` (stripped) or ``--secret-env``; None if neither was given."""
    if getattr(args, "secret_file", None):
        try:
            return Path(args.secret_file).read_bytes().strip()
        except OSError as exc:
            raise OSError(f"cannot read the secret file {args.secret_file}: {exc.strerror or exc}") from None
    env = getattr(args, "secret_env", None)
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} (--secret-env) is not set")
        return value.encode()
    return None


def cell_index(text: str) -> int:
    """argparse type of a cell number (u16 on the wire; 0xFFFF means all cells)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a cell number") from None
    if not 0 <= value < 0xFFFF:
        raise argparse.ArgumentTypeError(f"cell {value} is outside 0..65534")
    return value


class StatusLine:
    """One line of progress on stderr, redrawn in place when stderr is a terminal, at most 4 times a second.
    ``show`` returns False when stderr is not a terminal and ``log_every_s`` has passed since the last time
    it did: the caller logs the progress instead (a log line every 10 s rather than a line per update)."""

    def __init__(self, log_every_s: float = 10.0) -> None:
        self.tty = sys.stderr.isatty()
        self.log_every_s = log_every_s
        self.last = 0.0
        self.last_log = time.monotonic()
        self.width = 0

    def show(self, text: str) -> bool:
        now = time.monotonic()
        if not self.tty:
            if now - self.last_log < self.log_every_s:
                return True  # nothing to do this time
            self.last_log = now
            return False
        if now - self.last >= 0.25:
            self.last = now
            sys.stderr.write("\r" + text.ljust(self.width))
            sys.stderr.flush()
            self.width = len(text)
        return True

    def close(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


class Progress:
    """Frames, bytes and rate on stderr: a live line on a terminal, a log line every ``every_s`` else."""

    def __init__(self, label: str, unit: str, every_s: float = 10.0) -> None:
        self._line = StatusLine(every_s)
        self._label = label
        self._unit = unit
        self._start = time.monotonic()

    def update(self, count: int, nbytes: int) -> None:
        rate = count / max(time.monotonic() - self._start, 1e-9)
        text = f"{self._label}: {count} {self._unit}s, {nbytes / 1e6:.2f} MB, {rate:.0f} {self._unit}s/s"
        if not self._line.show(text):
            log.info(self._label, frames=count, bytes=nbytes, frames_per_s=round(rate, 1))

    def close(self) -> None:
        self._line.close()


def write(text: str) -> None:
    """Command output on stdout (logs go to stderr)."""
    sys.stdout.write(text)


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="model directory (model.keras + metadata.json); default: the bundled model"
    )


def model_dir(args: argparse.Namespace) -> Path:
    from hil_server.model.store import BUNDLED_MODEL_DIR

    return Path(args.model) if args.model else BUNDLED_MODEL_DIR


def scenario_command(command: str, body: Callable[[], int]) -> int:
    """Run a command that loads a scenario and a model: a bad scenario prints every issue (file, line, key),
    a missing model or file is one log line; both exit 2."""
    from hil_server.capture.format import CaptureError
    from hil_server.model.store import ModelLoadError
    from hil_server.scenario import ScenarioError

    try:
        return body()
    except ScenarioError as exc:
        for issue in exc.errors:
            write(f"{issue}\n")
        return 2
    except (ModelLoadError, CaptureError, ValueError, OSError) as exc:
        log.error(command, error=str(exc))
        return 2
