"""Small pieces the command modules share: the shared secret from the command line, a bridge's upstream,
the operating point of instrument files, and a progress line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from hil_server.cli._checks import UsageError
from hil_server.cli._loop import LOOP_CHOICES

if TYPE_CHECKING:
    from hil_server.eis_data import OperatingPoint, SpectrumSet
    from hil_server.transport.tcp import HilServer

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
            secret = Path(args.secret_file).read_bytes().strip()
        except OSError as exc:
            raise OSError(f"cannot read the secret file {args.secret_file}: {exc.strerror or exc}") from None
        if not secret:
            raise UsageError(f"--secret-file {args.secret_file}: the file is empty (an empty key is no key)")
        return secret
    env = getattr(args, "secret_env", None)
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} (--secret-env) is not set")
        if not value.strip():
            raise UsageError(f"environment variable {env} (--secret-env) is empty (an empty key is no key)")
        return value.encode()
    return None


def host_port(text: str) -> tuple[str, int]:
    """argparse type of ``--server HOST:PORT`` (an empty host is the loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--server {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7700")
    if not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--server {text!r}: port {port} outside 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:7700, an IPv6 address in brackets
    return host or "127.0.0.1", int(port)


def add_source_args(parser: argparse.ArgumentParser, medium: str, speed_note: str = "") -> None:
    """The upstream of a bridge (serial-bridge, can-bridge): a running server or a scenario run in-process
    (one required), its speed, seed, the cells streamed and the shared secret. ``medium`` names what paces
    the bridge (line, bus) in the help."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", type=host_port, metavar="HOST:PORT", help="a running eis-hil server")
    src.add_argument("--scenario", metavar="FILE", help="run this scenario in-process")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help=f"with --scenario: simulation speed (0: as fast as the {medium} carries{speed_note}); with "
        f"--server: the server's speed, for the {medium} budget (default 1)",
    )
    parser.add_argument("--seed", type=int, help="with --scenario: seed (default: the scenario's)")
    parser.add_argument("--cells", type=cell_index, nargs="+", help="cells to stream (default: all)")
    add_secret_args(parser)  # for an upstream server that requires it


class ScenarioStartError(Exception):
    """``start_scenario`` could not start the scenario: one line naming the file and why."""


async def start_scenario(args: argparse.Namespace, secret: bytes | None, *, listen: bool = True) -> HilServer:
    """The server of a bridge's ``--scenario`` (``add_source_args``): on a free loopback port, at ``--speed``
    (0 starts unpaced; the bridge then sets the speed its medium carries). ``listen`` False: no port, the
    bridge attaches its medium as the server's own transport."""
    from hil_server.app import start_server
    from hil_server.model.store import ModelLoadError
    from hil_server.scenario import ScenarioError

    try:
        return await start_server(
            args.scenario,
            seed=args.seed,
            listen=listen,
            host="127.0.0.1",
            port=0,
            speed=max(args.speed, 0.0),
            secret=secret,
        )
    except ScenarioError as exc:
        raise ScenarioStartError(
            f"scenario {args.scenario}: " + "; ".join(str(i) for i in exc.errors)
        ) from exc
    except (ModelLoadError, OSError, ValueError) as exc:
        raise ScenarioStartError(f"scenario {args.scenario}: {exc}") from exc


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
    """Run a command that loads a scenario and a model: a bad scenario prints every issue (file, line, key)
    on stderr, one line each; a missing model or file is one log line; both exit 2."""
    from hil_server.capture.format import CaptureError
    from hil_server.model.store import ModelLoadError
    from hil_server.scenario import ScenarioError

    try:
        return body()
    except ScenarioError as exc:  # errors, on stderr: stdout is the command's output (validate's report)
        for issue in exc.errors:
            sys.stderr.write(f"eis-hil {command}: {issue}\n")
        return 2
    except (ModelLoadError, CaptureError, ValueError, OSError) as exc:
        log.error(command, error=str(exc))
        return 2


def add_point_arguments(parser: argparse.ArgumentParser) -> None:
    """--soc, --temp-c, --soh, --cell-id: labels of instrument files (over their sidecar <file>.yaml), for
    the commands that read spectra (convert, train --extra, calibrate --spectra)."""
    group = parser.add_argument_group(
        "operating point of instrument files (over a sidecar <file>.yaml; our generic CSV has its own)"
    )
    group.add_argument("--soc", type=_fraction, help="state of charge, 0..1")
    group.add_argument("--temp-c", type=_celsius, help="cell temperature in degC")
    group.add_argument("--soh", type=_fraction, help="state of health, 0..1")
    group.add_argument("--cell-id", help="cell name (default: the file name)")


def point_from_args(args: argparse.Namespace) -> OperatingPoint:
    from hil_server.eis_data import OperatingPoint

    return OperatingPoint(
        getattr(args, "soc", None),
        getattr(args, "temp_c", None),
        getattr(args, "soh", None),
        getattr(args, "cell_id", None),
    )


def read_spectra_arg(path: str, args: argparse.Namespace) -> SpectrumSet:
    """A spectra file named on the command line (generic CSV or an instrument file labelled by the options
    of ``add_point_arguments``)."""
    from hil_server.eis_data import read_spectra_file

    return read_spectra_file(path, point=point_from_args(args))


def _celsius(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not -100.0 <= value <= 150.0:
        raise argparse.ArgumentTypeError(f"{text}: expected degrees Celsius in -100..150 (Kelvin?)")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        hint = " (percent? give a fraction, e.g. 0.5 for 50 %)" if 1.0 < value <= 100.0 else ""
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction in 0..1{hint}")
    return value
