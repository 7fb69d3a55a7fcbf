"""The view's server: a protocol client of the stream whose state is served to browsers.

Upstream it is one more client of the server (``client.HilClient``: handshake, the shared secret, every
cell subscribed, the normal backpressure, so it can never slow the stream for the BMS: a slow client gets
drops, not a slower stream). It folds every frame into a :class:`~hil_server.view.state.ViewState`.

Downstream one port serves HTTP and a WebSocket (``websockets``): ``/`` and its two files from ``static/``,
and ``/ws``, where each page gets a hello, then at most :data:`UPDATE_S`-spaced updates of what changed
(never a queue: a page that reads slowly gets fewer updates). The page may select a cell and, only when the
view was started with ``allow_control``, send control commands, which go upstream as CONTROL frames; the
ACK or NAK goes back to the page. The secret never leaves this process.

Requests are refused (403) when their ``Host`` is not a loopback name while the view listens on a loopback
address (DNS rebinding), and a WebSocket whose ``Origin`` is not the page's own (another site's script
in the same browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

import protocol as p
from hil_server.client.client import ClientError, HilClient
from hil_server.client.control_syntax import ControlSyntaxError, parse_control
from hil_server.client.monitor import reply_text
from hil_server.view.state import PageCursor, ViewState

log = structlog.get_logger(__name__)

UPDATE_S = 0.1
"""The shortest time between two updates of one page (at most 10 a second, however fast the stream)."""
CONTROL_TIMEOUT_S = 5.0
FINAL_UPDATE_S = 1.0
"""When the stream has ended, how long :meth:`ViewServer.stop` waits for the pages to be sent the update
that says so (and the server's BYE) before it closes them."""
CONTROLS_IN_FLIGHT = 8
"""Commands of one page waiting for their answer at most; more are refused by the view."""
CONTROLS = frozenset(
    {
        p.ControlCommand.PAUSE,
        p.ControlCommand.RESUME,
        p.ControlCommand.SEEK,
        p.ControlCommand.INJECT_FAULT,
        p.ControlCommand.CLEAR_FAULT,
        p.ControlCommand.REQUEST_SPECTRUM,
    }
)
"""The commands the page offers; others are refused by the view itself."""
STATIC = Path(__file__).resolve().parent / "static"
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
    "/view.css": ("view.css", "text/css; charset=utf-8"),
}
"""The only paths served besides ``/ws``."""
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
        " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
_LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, without a port) is the loopback."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8700`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class ViewServer:
    """The view of the stream of ``client`` (handshake done, subscribed); :meth:`listen` serves it."""

    def __init__(
        self,
        client: HilClient,
        endpoint: str,
        *,
        allow_control: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if client.hello is None:
            raise ValueError("the client has not completed its handshake")
        self.client = client
        self.state = ViewState(client.hello, endpoint)
        self.allow_control = allow_control
        self.wall = wall
        self.ended = asyncio.Event()
        """Set when the stream ended (the server's BYE or a lost connection)."""
        self._pages: set[asyncio.Event] = set()
        self._no_pages = asyncio.Event()
        self._no_pages.set()
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._files = {path: ((STATIC / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        secret: bytes | None = None,
        allow_control: bool = False,
        name: str = "eis-hil-view",
        timeout: float = 5.0,
    ) -> ViewServer:
        """Connect to the server at ``host``:``port`` and subscribe to everything (raises ClientError,
        OSError or TimeoutError as ``HilClient.connect`` does)."""
        client = await HilClient.connect(host, port, name=name, secret=secret, timeout=timeout)
        try:
            await client.subscribe(timeout=timeout)
        except BaseException:
            await client.close()
            raise
        shown = f"[{host}]" if ":" in host else host
        return cls(client, f"{shown}:{port}", allow_control=allow_control)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the view is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return url_of(self._host, self.port)

    async def listen(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> None:
        """Serve the page on ``host``:``port`` (0: a free port), or on ``sock`` already bound to them, and
        start folding the stream."""
        self._host = host
        self._server = await serve(
            self._page,
            None if sock else host,
            None if sock else port,
            sock=sock,
            process_request=self._http,
            compression=None,
            max_size=4096,
            server_header=None,
        )
        self._spawn(self._consume())
        log.info("view listening", url=self.url, stream=self.state.monitor.endpoint)

    async def stop(self) -> None:
        """Close every page and say BYE upstream. Idempotent. When the stream has ended, each page is first
        sent the update that says so (at most :data:`FINAL_UPDATE_S`)."""
        if self._server is not None:
            if self.ended.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._no_pages.wait(), FINAL_UPDATE_S)
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _wake_pages(self) -> None:
        for wake in self._pages:
            wake.set()

    async def _consume(self) -> None:
        """Every frame of the stream into the state; the pages are woken when the queue is drained."""
        client, state = self.client, self.state
        try:
            while True:
                state.update(await client.next_frame())
                if client.frames.qsize() == 0:
                    seq = client.sequence
                    state.link_counters(
                        client.received, seq.gaps, seq.lost, seq.late, seq.duplicates, len(client.errors)
                    )
                    self._wake_pages()
        except ClientError as exc:
            log.info("view: the stream ended", reason=str(exc))
        finally:
            self.ended.set()
            self._wake_pages()

    # -- HTTP --------------------------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        host = request.headers.get("Host", "")
        if is_loopback(self._host) and not is_loopback(_host_name(host)):
            return connection.respond(HTTPStatus.FORBIDDEN, "this view answers to loopback names only\n")
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"http://{host}":
                log.warning("view: cross-origin WebSocket refused", origin=origin)
                return connection.respond(HTTPStatus.FORBIDDEN, "cross-origin WebSocket refused\n")
            return None
        entry = self._files.get(path)
        if entry is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        body, ctype = entry
        response = connection.respond(HTTPStatus.OK, "")
        headers = response.headers
        del headers["Content-Type"]
        del headers["Content-Length"]
        headers["Content-Type"] = ctype
        headers["Content-Length"] = str(len(body))
        for name, value in HEADERS.items():
            headers[name] = value
        return dataclasses.replace(response, body=body)

    # -- one page ----------------------------------------------------------------------------------------

    async def _page(self, ws: ServerConnection) -> None:
        cursor = PageCursor()
        wake = asyncio.Event()
        wake.set()
        self._pages.add(wake)
        self._no_pages.clear()
        reader = self._spawn(self._page_input(ws, cursor, wake))
        try:
            await ws.send(json.dumps(self.state.hello_message(self.allow_control)))
            while not reader.done():
                await wake.wait()
                wake.clear()
                update = self.state.update_message(cursor, self.wall())
                update["ended"] = self.ended.is_set()
                await ws.send(json.dumps(update, allow_nan=False))
                if update["ended"]:
                    break  # the last update: the page shows the stream ended (and the BYE)
                await asyncio.sleep(UPDATE_S)
        except ConnectionClosed:
            pass
        finally:
            self._pages.discard(wake)
            if not self._pages:
                self._no_pages.set()
            reader.cancel()

    async def _page_input(self, ws: ServerConnection, cursor: PageCursor, wake: asyncio.Event) -> None:
        try:
            async for text in ws:
                try:
                    msg = json.loads(text)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if msg.get("type") == "select":
                    cell = msg.get("cell")
                    if type(cell) is int and 0 <= cell < self.state.cell_count:
                        cursor.select(cell)
                        wake.set()
                elif msg.get("type") == "control":
                    if cursor.in_flight >= CONTROLS_IN_FLIGHT:
                        answer = f"refused: {CONTROLS_IN_FLIGHT} commands are waiting for their answer"
                        cursor.replies.append(_reply(msg, False, answer))
                        wake.set()
                        continue
                    cursor.in_flight += 1
                    self._spawn(self._control(ws, msg, cursor, wake))
        except ConnectionClosed:
            pass
        finally:
            wake.set()  # the sender sees the reader done and ends

    async def _control(
        self, ws: ServerConnection, msg: dict[str, Any], cursor: PageCursor, wake: asyncio.Event
    ) -> None:
        text = str(msg.get("text", ""))[:200]
        try:
            ok, answer = await self._send_control(text)
        finally:
            cursor.in_flight -= 1
        log.info("view: control", text=text, ok=ok, answer=answer, page=str(ws.remote_address))
        cursor.replies.append(_reply(msg, ok, answer))
        wake.set()

    async def _send_control(self, text: str) -> tuple[bool, str]:
        """(ACKed, what to show): the command ``text`` (``eis-hil client --control`` syntax) upstream."""
        if not self.allow_control:
            return False, "controls are off: start the view with --allow-control"
        try:
            control = parse_control(text)
        except ControlSyntaxError as exc:
            return False, exc.problem
        if control.command not in CONTROLS:
            return False, f"{text!r} is not offered by the view"
        try:
            reply = await self.client.control(control, timeout=CONTROL_TIMEOUT_S)
        except ClientError as exc:
            return False, str(exc)
        return isinstance(reply, p.Ack), reply_text(text, reply).strip().removeprefix("control ")


def _reply(msg: dict[str, Any], ok: bool, answer: str) -> dict[str, Any]:
    """The answer to a page's control message ``msg``, with the id the page gave it."""
    return {
        "type": "reply",
        "id": msg.get("id"),
        "text": str(msg.get("text", ""))[:200],
        "ok": ok,
        "answer": answer,
    }
