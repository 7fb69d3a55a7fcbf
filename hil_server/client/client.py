"""An asyncio client of the eis-hil protocol: the mock BMS of the tests, ``eis-hil client`` and users' own
loopback tests.

    client = await HilClient.connect("127.0.0.1", 7700, name="ci", secret=None)
    await client.subscribe()                     # everything, every cell
    frame = await client.next_frame(timeout=5)   # CELL_STATES, EIS_SPECTRUM, HEARTBEAT, ...
    reply = await client.control(p.Control.seek(60_000_000))   # Ack or Nak, matched by seq
    await client.close()

The client counts decoder errors and gaps in the server's sequence numbers, and sends a heartbeat every
second so the server does not time it out.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import protocol as p
from hil_server.client.seq import SeqTracker


class ClientError(Exception):
    """The server refused us (version, authentication, a NAK we asked to raise) or went away."""


class HilClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self.reader = reader
        self.writer = writer
        self.name = name
        self.encoder = p.FrameEncoder()
        self.decoder = p.FrameDecoder()
        self.hello: p.ServerHello | None = None
        self.frames: asyncio.Queue[p.Frame | None] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[p.Ack | p.Nak]] = {}
        self.errors: list[p.RemoteProtocolError] = []
        self.server_errors: list[p.Error] = []
        self.bye: p.Bye | None = None
        self.sequence = SeqTracker()
        """Continuity of the server's seq as frames arrive (gaps, lost, late, duplicates)."""
        self.received = 0
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def gaps(self) -> int:
        """Forward jumps in the server's seq (each hides one or more frames; SPEC.md 2.3)."""
        return self.sequence.gaps

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        name: str = "eis-hil-client",
        secret: bytes | None = None,
        timeout: float = 5.0,
        heartbeat_s: float = 1.0,
        versions: tuple[int, int] = (p.PROTOCOL_VERSION, p.PROTOCOL_VERSION),
    ) -> HilClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return await cls.over(
            reader,
            writer,
            name=name,
            secret=secret,
            timeout=timeout,
            heartbeat_s=heartbeat_s,
            versions=versions,
        )

    @classmethod
    async def over(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str = "eis-hil-client",
        secret: bytes | None = None,
        timeout: float = 5.0,
        heartbeat_s: float = 1.0,
        versions: tuple[int, int] = (p.PROTOCOL_VERSION, p.PROTOCOL_VERSION),
    ) -> HilClient:
        """A client over a connection already open (``transport.loopback.connect``): handshake done."""
        client = cls(reader, writer, name)
        client._tasks.append(asyncio.create_task(client._read_loop()))
        try:
            await client._handshake(secret, timeout, versions)
        except BaseException:
            await client.close()
            raise
        client._tasks.append(asyncio.create_task(client._heartbeat_loop(heartbeat_s)))
        return client

    async def _handshake(self, secret: bytes | None, timeout: float, versions: tuple[int, int]) -> None:
        client, name = self, self.name
        first = await client.next_frame(timeout)
        if not isinstance(first.message, p.ServerHello):
            raise ClientError(f"expected SERVER_HELLO, got {type(first.message).__name__}")
        client.hello = first.message
        response = bytes(p.AUTH_RESPONSE_SIZE)
        if client.hello.auth_required:
            if secret is None:
                raise ClientError("the server requires authentication: give the shared secret")
            response = p.auth_response(secret, client.hello.auth_challenge, name)
        reply = await client._request(p.ClientHello(versions[0], versions[1], response, name), timeout)
        if not isinstance(reply, p.Ack):
            raise ClientError(f"hello refused: {reply}")

    async def _request(self, message: p.Message, timeout: float) -> p.Ack | p.Nak:
        seq = self.encoder.next_seq
        future: asyncio.Future[p.Ack | p.Nak] = asyncio.get_running_loop().create_future()
        self.pending[seq] = future
        self.writer.write(self.encoder.encode(message))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            detail = (
                self.bye.message
                if self.bye
                else (self.server_errors[-1].message if self.server_errors else "")
            )
            raise ClientError(
                f"no reply to {type(message).__name__} within {timeout} s {detail}".strip()
            ) from None
        finally:
            self.pending.pop(seq, None)

    async def subscribe(
        self,
        mask: int = p.SubscribeMask.ALL,
        cells: tuple[int, ...] = (),
        divider: int = 1,
        eis_mode: int = p.EisMode.SCENARIO_DEFAULT,
        timeout: float = 5.0,
    ) -> int:
        """Returns the number of cells subscribed; raises ClientError on a NAK."""
        import numpy as np

        reply = await self._request(
            p.Subscribe(mask, divider, eis_mode, np.array(cells, dtype=np.uint16)), timeout
        )
        if isinstance(reply, p.Nak):
            raise ClientError(f"subscribe refused: {reply.message}")
        return reply.result

    async def control(self, message: p.Control, timeout: float = 5.0) -> p.Ack | p.Nak:
        return await self._request(message, timeout)

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are: for tests that feed the server garbage."""
        self.writer.write(data)

    async def next_frame(self, timeout: float | None = None) -> p.Frame:
        item = await asyncio.wait_for(self.frames.get(), timeout)
        if item is None:
            self.frames.put_nowait(None)  # keep the end marker for the next caller
            raise ClientError(f"connection closed{': ' + self.bye.message if self.bye else ''}")
        return item

    async def next_message(self, kind: type[p.Message], timeout: float | None = None) -> Any:
        """The next frame whose message is a ``kind``; frames of other types are skipped."""
        while True:
            frame = await self.next_frame(timeout)
            if isinstance(frame.message, kind):
                return frame.message

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.decoder.feed(data)
                for item in self.decoder.events():
                    if isinstance(item, p.RemoteProtocolError):
                        self.errors.append(item)
                    else:
                        self._dispatch(item)
        except (ConnectionError, OSError):
            pass
        finally:
            # why the server closed, if it said (a wrong secret: ERROR AUTH_FAILED, then BYE)
            said = self.server_errors[-1].message if self.server_errors else ""
            said = said or (self.bye.message if self.bye else "")
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ClientError(f"connection closed{': ' + said if said else ''}"))
            self.frames.put_nowait(None)

    def _dispatch(self, frame: p.Frame) -> None:
        self.received += 1
        self.sequence.see(frame.seq)
        msg = frame.message
        if isinstance(msg, p.Ack | p.Nak) and msg.ack_seq in self.pending:
            future = self.pending[msg.ack_seq]
            if not future.done():
                future.set_result(msg)
            return
        if isinstance(msg, p.Error):
            self.server_errors.append(msg)
        if isinstance(msg, p.Bye):
            self.bye = msg
            self.writer.close()  # the server closes after BYE: close our side too, promptly
        self.frames.put_nowait(frame)

    async def _heartbeat_loop(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.writer.write(self.encoder.encode(p.Heartbeat(rx_bad_frames=len(self.errors) & 0xFFFFFFFF)))

    async def close(self) -> None:
        if not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                self.writer.write(self.encoder.encode(p.Bye(0, "client closing")))
                await self.writer.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
