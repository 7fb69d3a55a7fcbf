"""The serial bridge to a running server (``--server HOST:PORT``; user documentation: ``SERIAL.md``).

Upstream the bridge is an ordinary protocol client (``HilClient``) of the server; downstream it writes to a
serial port either the same binary protocol (``--format protocol``: toward the device the bridge plays the
server, with its own sequence numbers, handshake answers and heartbeats) or the text of the AD5940
battery-impedance example firmware (``--format ad5940``, ``ad5940.py``). With ``--scenario`` there is no
upstream: the port is a second transport of the server itself (``served.py``).

Layers, one module each in this package:

- ``budget.plan_budget``: bytes per second the stream needs against ``baud / 10`` (8N1), and the state
  divider that makes it fit (decimation).
- ``line_pacer.LinePacer``: the line itself, sans-IO with an explicit clock: a token bucket at the line
  rate, a queue of replies that are never dropped and a bounded queue of telemetry dropped oldest-first.
- ``device_session``: the protocol session toward the device, the server's own ``session.ServerSession``
  with the device's state table (``LineSession``); ``DeviceSession`` adds forwarding to the upstream with
  seq mapping.
- ``port``: opening the port, low latency, the reader thread.
- ``line.SerialLine``: the asyncio glue of the port: paced writer, port reader thread, reopen with backoff,
  hellos and heartbeats; ``SerialBridge`` adds the upstream pump; ``served.SerialTransport`` the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog

import protocol as p
from hil_server.transport.serial.budget import OutputFormat
from hil_server.transport.serial.device_session import DeviceSession, Forward, Subscription
from hil_server.transport.serial.line import (
    EXIT_OK,
    EXIT_PORT_GONE,
    EXIT_UPSTREAM,
    EXIT_USAGE,
    BridgeConfig,
    SerialLine,
)
from hil_server.transport.serial.port import Opener, open_serial

if TYPE_CHECKING:
    from hil_server.client.client import HilClient

log = structlog.get_logger(__name__)


class SerialBridge(SerialLine):
    """The port fed by an upstream client: ``await bridge.run()`` returns the exit code."""

    session: DeviceSession

    def __init__(
        self,
        client: HilClient,
        config: BridgeConfig,
        *,
        opener: Opener = open_serial,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        assert client.hello is not None, "connect the client first"
        super().__init__(client.hello, config, opener=opener, clock=clock, sleep=sleep)
        self.client = client
        self.session = DeviceSession(self.hello, self.default, self.pacer, **self.session_options)
        self._pending: dict[int, tuple[Forward, float]] = {}

    def _new_connection(self, now: float) -> None:
        self._dispatch(self.session.open(now))

    def _from_device(self, data: bytes, now: float) -> None:
        self._dispatch(self.session.feed(data, now))

    def _upstream(self) -> list[Coroutine[Any, Any, None]]:
        return [self._pump()]

    def _timers(self, now: float) -> None:
        for seq, (fwd, deadline) in list(self._pending.items()):
            if now >= deadline:
                del self._pending[seq]
                text = f"the upstream server did not answer within {self.config.upstream_timeout_s:g} s"
                log.warning(text, request=type(fwd.message).__name__)
                self.session.resolve(fwd, None, text, now)

    # -- upstream ----------------------------------------------------------------------------------------
    def _dispatch(self, forwards: list[Forward]) -> None:
        for fwd in forwards:
            seq = self.client.encoder.next_seq
            try:
                self.client.send_raw(self.client.encoder.encode(fwd.message))
            except (ConnectionError, OSError, RuntimeError) as exc:
                self.session.resolve(fwd, None, f"upstream unavailable: {exc}", self.clock())
                continue
            self._pending[seq] = (fwd, self.clock() + self.config.upstream_timeout_s)

    async def _pump(self) -> None:
        """Upstream frames in arrival order: replies to forwarded requests keep their place in the stream,
        so the device gets a CONTROL's ACK before the frames that show its effect."""
        from hil_server.client.client import ClientError

        try:
            while True:
                frame = await self.client.next_frame()
                now = self.clock()
                msg = frame.message
                if isinstance(msg, p.Ack | p.Nak) and msg.ack_seq in self._pending:
                    fwd, _ = self._pending.pop(msg.ack_seq)
                    self.session.resolve(fwd, msg, "", now)
                elif self.config.fmt is OutputFormat.PROTOCOL:
                    self.session.forward(frame, now)
                else:
                    self._forward_ad5940(msg, now)
                self._wake.set()
        except ClientError as exc:
            bye = self.client.bye
            text = f"upstream closed: {bye.message if bye else exc}"
            log.error(text)
            self._finish(EXIT_UPSTREAM, text)


__all__ = [
    "EXIT_OK",
    "EXIT_PORT_GONE",
    "EXIT_UPSTREAM",
    "EXIT_USAGE",
    "BridgeConfig",
    "SerialBridge",
    "Subscription",
]
