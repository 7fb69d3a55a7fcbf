"""``eis-hil serial-bridge``: arguments and the run loop (the bridge: ``transport/serial/bridge.py``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

import structlog

import protocol as p
from hil_server.cli._common import ScenarioStartError, add_source_args, read_secret, start_scenario
from hil_server.transport.serial.bridge import (
    EXIT_OK,
    EXIT_PORT_GONE,
    EXIT_USAGE,
    BridgeConfig,
    SerialBridge,
)
from hil_server.transport.serial.budget import BridgeError, OutputFormat
from hil_server.transport.serial.port import Opener, open_serial

if TYPE_CHECKING:
    from hil_server.transport.tcp import HilServer

log = structlog.get_logger(__name__)


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--port", required=True, help="serial device (/dev/ttyUSB0) or pyserial URL (loop://)")
    sp.add_argument("--baud", type=int, default=921600, help="line rate, 8N1 (default 921600)")
    add_source_args(sp, "line")  # --server or --scenario, --speed, --seed, --cells, the secret
    sp.add_argument("--divider", type=int, default=1, help="send every n-th step's states (default 1)")
    sp.add_argument("--format", choices=[f.value for f in OutputFormat], default="protocol")
    sp.add_argument("--name", default="serial-bridge", help="client name upstream")
    sp.add_argument(
        "--eis-interval",
        type=float,
        default=60.0,
        help="with --server: seconds between a cell's spectra, for the budget (default 60)",
    )
    sp.add_argument("--queue-ms", type=float, default=250.0, help="telemetry queued, in line time (250)")
    sp.add_argument(
        "--reopen-timeout", type=float, default=30.0, help="seconds to wait for a lost port (default 30)"
    )
    sp.add_argument("--latency-timer-ms", type=int, default=1, help="FTDI latency timer to set (default 1)")
    sp.add_argument(
        "--no-low-latency", action="store_true", help="leave low_latency and the FTDI latency timer alone"
    )


def run(args: argparse.Namespace) -> int:
    from hil_server.cli._loop import run as run_loop

    try:
        return run_loop(_main(args))
    except (BridgeError, ScenarioStartError) as exc:
        log.error("serial-bridge", error=str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while the model loads, before the signal handlers are installed
        return EXIT_OK


async def _main(args: argparse.Namespace, opener: Opener = open_serial) -> int:
    from hil_server.client.client import ClientError, HilClient

    if args.divider < 1 or args.divider > 65535:
        raise BridgeError(f"--divider {args.divider}: expected 1..65535")
    if args.baud <= 0:
        raise BridgeError(f"--baud {args.baud}: expected a positive line rate, e.g. 115200")
    try:
        secret = read_secret(args)
    except (OSError, ValueError) as exc:
        raise BridgeError(str(exc)) from None
    server: HilServer | None = None
    eis_interval: float | None = args.eis_interval
    sweep = False
    speed = args.speed
    if args.scenario:
        server = await start_scenario(args, secret)
        eis = server.engine.scenario.eis
        eis_interval, sweep = eis.interval_s, eis.mode == "sweep"
        host, port = "127.0.0.1", server.port
    else:
        if speed <= 0:
            raise BridgeError("--speed 0 needs --scenario: the bridge cannot pace someone else's server")
        host, port = args.server
    try:
        try:
            client = await HilClient.connect(host, port, name=args.name, secret=secret)
        except (ClientError, OSError, TimeoutError) as exc:
            raise BridgeError(f"cannot connect to the server at {host}:{port}: {exc}") from exc
        config = BridgeConfig(
            port=args.port,
            baud=args.baud,
            fmt=OutputFormat(args.format),
            cells=tuple(args.cells or ()),
            divider=args.divider,
            speed=speed,
            eis_interval_s=eis_interval,
            eis_sweep=sweep,
            queue_ms=args.queue_ms,
            reopen_timeout_s=args.reopen_timeout,
            low_latency=not args.no_low_latency,
            latency_timer_ms=args.latency_timer_ms,
        )
        try:
            bridge = SerialBridge(client, config, opener=opener, server=server)
            budget = bridge.plan(bridge.default)
            if server is not None and speed <= 0 and budget.line_speed is not None:
                reply = await client.control(p.Control.set_speed(max(1, round(budget.line_speed * 1e6))))
                if not isinstance(reply, p.Ack):
                    raise BridgeError(f"the in-process server refused SET_SPEED: {reply}")
            await client.subscribe(
                bridge.default.mask, bridge.default.cells, bridge.default.divider, bridge.default.eis_mode
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, bridge.stop)
            sys.stderr.write(
                f"eis-hil serial-bridge: {host}:{port} -> {args.port} at {args.baud} baud, "
                f"format {args.format}; Ctrl-C stops\n"
            )
            code = await bridge.run()
        finally:
            await client.close()
        if code == EXIT_PORT_GONE:
            sys.stderr.write(f"eis-hil serial-bridge: {bridge.exit_message}\n")
        return code
    finally:
        if server is not None:
            await server.stop("serial bridge stopping")
