"""The serial port as a second transport of a ``HilServer`` (``serial-bridge --scenario``), the way
pymodbus's serial server is a thin subclass of its one server base.

The port is one more session of the server (``HilServer.attach``): its frames come from the same stream
scheduler as a TCP client's (pacing, broadcast, stream faults), encoded once and numbered for the line; the
device's SUBSCRIBE and CONTROL are carried out on the server itself, through the same code as a TCP
client's (``transport.subscriber``). There is no upstream connection, no second server session and no
decode and re-encode of every frame. The line itself (pacing, drops, hellos, heartbeats, reopen) is
``line.SerialLine``'s, as for the bridge to a remote server.

The line has two faces, so two objects: ``ServedLineSession`` is the protocol session toward the device
(its state table stays READY while the default subscription streams), ``LineSubscriber`` is what the
scheduler sees: a subscriber that streams from the moment the port opens, for listen-only devices too.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

import protocol as p
from hil_server.sim.output import StreamFault
from hil_server.stream.source import BIT_STATES, ControlRefusedError, Item
from hil_server.transport.serial.budget import BridgeError, OutputFormat
from hil_server.transport.serial.device_session import LineSession, Subscription
from hil_server.transport.serial.line import EXIT_UPSTREAM, BridgeConfig, SerialLine
from hil_server.transport.serial.port import Opener, open_serial
from hil_server.transport.subscriber import Subscriber
from hil_server.transport.tcp import HilServer
from protocol import SessionState

log = structlog.get_logger(__name__)

_KIND = {
    int(p.MsgType.CELL_STATES): "states",
    int(p.MsgType.EIS_SPECTRUM): "spectrum",
    int(p.MsgType.EIS_POINT): "spectrum",
    int(p.MsgType.FAULT_EVENT): "fault",
}
"""The drop-statistics kind of a frame the stream sends (``LinePacer.dropped_by_kind``)."""


class SerialTransport(SerialLine):
    """A serial port served by ``server`` (started, listening or not): ``await transport.run()`` returns the
    exit code; ``stop()`` ends it, and so does the server's ``stop()`` (BYE SHUTDOWN to the device)."""

    session: ServedLineSession

    def __init__(
        self,
        server: HilServer,
        config: BridgeConfig,
        *,
        opener: Opener = open_serial,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(server.source.hello(), config, opener=opener, clock=clock, sleep=sleep)
        self.server = server
        self.session = ServedLineSession(self, self.hello, self.default, self.pacer, **self.session_options)
        self.subscriber = LineSubscriber(self)
        self._sid: int | None = None

    def _begin(self) -> None:
        self._sid = self.server.attach(self.subscriber)

    def _end(self) -> None:
        if self._sid is not None:
            self.server.detach(self._sid)
            self._sid = None

    def _new_connection(self, now: float) -> None:
        self.session.restart(now)
        self.subscribe(self.default)

    def _from_device(self, data: bytes, now: float) -> None:
        self.session.feed(data, now)

    def _timers(self, now: float) -> None:
        if self.pacer.telemetry_bytes <= self.pacer.limit_bytes // 2:
            self.subscriber.room.set()

    def subscribe(self, sub: Subscription) -> None:
        """Stream ``sub`` to the line from now on, at the pace the line carries it (speed 0)."""
        self.subscriber.set_subscription(sub.mask, sub.divider, sub.eis_mode, sub.cells)
        if self.config.speed > 0:
            return
        budget = self.plan(sub)
        if budget.line_speed is not None:
            speed_ppm = max(1, round(budget.line_speed * 1e6))
            try:
                self.server.apply_control(p.Control.set_speed(speed_ppm))
            except ControlRefusedError as exc:
                raise BridgeError(f"the server refused SET_SPEED {budget.line_speed:.3g}: {exc}") from exc
            log.info("line-paced speed", speed=round(budget.line_speed, 3))

    async def run(self) -> int:
        if self.config.fmt is OutputFormat.AD5940:
            self.subscribe(self.default)  # no serial connection in this format: the default is all it gets
        return await super().run()


class ServedLineSession(LineSession):
    """The protocol session toward the device; its requests are carried out on the server."""

    def __init__(self, line: SerialTransport, *args: Any, **kwargs: Any) -> None:
        """``line``: the transport whose subscriber the requests act on; the rest as ``LineSession``'s."""
        self.line = line
        super().__init__(*args, **kwargs)

    def tick(self, now: float) -> None:
        server = self.line.server
        self.t_sim_us, self.sim_state = server.source.time_us, server.sim_state  # for the heartbeat
        super().tick(now)

    def subscribe(self, seq: int, msg: p.Subscribe, cells: tuple[int, ...], now: float) -> None:
        sub = self.requested(msg, cells)
        self.line.subscribe(sub)
        self.subscribed(sub)
        self.reply(p.Ack(seq, 0, len(sub.cells) or self.hello.cell_count), now)

    def control(self, seq: int, msg: p.Control, now: float) -> None:
        self.line.subscriber.control_request(seq, msg, now)


class LineSubscriber(Subscriber):
    """The serial port as the stream scheduler and the server see it (``tcp.Peer``): frames are numbered by
    the line's session and queued in its pacer, CELL_STATES decimated to the line's budget."""

    def __init__(self, line: SerialTransport) -> None:
        self.line = line
        self.server = line.server
        self.state = SessionState.STREAMING
        """For the scheduler, which streams to STREAMING sessions; the protocol state is the session's."""
        self.closing = False
        self.queue: collections.deque[bytes] = collections.deque()
        """Always empty: what is to be sent waits in the line's pacer."""
        self.wake = line._wake
        self.room = asyncio.Event()
        self.room.set()
        self.log = log.bind(side="serial", port=line.config.port)
        self.init_subscription(0, line.clock())

    # -- what the server reads -----------------------------------------------------------------------------
    @property
    def client_name(self) -> str:
        return self.line.session.client_name

    @property
    def frames_sent(self) -> int:
        return self.line.pacer.frames_sent

    @property
    def frames_dropped(self) -> int:
        return self.line.session.frames_dropped

    @property
    def rx_bad(self) -> int:
        return self.line.session.rx_bad

    def heartbeat_due(self, now: float, lateness_us: tuple[int, int, int]) -> None:
        """Nothing: the line sends its own heartbeats (``LineSession.tick``), with the line's lateness."""

    def bye(self, code: p.ErrorCode, message: str) -> None:
        """The server is stopping: so does the line (BYE SHUTDOWN to the device)."""
        self.line._finish(EXIT_UPSTREAM, f"server stopped: {message}")

    def abort(self) -> None:
        """A disconnect stream fault: the line cuts the frame it is sending and starts a new serial
        connection (SERVER_HELLO, seq from 0), as a TCP client would see its connection cut."""
        self.line.pacer.abort_current()
        self.line.pacer.drop_telemetry()
        self.line._new_connection(self.line.clock())

    # -- what the scheduler sends --------------------------------------------------------------------------
    def wants(self, item: Item, default_mode: int) -> bool:
        if not Subscriber.wants(self, item, default_mode):
            return False
        if item.bit == BIT_STATES and item.step % self.line.session.effective_divider:
            self.line.session.decimated += 1  # the line cannot carry every step (SERIAL.md, decimation)
            return False
        return True

    def reply(self, message: p.Message, now: float = 0.0) -> None:
        self.line.session.reply(message, self.line.clock())

    def push_telemetry(self, msg_type: int, payload: bytes, flags: int) -> None:
        if self.line.config.fmt is OutputFormat.AD5940:
            self.line._forward_ad5940(p.decode_payload(msg_type, payload), self.line.clock())
        else:
            frame = self.line.session.encoder.frame(msg_type, payload, flags)
            self._push(frame, True, _KIND.get(msg_type, "telemetry"))

    def push_payload(
        self,
        msg_type: int,
        payload: bytes,
        droppable: bool = True,
        faults: tuple[StreamFault, ...] = (),
        t_us: int = 0,
        flags: int = 0,
    ) -> None:
        """A frame through the stream ``faults`` (``--format protocol``; the text format has no frames to
        damage), or a frame that is never dropped (a fault event)."""
        if self.line.config.fmt is OutputFormat.AD5940 or (droppable and not faults and self.transport.idle):
            self.push_telemetry(msg_type, payload, flags)
            return
        frame = self.line.session.encoder.frame(msg_type, payload, flags)
        kind = _KIND.get(msg_type, "telemetry")
        if not droppable:
            self._push(frame, False, kind)
        else:
            for damaged in self.transport.apply(frame, t_us, faults):
                self._push(damaged, True, kind)

    def queue_telemetry(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            self._push(frame, True, "telemetry")

    def _push(self, frame: bytes, droppable: bool, kind: str) -> None:
        pacer = self.line.pacer
        pacer.push(frame, self.line.clock(), droppable=droppable, kind=kind)
        if pacer.telemetry_bytes > pacer.limit_bytes // 2:
            self.room.clear()  # at speed 0 the stream waits for the line
        self.wake.set()
