"""``eis-hil serial-bridge``: arguments and the run loop. With ``--scenario`` the port is the server's own
transport (``transport/serial/served.py``), with ``--server`` a client's bridge (``.../bridge.py``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys

import structlog

from hil_server.cli._common import ScenarioStartError, add_source_args, read_secret, start_scenario
from hil_server.transport.serial.bridge import SerialBridge
from hil_server.transport.serial.budget import BridgeError, OutputFormat
from hil_server.transport.serial.line import EXIT_OK, EXIT_PORT_GONE, EXIT_USAGE, BridgeConfig, SerialLine
from hil_server.transport.serial.port import Opener, open_serial
from hil_server.transport.serial.served import SerialTransport

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
    if args.divider < 1 or args.divider > 65535:
        raise BridgeError(f"--divider {args.divider}: expected 1..65535")
    if args.baud <= 0:
        raise BridgeError(f"--baud {args.baud}: expected a positive line rate, e.g. 115200")
    try:
        secret = read_secret(args)
    except (OSError, ValueError) as exc:
        raise BridgeError(str(exc)) from None
    if args.scenario and secret is not None:
        raise BridgeError(
            "--secret-file/--secret-env authenticate upstream with --server; with --scenario there is no "
            "upstream, and the line itself has no authentication (SECURITY.md)"
        )
    if not args.scenario and args.speed <= 0:
        raise BridgeError("--speed 0 needs --scenario: the bridge cannot pace someone else's server")
    config = BridgeConfig(
        port=args.port,
        baud=args.baud,
        fmt=OutputFormat(args.format),
        cells=tuple(args.cells or ()),
        divider=args.divider,
        speed=args.speed,
        eis_interval_s=args.eis_interval,
        queue_ms=args.queue_ms,
        reopen_timeout_s=args.reopen_timeout,
        low_latency=not args.no_low_latency,
        latency_timer_ms=args.latency_timer_ms,
    )
    if args.scenario:
        return await _serve_scenario(args, config, opener)
    return await _bridge_server(args, config, secret, opener)


async def _serve_scenario(args: argparse.Namespace, config: BridgeConfig, opener: Opener) -> int:
    """``--scenario``: the port is the transport of a server run in-process (no TCP port, no client)."""
    server = await start_scenario(args, None, listen=False)
    try:
        eis = server.engine.scenario.eis
        config = dataclasses.replace(config, eis_interval_s=eis.interval_s, eis_sweep=eis.mode == "sweep")
        line = SerialTransport(server, config, opener=opener)
        return await _run(line, f"scenario {args.scenario}", args)
    finally:
        await server.stop("serial bridge stopping")


async def _bridge_server(
    args: argparse.Namespace, config: BridgeConfig, secret: bytes | None, opener: Opener
) -> int:
    """``--server HOST:PORT``: the bridge is an ordinary client of a running server."""
    from hil_server.client.client import ClientError, HilClient

    host, port = args.server
    try:
        client = await HilClient.connect(host, port, name=args.name, secret=secret)
    except (ClientError, OSError, TimeoutError) as exc:
        raise BridgeError(f"cannot connect to the server at {host}:{port}: {exc}") from exc
    try:
        bridge = SerialBridge(client, config, opener=opener)
        d = bridge.default
        await client.subscribe(d.mask, d.cells, d.divider, d.eis_mode)
        return await _run(bridge, f"{host}:{port}", args)
    finally:
        await client.close()


async def _run(line: SerialLine, source: str, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, line.stop)
    try:
        sys.stderr.write(
            f"eis-hil serial-bridge: {source} -> {args.port} at {args.baud} baud, "
            f"format {args.format}; Ctrl-C stops\n"
        )
        code = await line.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if code == EXIT_PORT_GONE:
        sys.stderr.write(f"eis-hil serial-bridge: {line.exit_message}\n")
    return code
