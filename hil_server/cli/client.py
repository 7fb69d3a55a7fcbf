"""The mock BMS: ``eis-hil client`` and ``tools/mock_bms.py``.

    eis-hil client 127.0.0.1 7700                         # live table on a terminal, one line per frame else
    eis-hil client 127.0.0.1 7700 --out run.jsonl --seconds 60
    eis-hil client 127.0.0.1 7700 --control pause seek=120 resume --count 0

It connects, subscribes, and checks what arrives: every frame's CRCs (the decoder rejects bad ones and they
are counted), sequence continuity (gaps and the number of frames they hide), and the server's heartbeats
(lateness p50/p99/max of its sends, the frames it dropped for us, the simulation state). Three outputs:

- ``--table`` (default on a terminal): a table redrawn in place at most 4 times a second, one row per cell.
  The table is a pure function of a :class:`MonitorState` (:func:`render_table`), so it is tested without a
  terminal.
- ``--lines`` (default otherwise): one line per frame (``client.text.describe``).
- ``--out FILE.jsonl``: every frame as a JSON line with its receive time (``t_rx``, Unix seconds).

``--control`` sends commands once connected (:func:`parse_control` lists the forms) and prints each ACK or
NAK. Exit codes: 0 clean stop (Ctrl-C, ``--count``, ``--seconds``, server BYE with SHUTDOWN or a normal
close), 1 a command was NAKed, the server ended the session for another reason, or ``--strict`` and a gap
was seen, 2 cannot connect, authenticate or subscribe, or the connection was lost without a BYE.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

import structlog

import protocol as p
from hil_server.cli._common import add_secret_args, read_secret
from hil_server.client.client import ClientError
from hil_server.client.control_syntax import CONTROL_FORMS, EIS_MODES, MASK_NAMES, control_arg, parse_mask
from hil_server.client.monitor import (
    MonitorClient,
    MonitorState,
    error_json,
    frame_json,
    render_table,
    reply_text,
    summary_text,
)
from hil_server.client.text import describe, describe_message

REDRAW_S = 0.25
"""The table is redrawn at most this often (4 Hz)."""
_U16_MAX = 0xFFFF

Mode = Literal["table", "lines", "out"]

log = structlog.get_logger(__name__)


class _Screen:
    """Redraws the table in place with ANSI codes, at most every ``REDRAW_S`` seconds of ``clock``."""

    def __init__(self, out: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.last = -math.inf
        self.started = False

    def draw(self, state: MonitorState, force: bool = False) -> bool:
        now = self.clock()
        if not force and now - self.last < REDRAW_S:
            return False
        self.last = now
        size = shutil.get_terminal_size()
        lines = render_table(state, size.columns - 1, size.lines - 1)
        prefix = "\x1b[2J\x1b[H" if not self.started else "\x1b[H"
        self.started = True
        self.out.write(prefix + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        self.out.flush()
        return True


@dataclasses.dataclass
class _Outcome:
    code: int = 0
    message: str = ""


async def monitor(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """The ``client`` command on the running loop. ``out``/``err``: default sys.stdout/sys.stderr at call."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        secret = read_secret(args)
    except (OSError, ValueError) as exc:
        err.write(f"eis-hil client: {exc}\n")
        return 2
    endpoint = f"{args.host}:{args.port}"
    try:
        client = await MonitorClient.connect(
            args.host, args.port, name=args.name, secret=secret, timeout=args.timeout
        )
    except (ClientError, OSError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {args.timeout:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            detail = "connection refused (is an eis-hil server listening on that port?)"
        err.write(f"eis-hil client: cannot connect to {endpoint}: {detail}\n")
        log.debug("connect failed", endpoint=endpoint, error=repr(exc))
        return 2
    assert isinstance(client, MonitorClient)
    assert client.hello is not None
    hello = client.hello
    state = MonitorState.from_hello(hello, endpoint)
    mode: Mode = (
        "out" if args.out else ("table" if args.table or (not args.lines and out.isatty()) else "lines")
    )
    screen = _Screen(out) if mode == "table" else None
    controls: list[tuple[str, p.Control]] = args.control or []
    streaming = not (controls and args.count == 0)
    started = time.monotonic()
    outcome = _Outcome()
    stop = asyncio.Event()
    signals = _install_signal_handlers(stop)
    jsonl: IO[str] | None = None
    try:
        if args.out:
            try:
                jsonl = Path(args.out).open("w", encoding="utf-8")  # noqa: SIM115 - closed in finally
            except OSError as exc:
                err.write(f"eis-hil client: cannot write {args.out}: {exc.strerror or exc}\n")
                return 2
            if client.hello_frame is not None:
                jsonl.write(frame_json(client.hello_frame[1], client.hello_frame[0]) + "\n")
        if mode != "table":
            out.write(
                f"connected to {endpoint}: scenario {hello.scenario_id}, {hello.cell_count} cell(s), "
                f"model {hello.model_id}, server {hello.server_version}\n"
            )
        if streaming:
            try:
                state.subscribed = await client.subscribe(
                    mask=args.mask,
                    cells=tuple(args.cells or ()),
                    divider=args.divider,
                    eis_mode=args.eis_mode,
                )
            except ClientError as exc:
                err.write(f"eis-hil client: {endpoint}: {exc}\n")
                return 2
            if mode != "table":
                out.write(f"subscribed: {state.subscribed} cell(s)\n")
        for label, control in controls:
            try:
                reply = await client.control(control, timeout=args.timeout)
            except ClientError as exc:
                err.write(f"eis-hil client: {endpoint}: control {label}: {exc}\n")
                return 2
            if isinstance(reply, p.Nak):
                outcome.code = 1
            if screen is None:
                out.write(reply_text(label, reply))
            else:  # the table clears the screen: the answers go into its header
                state.notes.append(reply_text(label, reply).rstrip("\n"))
        if streaming:
            await _consume(client, state, args, mode, out, jsonl, screen, stop, outcome)
    finally:
        _remove_signal_handlers(signals)
        await client.close()
        if jsonl is not None:
            if not streaming:
                _drain_replies(client, jsonl)  # the replies of --control ... --count 0
            jsonl.close()
        _sync_counters(state, client)
        if screen is not None:
            screen.draw(state, force=True)
        if outcome.message:
            err.write(f"eis-hil client: {outcome.message}\n")
        out.write(summary_text(state, time.monotonic() - started))
        out.flush()
    if args.strict and (state.lost or state.duplicates):
        return max(outcome.code, 1)
    return outcome.code


def _drain_replies(client: MonitorClient, jsonl: IO[str]) -> None:
    while client.frames.qsize():
        frame = client.take(client.frames.get_nowait())
        if frame is None:
            return
        jsonl.write(frame_json(frame, client.last_rx_wall) + "\n")


def _install_signal_handlers(stop: asyncio.Event) -> list[signal.Signals]:
    """Ctrl-C and SIGTERM end the stream cleanly (summary, exit 0); only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return []
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - platforms without it
            continue
        installed.append(sig)
    return installed


def _remove_signal_handlers(signals: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.remove_signal_handler(sig)


def _sync_counters(state: MonitorState, client: MonitorClient) -> None:
    state.frames = client.received
    state.gaps = client.seq.gaps
    state.lost = client.seq.lost
    state.late = client.seq.late
    state.duplicates = client.seq.duplicates
    state.bad_frames = len(client.errors)


async def _consume(
    client: MonitorClient,
    state: MonitorState,
    args: argparse.Namespace,
    mode: Mode,
    out: IO[str],
    jsonl: IO[str] | None,
    screen: _Screen | None,
    stop: asyncio.Event,
    outcome: _Outcome,
) -> None:
    """Read frames until Ctrl-C, ``--count``, ``--seconds`` or the server's BYE; write each as ``mode`` says
    and fold it into ``state``. Replies to our own requests (ACK/NAK) go to the JSON lines and the state,
    but not to ``--lines`` (they were reported as "subscribed" and "control ..." lines)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.seconds if args.seconds is not None else math.inf
    errors_done = 0
    counted = 0
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set() and (args.count is None or counted < args.count):
            left = deadline - loop.time()
            if left <= 0:
                return
            if client.frames.qsize():
                item = client.frames.get_nowait()
            else:
                # Wait for a frame, Ctrl-C, the deadline, or the next redraw of the table.
                timeout = min(left, REDRAW_S) if screen else left
                getter = asyncio.ensure_future(client.frames.get())
                done, _ = await asyncio.wait(
                    {getter, stop_wait},
                    timeout=None if math.isinf(timeout) else timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter not in done:
                    getter.cancel()  # a cancelled Queue.get leaves the queue as it was
                    if screen:
                        _sync_counters(state, client)
                        screen.draw(state)
                    continue
                item = getter.result()
            frame = client.take(item)
            if frame is None:
                outcome.code = max(outcome.code, 2)
                outcome.message = f"connection to {state.endpoint} lost without a BYE"
                return
            msg = frame.message
            state.update(frame)
            reply = isinstance(msg, p.Ack | p.Nak)
            new_errors = client.errors[errors_done:]
            errors_done += len(new_errors)
            for error in new_errors:
                if jsonl is not None:
                    jsonl.write(error_json(error, client.last_rx_wall) + "\n")
                elif mode == "lines":
                    out.write(describe(error) + "\n")
            if jsonl is not None:
                jsonl.write(frame_json(frame, client.last_rx_wall) + "\n")
            elif mode == "lines" and not reply:
                out.write(describe(frame) + "\n")
            elif screen is not None:
                _sync_counters(state, client)
                screen.draw(state)
            if not reply:
                counted += 1
            if isinstance(msg, p.Bye):
                if msg.reason not in (p.ErrorCode.NONE, p.ErrorCode.SHUTDOWN):
                    outcome.code = max(outcome.code, 1)
                    outcome.message = f"the server ended the session: {describe_message(msg)}"
                return
    finally:
        stop_wait.cancel()


# -- command line -----------------------------------------------------------------------------------------


def _labelled_control(text: str) -> tuple[str, p.Control]:
    return text, control_arg(text)


def _eis_mode_arg(text: str) -> int:
    if text not in EIS_MODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(EIS_MODES)}")
    return int(EIS_MODES[text])


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``client`` arguments, shared by ``eis-hil client`` and ``tools/mock_bms.py``."""
    parser.add_argument("host", help="server address")
    parser.add_argument("port", type=int, help="server port")
    parser.add_argument("--name", default="eis-hil-client", help="client name (server logs; part of the MAC)")
    parser.add_argument(
        "--cells", type=_bounded_int(0, _U16_MAX), nargs="+", help="cells to subscribe (default all)"
    )
    parser.add_argument(
        "--divider",
        type=_bounded_int(1, _U16_MAX),
        default=1,
        help="every n-th simulation step's cell states",
    )
    parser.add_argument(
        "--eis-mode",
        type=_eis_mode_arg,
        default=int(p.EisMode.SCENARIO_DEFAULT),
        metavar="default|instant|sweep",
        help="spectra whole (instant) or point by point at an instrument's pace (sweep); "
        "default: the scenario's",
    )
    parser.add_argument(
        "--mask",
        type=parse_mask,
        default=int(p.SubscribeMask.ALL),
        metavar="STREAMS",
        help=f"comma-separated streams to subscribe: {', '.join(MASK_NAMES)} (default all)",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument(
        "--table", action="store_true", help="live table redrawn in place (default on a terminal)"
    )
    out.add_argument("--lines", action="store_true", help="one line per frame (default when not a terminal)")
    out.add_argument("--out", metavar="FILE.jsonl", help="every frame as a JSON line with its receive time")
    parser.add_argument(
        "--count", type=_positive_int, help="stop after this many frames (ACK/NAK not counted)"
    )
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--control",
        type=_labelled_control,
        nargs="+",
        action="extend",
        metavar="CMD",
        help=f"commands to send once connected: {CONTROL_FORMS.replace('%', '%%')}. "
        "With --count 0: send them and exit (exit 1 if one was refused)",
    )
    add_secret_args(parser)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if a frame was lost (a sequence gap never filled) or duplicated",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="connect and reply timeout, s (default 5)")


def run(args: argparse.Namespace) -> int:
    from hil_server.cli._loop import run as run_loop

    try:
        return run_loop(monitor(args), "asyncio")
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed (during connect)
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eis-hil client", description="Mock BMS: connect to an eis-hil server and check what arrives."
    )
    parser.add_argument("--log-json", action="store_true", help="logs as JSON lines")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hil_server.cli._logging import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    return run(args)
