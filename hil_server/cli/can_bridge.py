"""``eis-hil can-bridge``: the stream's cell states as CAN frames defined by a DBC, on any python-can bus.

    eis-hil can-bridge --interface socketcan --channel can0 --bitrate 500000 \\
        --dbc foxbms.dbc --mapping foxbms --scenario scenarios/fault_showcase.yaml --log run.blf

Upstream, like ``serial-bridge``: a running server (``--server HOST:PORT``) or a scenario run in-process
(``--scenario``). The bus load is computed from the DBC and the mapping's periods before anything starts:
a stream that does not fit is decimated (periods multiplied) or, with ``--overload refuse``, refused.
Control back from the BMS over CAN is out of scope: the bridge only sends.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

import protocol as p
from hil_server.cli._common import ScenarioStartError, add_source_args, read_secret, start_scenario

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_UPSTREAM = 1
EXIT_USAGE = 2
LOG_SUFFIXES = (".log", ".asc", ".blf")


class CanBridgeError(Exception):
    """Bad configuration found before the bridge starts: one line saying what and why."""


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dbc", required=True, help="the BMS's CAN database (.dbc, .arxml, .kcd, .sym)")
    sp.add_argument(
        "--mapping", required=True, help="mapping YAML (stream fields -> DBC signals), or 'foxbms' (shipped)"
    )
    sp.add_argument("--interface", default="socketcan", help="python-can interface (socketcan, pcan, ...)")
    sp.add_argument("--channel", help="interface channel (can0, PCAN_USBBUS1, ...)")
    sp.add_argument("--bitrate", type=int, default=500_000, help="nominal bitrate in bit/s (default 500000)")
    sp.add_argument("--data-bitrate", type=int, help="CAN FD data-phase bitrate (FD messages of the DBC)")
    # --server or --scenario, --speed, --seed, --cells, the secret
    add_source_args(sp, "bus", speed_note="; unpaced on the virtual interface")
    sp.add_argument("--log", metavar="FILE", help="also write the frames sent: candump .log, .asc or .blf")
    sp.add_argument("--until", type=float, metavar="S", help="stop after this many simulated seconds")
    sp.add_argument(
        "--max-load", type=float, default=0.7, help="bus share the stream may take, 0..1 (default 0.7)"
    )
    sp.add_argument(
        "--overload",
        choices=("decimate", "refuse"),
        default="decimate",
        help="a stream over --max-load: multiply the periods until it fits (default) or refuse to start",
    )
    sp.add_argument("--name", default="can-bridge", help="client name upstream")


def run(args: argparse.Namespace) -> int:
    from hil_server.cli._loop import run as run_loop

    try:
        return run_loop(_main(args))
    except (CanBridgeError, ScenarioStartError) as exc:
        log.error("can-bridge", error=str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _check_args(args: argparse.Namespace) -> None:
    if args.bitrate <= 0:
        raise CanBridgeError(f"--bitrate {args.bitrate}: expected a positive bitrate, e.g. 500000")
    if args.data_bitrate is not None and args.data_bitrate <= 0:
        raise CanBridgeError(f"--data-bitrate {args.data_bitrate}: expected a positive bitrate")
    if not 0 < args.max_load <= 1:
        raise CanBridgeError(f"--max-load {args.max_load:g}: expected a share in (0, 1]")
    if args.until is not None and args.until <= 0:
        raise CanBridgeError(f"--until {args.until:g}: expected simulated seconds > 0")
    if args.speed < 0:
        raise CanBridgeError(f"--speed {args.speed:g}: expected >= 0")
    if args.server and args.speed <= 0:
        raise CanBridgeError("--speed 0 needs --scenario: the bridge cannot pace someone else's server")
    if args.log and Path(args.log).suffix.lower() not in LOG_SUFFIXES:
        raise CanBridgeError(
            f"--log {args.log}: expected a {', '.join(LOG_SUFFIXES)} file (python-can formats)"
        )


def _load_dbc(path: str) -> Any:
    import cantools

    try:
        return cantools.database.load_file(path)
    except OSError as exc:
        raise CanBridgeError(f"--dbc {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # cantools raises ParseError, UnsupportedDatabaseFormatError, ValueError...
        raise CanBridgeError(f"--dbc {path}: not a CAN database cantools reads: {exc}") from None


def _fault_signals(server: Any) -> dict[int, str]:
    """fault_id -> measured signal of the scenario's measurement faults (the engine numbers the scenario's
    faults from 1 in file order); empty for a server we did not start."""
    if server is None:
        return {}
    faults = server.engine.scenario.faults
    return {
        i + 1: str(f.params.get("signal", "impedance")) for i, f in enumerate(faults) if 0x20 <= f.kind < 0x40
    }


async def _main(args: argparse.Namespace) -> int:
    import can

    from hil_server.client.client import ClientError, HilClient
    from hil_server.transport.can.bridge import CanEncoder, log_channel, open_bus, run_bridge
    from hil_server.transport.can.budget import BudgetError, plan_bus
    from hil_server.transport.can.mapping import MappingError, bind, load_mapping

    _check_args(args)
    db = _load_dbc(args.dbc)
    try:
        spec = load_mapping(args.mapping)
    except MappingError as exc:
        raise CanBridgeError(f"mapping: {exc}") from None
    try:
        secret = read_secret(args)
    except (OSError, ValueError) as exc:
        raise CanBridgeError(str(exc)) from None
    writer: can.Listener | None = None
    if args.log:  # an unwritable log is found before anything starts
        try:
            writer = can.Logger(args.log)
        except (OSError, ValueError) as exc:
            raise CanBridgeError(f"--log {args.log}: {exc}") from None
    server = None
    bus = None
    client = None
    ran = False
    try:
        if args.scenario:
            server = await start_scenario(args, secret)
            host, port = "127.0.0.1", server.port
        else:
            host, port = args.server
        try:
            client = await HilClient.connect(host, port, name=args.name, secret=secret)
            mask = p.SubscribeMask.CELL_STATES | p.SubscribeMask.FAULT_EVENT
            n = await client.subscribe(mask, tuple(args.cells or ()))
        except (ClientError, OSError, TimeoutError) as exc:
            raise CanBridgeError(f"cannot stream from the server at {host}:{port}: {exc}") from exc
        cells = list(args.cells) if args.cells else list(range(n))
        try:
            plans = bind(spec, db, cells)
        except MappingError as exc:
            raise CanBridgeError(f"mapping: {exc}") from None
        virtual = args.interface == "virtual"
        try:
            budget = plan_bus(
                plans,
                args.bitrate,
                data_bitrate=args.data_bitrate,
                speed=0.0 if args.speed <= 0 and not virtual else max(args.speed, 1e-9),
                max_load=args.max_load,
                decimate=args.overload == "decimate",
            )
        except BudgetError as exc:
            raise CanBridgeError(str(exc)) from None
        if args.speed <= 0 and virtual:
            sys.stderr.write("eis-hil can-bridge: speed 0 on the virtual bus: unpaced, no bus budget\n")
        else:
            sys.stderr.write(f"eis-hil can-bridge: {budget.describe()}\n")
        if budget.decimation > 1:
            log.warning("bus overload: decimating", factor=budget.decimation, load=round(budget.load, 3))
        if server is not None and budget.bus_speed is not None:
            reply = await client.control(p.Control.set_speed(max(1, round(budget.bus_speed * 1e6))))
            if not isinstance(reply, p.Ack):
                raise CanBridgeError(f"the in-process server refused SET_SPEED: {reply}")
        fd = any(plan.message.is_fd for plan in plans)
        try:
            bus = open_bus(args.interface, args.channel, args.bitrate, args.data_bitrate, fd)
        except ValueError as exc:
            raise CanBridgeError(str(exc)) from None
        channel = log_channel(args.channel)
        encoder = CanEncoder(plans, cells, budget.decimation, channel, _fault_signals(server))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sys.stderr.write(
            f"eis-hil can-bridge: {host}:{port} -> {args.interface} {args.channel or ''} "
            f"({len(cells)} cells, {', '.join(plan.name for plan in plans)}); send only, Ctrl-C stops\n"
        )
        ran = True
        result = await run_bridge(
            client,
            bus,
            encoder,
            until_us=None if args.until is None else round(args.until * 1e6),
            on_frame=writer,
            stop=stop,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("can-bridge done", reason=result.message, **vars(result.stats))
        if result.code != EXIT_OK:
            sys.stderr.write(f"eis-hil can-bridge: {result.message}\n")
        return EXIT_UPSTREAM if result.code else EXIT_OK
    finally:
        if client is not None:
            await client.close()
        if server is not None:
            await server.stop("can bridge stopping")
        if bus is not None:
            bus.shutdown()
        if writer is not None:
            writer.stop()
            if not ran:  # refused before anything was sent: leave no empty log behind
                Path(args.log).unlink(missing_ok=True)
