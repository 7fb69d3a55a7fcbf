"""``eis-hil serve`` and ``eis-hil demo``, and ``serve_until_stopped``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hil_server.cli._common import (
    add_event_loop_arg,
    add_listen_args,
    add_model_arg,
    model_dir,
    read_secret,
    scenario_command,
    write,
)
from hil_server.cli._loop import run as run_loop
from hil_server.cli.protocol_demo import run_demo
from hil_server.cli.view import EXTRA_HINT, add_view_option, bind_listen, connect_host, start_view
from hil_server.cli.view import banner as view_banner
from hil_server.client.client import ClientError
from hil_server.client.text import describe

if TYPE_CHECKING:
    from hil_server.transport.tcp import HilServer
    from hil_server.view.server import ViewServer

log = structlog.get_logger(__name__)


DEFAULT_SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "us06_25c.yaml"


async def _serve(args: argparse.Namespace, scenario: Path, demo_seconds: float | None = None) -> int:
    from hil_server.app import start_server

    if getattr(args, "allow_control", False) and getattr(args, "view", None) is None:
        raise ValueError("--allow-control is for the page of --view: give --view [ADDR:]PORT too")
    secret = read_secret(args)
    # the view's port first: one taken is said before the server starts (and records)
    view_sock = bind_listen(args.view, "--view") if getattr(args, "view", None) is not None else None
    try:
        server = await start_server(
            scenario,
            model_dir=model_dir(args),
            seed=args.seed,
            host=args.host,
            port=args.port,
            speed=args.speed,
            secret=secret,
            max_clients=args.max_clients,
            record=getattr(args, "record", None),
        )
    except BaseException:
        if view_sock is not None:
            view_sock.close()
        raise
    tasks: list[asyncio.Task[Any]] = []
    view = None if view_sock is None else await _view_beside(server, args, secret, view_sock)
    if demo_seconds is not None:
        # About four state lines per second of wall time, whatever the speed.
        divider = max(1, round(args.speed / server.engine.dt_s / 4)) if args.speed > 0 else 100
        tasks.append(asyncio.create_task(_demo_client(server.port, secret, demo_seconds, divider)))
    banner = (
        f"eis-hil serving {scenario.name} on {args.host}:{server.port} at {args.speed:g}x; Ctrl-C stops\n"
    )
    if view is None:
        return await serve_until_stopped(server, banner, tasks)
    try:
        return await serve_until_stopped(server, banner + view_banner(view), tasks)
    finally:
        await view.stop()


async def _view_beside(
    server: HilServer, args: argparse.Namespace, secret: bytes | None, sock: socket.socket
) -> ViewServer:
    """``serve --view``: the browser view on ``sock`` (bound before the server started), a client of this
    server like any other; the server is stopped when the view cannot start (the extra is missing)."""
    try:
        return await start_view(
            connect_host(args.host), server.port, args.view, secret, args.allow_control, 5.0, sock
        )
    except ImportError:
        sock.close()
        await server.stop()
        raise ValueError(EXTRA_HINT) from None
    except (ClientError, TimeoutError) as exc:
        await server.stop()
        raise ValueError(f"--view: the view could not join the stream: {exc}") from None
    except BaseException:
        await server.stop()
        raise


async def serve_until_stopped(
    server: HilServer, banner: str, tasks: list[asyncio.Task[Any]] | None = None
) -> int:
    """Run a started server until SIGINT/SIGTERM or until one of ``tasks`` ends; then BYE to every client,
    recording flushed. A failing task (the demo client) is raised, so it cannot pass for a clean run."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(stop.wait()), *(tasks or [])]
    write(banner)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    await server.stop()
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return 0


async def _demo_client(port: int, secret: bytes | None, seconds: float, divider: int) -> None:
    from hil_server.client.client import HilClient

    client = await HilClient.connect("127.0.0.1", port, name="demo-bms", secret=secret)
    assert client.hello is not None
    hello = client.hello
    write(
        f"client connected: model {hello.model_id} ({hello.model_hash.hex()[:12]}..), scenario "
        f"{hello.scenario_id}, {hello.cell_count} cell(s), {hello.freq_hz.size} frequencies\n"
    )
    await client.subscribe(divider=divider)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while (left := end - loop.time()) > 0:
            try:
                frame = await client.next_frame(timeout=left)
            except TimeoutError:
                break
            write(describe(frame) + "\n")
    finally:
        bad = len(client.errors)
        write(f"client: {client.received} frames, {client.gaps} sequence gaps, {bad} bad frames\n")
        await client.close()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        serving = _serve(args, Path(args.scenario))
        return scenario_command("serve", lambda: run_loop(serving, args.event_loop))
    except KeyboardInterrupt:  # Ctrl-C while the model loads, before the signal handlers are installed
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.protocol_only:
        result = run_demo(write, seconds=int(args.seconds), cells=args.cells)
        return 0 if result.intact_frames_lost == 0 else 1
    args.host, args.port, args.seed, args.max_clients = "127.0.0.1", 0, None, 8
    try:
        return scenario_command(
            "demo",
            lambda: run_loop(_serve(args, Path(args.scenario), demo_seconds=args.seconds), args.event_loop),
        )
    except KeyboardInterrupt:
        return 0


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    add_model_arg(demo)
    demo.add_argument("--scenario", default=str(DEFAULT_SCENARIO), help="scenario (default: US06 at 25 C)")
    demo.add_argument("--seconds", type=float, default=20, help="how long the client prints (default 20 s)")
    demo.add_argument("--speed", type=float, default=60.0, help="simulation speed (default 60x real time)")
    demo.add_argument("--protocol-only", action="store_true", help="the protocol loopback demo instead")
    demo.add_argument("--cells", type=int, default=4, help="cells (protocol-only demo)")
    add_event_loop_arg(demo)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    add_model_arg(serve)
    serve.add_argument("scenario", help="scenario YAML")
    add_listen_args(serve, "1 = real time, N = N times faster, 0 = as fast as the slowest client reads")
    serve.add_argument("--seed", type=int, help="seed (default: the scenario's)")
    serve.add_argument(
        "--record",
        metavar="FILE",
        help="also record the whole stream (all cells, all kinds) to a capture file",
    )
    add_view_option(serve)


GROUP = {"demo": (add_demo_arguments, cmd_demo), "serve": (add_serve_arguments, cmd_serve)}
