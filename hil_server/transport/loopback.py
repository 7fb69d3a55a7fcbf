"""An in-process byte pipe for tests that need a connection but do not test TCP (pymodbus's NullModem).

``connect(server)`` joins a client to a running ``HilServer`` through a pair of in-memory asyncio
transports: the server sees an ordinary connection (its session, reader and writer tasks are the ones TCP
gets), the client gets an ``asyncio.StreamReader``/``StreamWriter`` pair. A ``Manipulator`` sits on the
wire and can split what is written into small chunks, delay them, corrupt a bit, or drop chunks, each
deterministically (every n-th chunk), so a test reproduces exactly the line it wants::

    reader, writer = await connect(server, to_server=Manipulator(split=1))   # the server reads byte by byte

Delivery keeps the order of the bytes (a delay never lets a later chunk overtake an earlier one). There is
no flow control: the pipe accepts every write at once, so a slow reader is never a stuck socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

Connected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_ids = itertools.count(1)


@dataclasses.dataclass
class Manipulator:
    """What happens to the bytes on one direction of the wire. The defaults change nothing."""

    split: int = 0
    """Deliver in chunks of at most this many bytes (0: as written)."""
    delay_s: float = 0.0
    """Each chunk arrives this much later than it was written (order kept)."""
    corrupt_every: int = 0
    """Flip the low bit of the first byte of every n-th chunk (0: never)."""
    drop_every: int = 0
    """Lose every n-th chunk (0: never)."""
    chunks: int = 0
    """Chunks seen so far (what the ``*_every`` counts refer to)."""

    def __call__(self, data: bytes) -> list[bytes]:
        size = self.split or len(data) or 1
        out = []
        for i in range(0, len(data), size):
            chunk = data[i : i + size]
            self.chunks += 1
            if self.drop_every and self.chunks % self.drop_every == 0:
                continue
            if self.corrupt_every and self.chunks % self.corrupt_every == 0:
                chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
            out.append(chunk)
        return out


class _Pipe(asyncio.Transport):
    """One end of the pipe: what is written here is delivered to the other end's protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop, manipulator: Manipulator, name: str) -> None:
        super().__init__()
        self._loop = loop
        self._manipulator = manipulator
        self._name = name
        self._protocol: asyncio.Protocol | None = None
        self.peer: _Pipe | None = None
        self._closing = False
        self._lost = False
        self._due = 0.0

    # -- wiring ---------------------------------------------------------------------------------------------
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("loopback", self._name), "sockname": ("loopback", self._name)}.get(name, default)

    # -- writing --------------------------------------------------------------------------------------------
    def _deliver(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the peer after the manipulator's delay, never before what was written earlier."""
        delay = self._manipulator.delay_s
        if delay <= 0 and self._due <= self._loop.time():
            self._loop.call_soon(call)
            return
        self._due = max(self._due, self._loop.time() + delay)
        self._loop.call_at(self._due, call)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None:
            return
        peer = self.peer
        for chunk in self._manipulator(bytes(data)):
            self._deliver(functools.partial(peer._received, chunk))

    def write_eof(self) -> None:
        if self.peer is not None and not self._closing:
            peer = self.peer
            self._deliver(peer._eof)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.peer is not None:
            self._deliver(self.peer._connection_lost)
        self._loop.call_soon(self._connection_lost)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing

    # -- receiving ------------------------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        if not self._lost and self._protocol is not None:
            self._protocol.data_received(data)

    def _eof(self) -> None:
        if not self._lost and self._protocol is not None:
            self._protocol.eof_received()

    def _connection_lost(self) -> None:
        if not self._lost and self._protocol is not None:
            self._lost = True
            self._closing = True
            self._protocol.connection_lost(None)


async def open_pipe(
    connected: Connected,
    *,
    to_server: Manipulator | None = None,
    to_client: Manipulator | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``connected`` (a server's per-connection coroutine, as ``asyncio.start_server``
    takes): the client end's reader and writer."""
    loop = asyncio.get_running_loop()
    name = f"pipe-{next(_ids)}"
    client_end = _Pipe(loop, to_server or Manipulator(), name)
    server_end = _Pipe(loop, to_client or Manipulator(), name)
    client_end.peer, server_end.peer = server_end, client_end
    server_protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(), connected)
    server_end.set_protocol(server_protocol)
    server_protocol.connection_made(server_end)
    reader = asyncio.StreamReader()
    client_protocol = asyncio.StreamReaderProtocol(reader)
    client_end.set_protocol(client_protocol)
    client_protocol.connection_made(client_end)
    writer = asyncio.StreamWriter(client_end, client_protocol, reader, loop)
    return reader, writer


async def connect(
    server: Any, *, to_server: Manipulator | None = None, to_client: Manipulator | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a started ``HilServer`` in-process (its sessions are the ones TCP clients get)."""
    return await open_pipe(server.accept, to_server=to_server, to_client=to_client)
