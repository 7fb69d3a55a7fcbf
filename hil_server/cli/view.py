"""``eis-hil view HOST PORT``: the live browser view of a server's stream (and ``serve --view``'s helpers).

    eis-hil view 127.0.0.1 7700                          # http://127.0.0.1:8700/, loopback only
    eis-hil view 127.0.0.1 7700 --listen 0.0.0.0:8700 --allow-control

The view is a protocol client of the server (``hil_server.view.server``); the page is served on
``--listen`` (default loopback). Exit codes: 0 on Ctrl-C or a server's orderly BYE, 1 when the server ended
the stream for another reason, 2 when it cannot connect, authenticate, subscribe or listen.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import threading
from typing import IO, TYPE_CHECKING

import protocol as p
from hil_server.cli._common import add_secret_args, read_secret

if TYPE_CHECKING:
    from hil_server.view.server import ViewServer

DEFAULT_LISTEN = ("127.0.0.1", 8700)
EXTRA_HINT = "the view needs the 'view' extra: pip install 'eis-hil[view]' (websockets)"


def listen_arg(text: str) -> tuple[str, int]:
    """argparse type of ``[ADDR:]PORT``: ``8700``, ``0.0.0.0:8700``, ``[::1]:8700`` (no address: loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_LISTEN[0], text
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 address goes in brackets, e.g. [::1]:8700")
    host = host.strip("[]") or DEFAULT_LISTEN[0]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected [ADDR:]PORT with PORT in 0..65535, e.g. 8700 or 127.0.0.1:8700"
        )
    return host, int(port)


def add_view_option(parser: argparse.ArgumentParser) -> None:
    """``serve``'s options for the view served beside the server."""
    parser.add_argument(
        "--view",
        type=listen_arg,
        metavar="[ADDR:]PORT",
        help="also serve the live browser view on this port (loopback unless ADDR is given)",
    )
    _add_allow_control(parser, " (with --view)")


def _add_allow_control(parser: argparse.ArgumentParser, needs: str = "") -> None:
    parser.add_argument(
        "--allow-control",
        action="store_true",
        help=f"let the page pause, resume, seek, inject and clear faults and request spectra{needs} (off by "
        "default: anyone who can reach the page's port could)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="server address")
    parser.add_argument("port", type=server_port, help="server port")
    parser.add_argument(
        "--listen",
        type=listen_arg,
        default=DEFAULT_LISTEN,
        metavar="[ADDR:]PORT",
        help="where the page is served (default 127.0.0.1:8700: this machine only)",
    )
    _add_allow_control(parser)
    parser.add_argument("--name", default="eis-hil-view", help="client name (server logs; part of the MAC)")
    parser.add_argument("--timeout", type=float, default=5.0, help="connect and reply timeout (s)")
    add_secret_args(parser)


def server_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1..65535)")
    return int(text)


def connect_host(bind: str) -> str:
    """The address a client beside a server bound to ``bind`` connects to."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def bind_listen(listen: tuple[str, int], option: str = "--listen") -> socket.socket:
    """The view's listening socket, bound before any other work (an error names ``option``: a port taken,
    an address not of this machine)."""
    host, port = listen
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        # socket.create_server adds " (while attempting to bind on address ('127.0.0.1', 8700))"
        why = str(exc.strerror or exc).split(" (while attempting", 1)[0].lower()
        raise OSError(f"{option} {shown}:{port}: {why}") from None


async def start_view(
    host: str,
    port: int,
    listen: tuple[str, int],
    secret: bytes | None,
    allow_control: bool,
    timeout: float,
    sock: socket.socket | None = None,
) -> ViewServer:
    """A view of the server at ``host``:``port``, listening on ``listen``, on ``sock`` if bound already
    (else bound first: :func:`bind_listen`); ImportError without the ``view`` extra."""
    from hil_server.view.server import ViewServer

    sock = sock or bind_listen(listen)
    try:
        view = await ViewServer.connect(
            host, port, secret=secret, allow_control=allow_control, timeout=timeout
        )
    except BaseException:
        sock.close()
        raise
    try:
        await view.listen(*listen, sock=sock)
    except BaseException:
        await view.stop()
        raise
    return view


def banner(view: ViewServer) -> str:
    controls = "controls on" if view.allow_control else "controls off"
    return f"eis-hil view: {view.url} ({controls})\n"


async def _view(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from hil_server.client.client import ClientError

    endpoint = f"{args.host}:{args.port}"
    try:
        secret = read_secret(args)
        view = await start_view(args.host, args.port, args.listen, secret, args.allow_control, args.timeout)
    except ImportError:
        err.write(f"eis-hil view: {EXTRA_HINT}\n")
        return 2
    except (ClientError, OSError, TimeoutError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {args.timeout:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            detail = "connection refused (is an eis-hil server listening on that port?)"
        where = "" if detail.startswith("--listen") else f"{endpoint}: "
        err.write(f"eis-hil view: {where}{detail}\n")
        return 2
    hello = view.state.hello
    out.write(
        f"{banner(view).rstrip()}; stream {endpoint}: scenario {hello.scenario_id}, "
        f"{hello.cell_count} cell(s); Ctrl-C stops\n"
    )
    out.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(view.ended.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await view.stop()
    if stop.is_set():
        return 0
    bye = view.client.bye
    if bye is not None and bye.reason in (p.ErrorCode.NONE, p.ErrorCode.SHUTDOWN):
        out.write(f"eis-hil view: the server closed the stream: {bye.message}\n")
        return 0
    err.write(f"eis-hil view: the stream ended: {bye.message if bye else 'connection lost without a BYE'}\n")
    return 1


def run(args: argparse.Namespace) -> int:
    from hil_server.cli._loop import run as run_loop

    try:
        return run_loop(_view(args, sys.stdout, sys.stderr), "asyncio")
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed (during connect)
        return 0
