"""The serial side in ``--format protocol``: the bridge is the server toward its device."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import structlog

import protocol as p
from hil_server.client.text import cell_ranges
from hil_server.session.server_session import (
    DETAIL_MAX,
    ServerSession,
    heartbeat,
    lateness_percentiles_us,
)
from hil_server.transport.serial.budget import Budget
from hil_server.transport.serial.line_pacer import LinePacer
from protocol import DEVICE_TRANSITIONS, SessionState

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class Subscription:
    mask: int = p.SubscribeMask.ALL
    divider: int = 1
    eis_mode: int = p.EisMode.SCENARIO_DEFAULT
    cells: tuple[int, ...] = ()
    """Empty: every cell the bridge may serve."""


@dataclasses.dataclass(frozen=True)
class Forward:
    """A request the device made that the upstream server must answer (or the bridge's own re-subscribe)."""

    message: p.Control | p.Subscribe
    device_seq: int | None
    """None: the bridge's own request, no reply to the device."""
    generation: int
    subscription: Subscription | None = None


class LineSession(ServerSession):
    """The server side of one serial line in ``--format protocol`` (SPEC.md 6), whatever the stream comes
    from: ``DeviceSession`` forwards the device's requests to an upstream server, ``served.LineSession``
    carries them out on the server it is attached to.

    A *serial connection* starts when the port is first opened, after the device's BYE, and when a device
    that had said hello stays silent for ``peer_timeout_s``: the bridge's ``seq`` restarts at 0, SERVER_HELLO
    (the stream's, with ``auth_required`` 0, bounded by ``p.bounded_hello``) is sent and repeated every
    ``hello_interval_s`` until a CLIENT_HELLO arrives, and the default subscription (the command line's)
    streams until the device sends its own SUBSCRIBE. A port that disappears and comes back does not start a
    new serial connection.

    Everything a server says to its peer (handshake, bad input, subscription checks, timeouts, heartbeat
    content) is ``ServerSession``'s, with the device's state table; what this class adds is the serial
    connection's life cycle, the line budget (decimation) and the heartbeats of the line.
    """

    me = "bridge"
    peer = "device"
    transitions = DEVICE_TRANSITIONS

    @property
    def peer_timeout_s(self) -> float:
        return self._peer_timeout_s

    def __init__(
        self,
        hello: p.ServerHello,
        default: Subscription,
        pacer: LinePacer,
        *,
        allowed_cells: frozenset[int] | None,
        plan: Callable[[Subscription], Budget],
        hello_interval_s: float,
        heartbeat_s: float = 1.0,
        peer_timeout_s: float = 5.0,
    ) -> None:
        self._peer_timeout_s = peer_timeout_s
        super().__init__(logger=log.bind(side="serial"))
        self.hello = p.bounded_hello(
            dataclasses.replace(hello, auth_required=0, auth_challenge=bytes(p.AUTH_CHALLENGE_SIZE))
        )
        self.default = default
        self.pacer = pacer
        self.allowed_cells = allowed_cells
        self.plan = plan
        self.hello_interval_s = hello_interval_s
        self.heartbeat_s = heartbeat_s
        self.generation = 0
        self.encoder = p.FrameEncoder()
        self.subscription = default
        self.effective_divider = plan(default).effective_divider
        self.next_hello = 0.0
        self.next_heartbeat = 0.0
        # counters of this serial connection
        self.decimated = 0
        self.dropped_base = 0
        self.sent_base = 0
        # the stream's view, for heartbeats
        self.t_sim_us = 0
        self.sim_state = p.SimState.IDLE

    # -- connection ---------------------------------------------------------------------------------------
    def restart(self, now: float) -> None:
        """Start a serial connection: numbering from 0, SERVER_HELLO, the default subscription."""
        self.generation += 1
        self.encoder = p.FrameEncoder()
        self.decoder = p.FrameDecoder()
        self.state = SessionState.HANDSHAKE
        self.subscription = self.default
        self.effective_divider = self.plan(self.default).effective_divider
        self.rx_bad = 0
        self.decimated = 0
        self.dropped_base = self.pacer.dropped
        self.sent_base = self.pacer.frames_sent
        self.last_rx = now
        self.next_hello = now
        self.next_heartbeat = now + self.heartbeat_s
        self.tick(now)

    def _send(self, message: p.Message, now: float, *, droppable: bool, kind: str, flags: int = 0) -> None:
        self.pacer.push(self.encoder.encode(message, flags), now, droppable=droppable, kind=kind)

    def reply(self, message: p.Message, now: float) -> None:
        self._send(message, now, droppable=False, kind="reply")

    @property
    def frames_dropped(self) -> int:
        """Every frame the device subscribed to and did not get in this serial connection: dropped from the
        line queue (a gap in ``seq``) or removed by decimation."""
        return self.pacer.dropped - self.dropped_base + self.decimated

    def tick(self, now: float) -> None:
        if self.state is SessionState.HANDSHAKE and now >= self.next_hello:
            if self.pacer.queued("hello") == 0:
                self._send(self.hello, now, droppable=False, kind="hello")
            self.next_hello = now + self.hello_interval_s
        if not self.pacer.online:
            self.last_rx = now  # the port is gone, not the device: the session waits for the reopen
        elif self.expired(now) is not None:
            self.log.warning("device silent, new serial connection", silent_s=round(now - self.last_rx, 1))
            raise RestartSessionError
        if now >= self.next_heartbeat:
            self.next_heartbeat = max(self.next_heartbeat + self.heartbeat_s, now)
            if self.pacer.queued("heartbeat") == 0:  # a newer one would only repeat it
                self._send(self._heartbeat(), now, droppable=False, kind="heartbeat")

    def _heartbeat(self) -> p.Heartbeat:
        lateness = lateness_percentiles_us([s * 1e6 for s in self.pacer.latency_s])
        self.pacer.latency_s.clear()
        return heartbeat(
            self.t_sim_us,
            time.time_ns() // 1000,
            self.pacer.frames_sent - self.sent_base,
            self.frames_dropped,
            self.rx_bad,
            lateness,
            self.pacer.queued(),
            int(self.sim_state),
        )

    def subscribed(self, sub: Subscription) -> None:
        """The device's SUBSCRIBE took effect: the line budget is planned again for it (decimation)."""
        self.subscription = sub
        budget = self.plan(sub)
        self.effective_divider = budget.effective_divider
        self.log.info("device subscribed", budget=budget.describe(), cells=len(sub.cells))

    # -- from the device -----------------------------------------------------------------------------------
    def handle(self, frame: p.Frame, now: float) -> None:
        self.last_rx = now
        super().handle(frame, now)

    def end(self, code: p.ErrorCode | None, text: str, now: float) -> None:
        if code is not None:
            self.reply(p.Bye(code, text), now)
        raise RestartSessionError

    def refused_cells_text(self, bad: list[int]) -> str:
        allowed = cell_ranges(self.subscribable_cells())
        return f"cells {bad} are not served by this bridge (allowed: {allowed})"

    def subscribable_cells(self) -> frozenset[int]:
        return (
            self.allowed_cells if self.allowed_cells is not None else frozenset(range(self.hello.cell_count))
        )

    def requested(self, msg: p.Subscribe, cells: tuple[int, ...]) -> Subscription:
        """What a checked SUBSCRIBE asks for; no cells means all that the bridge serves."""
        if not cells and self.allowed_cells is not None:
            cells = tuple(sorted(self.allowed_cells))
        return Subscription(msg.msg_mask, max(1, msg.state_divider), msg.eis_mode, cells)


class DeviceSession(LineSession):
    """The serial line of a bridge to an upstream server (``--server HOST:PORT``): the device's SUBSCRIBE
    and CONTROL go upstream as the bridge's own requests (``Forward``), the upstream's answers come back
    with the device's ``seq`` (``resolve``), and the upstream's frames are renumbered for the line
    (``forward``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As ``LineSession``'s."""
        self._forwards: list[Forward] = []
        self.upstream_dropped = 0
        self.upstream_dropped_base = 0
        super().__init__(*args, **kwargs)
        self.upstream_subscription = self.default
        """What the upstream server was last told to stream to the bridge."""

    def open(self, now: float) -> list[Forward]:
        """Start a serial connection; returns the re-subscribe upstream needs to restore the default."""
        self.upstream_dropped_base = self.upstream_dropped
        self.restart(now)
        if self.upstream_subscription != self.default:
            return [Forward(_subscribe_message(self.default), None, self.generation, self.default)]
        return []

    @property
    def frames_dropped(self) -> int:
        """As the line's, plus the frames the upstream server dropped for the bridge (its heartbeats)."""
        return super().frames_dropped + self.upstream_dropped - self.upstream_dropped_base

    # -- from upstream -------------------------------------------------------------------------------------
    def forward(self, frame: p.Frame, now: float) -> None:
        msg = frame.message
        if isinstance(msg, p.CellStates):
            self.t_sim_us = msg.t_sim_us
            if msg.step % self.effective_divider:
                self.decimated += 1
                return
            self._send(msg, now, droppable=True, kind="states", flags=frame.flags)
        elif isinstance(msg, p.EisSpectrum | p.EisPoint):
            self.t_sim_us = max(self.t_sim_us, msg.t_sim_us)
            self._send(msg, now, droppable=True, kind="spectrum", flags=frame.flags)
        elif isinstance(msg, p.FaultEvent):
            self._send(msg, now, droppable=False, kind="fault", flags=frame.flags)
        elif isinstance(msg, p.Heartbeat):
            self.t_sim_us = msg.t_sim_us
            self.sim_state = (
                p.SimState(msg.sim_state) if msg.sim_state in tuple(p.SimState) else self.sim_state
            )
            self.upstream_dropped = msg.frames_dropped
        elif isinstance(msg, p.Error):
            self.log.warning("upstream error", code=msg.code, ref_seq=msg.ref_seq, message=msg.message)

    # -- from the device -----------------------------------------------------------------------------------
    def feed(self, data: bytes, now: float) -> list[Forward]:  # type: ignore[override]
        """The device's bytes; returns what must go upstream (its SUBSCRIBE and CONTROL requests)."""
        self._forwards = []
        super().feed(data, now)
        out, self._forwards = self._forwards, []
        return out

    def subscribe(self, seq: int, msg: p.Subscribe, cells: tuple[int, ...], now: float) -> None:
        sub = self.requested(msg, cells)
        self._forwards.append(Forward(_subscribe_message(sub), seq, self.generation, sub))

    def control(self, seq: int, msg: p.Control, now: float) -> None:
        self._forwards.append(Forward(msg, seq, self.generation))

    def resolve(self, fwd: Forward, reply: p.Ack | p.Nak | None, detail: str, now: float) -> None:
        """The upstream's answer to ``fwd`` (None: none came), mapped back to the device's seq."""
        command = fwd.message.command if isinstance(fwd.message, p.Control) else 0
        if isinstance(reply, p.Ack) and fwd.subscription is not None:
            self.upstream_subscription = fwd.subscription
        if fwd.generation != self.generation:
            if fwd.device_seq is not None:
                self.log.info("upstream reply for a previous serial connection dropped", seq=fwd.device_seq)
            return
        if isinstance(reply, p.Ack) and fwd.subscription is not None:
            self.subscribed(fwd.subscription)
        if fwd.device_seq is None:
            return
        if reply is None:
            self.reply(p.Nak(fwd.device_seq, command, p.ErrorCode.INTERNAL, detail[:DETAIL_MAX]), now)
        elif isinstance(reply, p.Ack):
            self.reply(p.Ack(fwd.device_seq, command, reply.result), now)
        else:
            self.reply(p.Nak(fwd.device_seq, command, reply.code, reply.message), now)


class RestartSessionError(Exception):
    """Raised inside DeviceSession: end this serial connection and start a new one."""


def _subscribe_message(sub: Subscription) -> p.Subscribe:
    import numpy as np

    return p.Subscribe(sub.mask, sub.divider, sub.eis_mode, np.array(sub.cells, dtype=np.uint16))
