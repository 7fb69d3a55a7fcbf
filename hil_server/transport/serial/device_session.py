from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

import protocol as p
from hil_server.transport.serial.budget import Budget
from hil_server.transport.serial.line_pacer import LinePacer

if TYPE_CHECKING:
    pass

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


class SessionState(enum.Enum):
    WAITING = "waiting"
    """No CLIENT_HELLO yet in this serial connection: SERVER_HELLO is repeated."""
    READY = "ready"


class DeviceSession:
    """The serial side in ``--format protocol``: toward the device the bridge is the server (SPEC.md 6).

    A *serial connection* starts when the port is first opened, after the device's BYE, and when a device
    that had said hello stays silent for ``peer_timeout_s``: the bridge's ``seq`` restarts at 0, SERVER_HELLO
    (the upstream's, with ``auth_required`` 0) is sent and repeated every ``hello_interval_s`` until a
    CLIENT_HELLO arrives, and the default subscription (the command line's) streams until the device sends
    its own SUBSCRIBE. A port that disappears and comes back does not start a new serial connection.
    """

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
        self.hello = dataclasses.replace(hello, auth_required=0, auth_challenge=bytes(p.AUTH_CHALLENGE_SIZE))
        self.default = default
        self.pacer = pacer
        self.allowed_cells = allowed_cells
        self.plan = plan
        self.hello_interval_s = hello_interval_s
        self.heartbeat_s = heartbeat_s
        self.peer_timeout_s = peer_timeout_s
        self.generation = 0
        self.encoder = p.FrameEncoder()
        self.decoder = p.FrameDecoder()
        self.state = SessionState.WAITING
        self.subscription = default
        self.upstream_subscription = default
        self.effective_divider = plan(default).effective_divider
        self.device_name = ""
        self.last_rx = 0.0
        self.next_hello = 0.0
        self.next_heartbeat = 0.0
        self.last_garbage_error = -math.inf
        # counters of this serial connection
        self.rx_bad = 0
        self.decimated = 0
        self.dropped_base = 0
        self.sent_base = 0
        self.upstream_dropped = 0
        self.upstream_dropped_base = 0
        # upstream view, for heartbeats
        self.t_sim_us = 0
        self.sim_state = p.SimState.IDLE
        self.log = log.bind(side="serial")

    # -- connection ---------------------------------------------------------------------------------------
    def open(self, now: float) -> list[Forward]:
        """Start a serial connection; returns the re-subscribe upstream needs to restore the default."""
        self.generation += 1
        self.encoder = p.FrameEncoder()
        self.decoder = p.FrameDecoder()
        self.state = SessionState.WAITING
        self.subscription = self.default
        self.effective_divider = self.plan(self.default).effective_divider
        self.rx_bad = 0
        self.decimated = 0
        self.dropped_base = self.pacer.dropped
        self.sent_base = self.pacer.frames_sent
        self.upstream_dropped_base = self.upstream_dropped
        self.last_rx = now
        self.next_hello = now
        self.next_heartbeat = now + self.heartbeat_s
        self.tick(now)
        if self.upstream_subscription != self.default:
            return [Forward(_subscribe_message(self.default), None, self.generation, self.default)]
        return []

    def _send(self, message: p.Message, now: float, *, droppable: bool, kind: str, flags: int = 0) -> None:
        self.pacer.push(self.encoder.encode(message, flags), now, droppable=droppable, kind=kind)

    def reply(self, message: p.Message, now: float) -> None:
        self._send(message, now, droppable=False, kind="reply")

    @property
    def frames_dropped(self) -> int:
        """Every frame the device subscribed to and did not get in this serial connection: dropped from the
        line queue (a gap in ``seq``), removed by decimation, or dropped by the upstream server."""
        return (
            self.pacer.dropped
            - self.dropped_base
            + self.decimated
            + self.upstream_dropped
            - self.upstream_dropped_base
        )

    def tick(self, now: float) -> None:
        if self.state is SessionState.WAITING and now >= self.next_hello:
            if self.pacer.queued("hello") == 0:
                self._send(self.hello, now, droppable=False, kind="hello")
            self.next_hello = now + self.hello_interval_s
        if not self.pacer.online:
            self.last_rx = now  # the port is gone, not the device: the session waits for the reopen
        elif self.state is SessionState.READY and now - self.last_rx > self.peer_timeout_s:
            self.log.warning("device silent, new serial connection", silent_s=round(now - self.last_rx, 1))
            raise RestartSessionError
        if now >= self.next_heartbeat:
            self.next_heartbeat = max(self.next_heartbeat + self.heartbeat_s, now)
            if self.pacer.queued("heartbeat") == 0:  # a newer one would only repeat it
                self._send(self._heartbeat(), now, droppable=False, kind="heartbeat")

    def _heartbeat(self) -> p.Heartbeat:
        lat = sorted(self.pacer.latency_s)
        self.pacer.latency_s.clear()

        def pct(q: float) -> int:
            if not lat:
                return 0
            return min(2**32 - 1, int(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6))

        return p.Heartbeat(
            self.t_sim_us,
            time.time_ns() // 1000,
            self.pacer.frames_sent - self.sent_base,
            self.frames_dropped,
            self.rx_bad & 0xFFFFFFFF,
            pct(0.5),
            pct(0.99),
            pct(1.0),
            min(self.pacer.queued(), 0xFFFF),
            int(self.sim_state),
        )

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
    def feed(self, data: bytes, now: float) -> list[Forward]:
        self.decoder.feed(data)
        out: list[Forward] = []
        for item in self.decoder.events():
            if isinstance(item, p.RemoteProtocolError):
                self._bad_input(item, now)
            else:
                self.last_rx = now
                out += self._handle(item, now)
        return out

    def _bad_input(self, err: p.RemoteProtocolError, now: float) -> None:
        self.rx_bad += 1
        self.log.warning("bad input from device", kind=err.kind.name, detail=err.detail, seq=err.seq)
        if err.seq is not None:
            if err.msg_type == p.MsgType.CONTROL:
                self.reply(p.Nak(err.seq, 0, err.kind.code, err.detail[:200]), now)
            else:
                self.reply(p.Error(err.kind.code, err.seq, err.detail[:200]), now)
        elif now - self.last_garbage_error >= 1.0:
            self.last_garbage_error = now
            self.reply(p.Error(err.kind.code, 0, err.detail[:200]), now)

    def _handle(self, frame: p.Frame, now: float) -> list[Forward]:
        msg, seq = frame.message, frame.seq
        if isinstance(msg, p.Heartbeat):
            return []
        if isinstance(msg, p.Bye):
            self.log.info("device said bye", reason=msg.reason, message=msg.message)
            raise RestartSessionError
        if isinstance(msg, p.ClientHello):
            lo, hi = max(msg.proto_min_major, 1), min(msg.proto_max_major, p.PROTOCOL_VERSION)
            if lo > hi:
                theirs = f"{msg.proto_min_major}..{msg.proto_max_major}"
                text = f"bridge speaks protocol 1..{p.PROTOCOL_VERSION}, device {theirs}"
                self.reply(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, seq, text), now)
                self.reply(p.Bye(p.ErrorCode.UNSUPPORTED_VERSION, text), now)
                self.log.warning("device protocol version not supported", detail=text)
                raise RestartSessionError
            self.state = SessionState.READY
            self.device_name = msg.client_name
            self.log = self.log.bind(device=msg.client_name)
            self.log.info("device hello", version=hi)
            self.reply(p.Ack(seq, 0, hi), now)
            return []
        if self.state is SessionState.WAITING:
            self.reply(p.Error(p.ErrorCode.NOT_ALLOWED_IN_STATE, seq, "send CLIENT_HELLO first"), now)
            return []
        if isinstance(msg, p.Subscribe):
            return self._subscribe(seq, msg, now)
        if isinstance(msg, p.Control):
            return [Forward(msg, seq, self.generation)]
        name = p.MsgType(msg.MSG_TYPE).name
        self.reply(
            p.Error(p.ErrorCode.NOT_ALLOWED_IN_STATE, seq, f"{name} is not accepted from a device"), now
        )
        return []

    def _subscribe(self, seq: int, msg: p.Subscribe, now: float) -> list[Forward]:
        n = self.hello.cell_count
        cells = tuple(int(c) for c in msg.cells)
        allowed = self.allowed_cells if self.allowed_cells is not None else frozenset(range(n))
        bad = [c for c in cells if c not in allowed]
        if bad:
            text = f"cells {bad} are not served by this bridge (allowed: {_ranges(sorted(allowed))})"
            self.reply(p.Nak(seq, 0, p.ErrorCode.UNKNOWN_CELL, text[:200]), now)
            return []
        if msg.eis_mode not in tuple(p.EisMode):
            self.reply(
                p.Nak(seq, 0, p.ErrorCode.OUT_OF_RANGE, f"eis_mode {msg.eis_mode} is not 0, 1 or 2"), now
            )
            return []
        if not cells and self.allowed_cells is not None:
            cells = tuple(sorted(self.allowed_cells))
        sub = Subscription(msg.msg_mask, max(1, msg.state_divider), msg.eis_mode, cells)
        return [Forward(_subscribe_message(sub), seq, self.generation, sub)]

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
            self.subscription = fwd.subscription
            budget = self.plan(fwd.subscription)
            self.effective_divider = budget.effective_divider
            self.log.info("device subscribed", budget=budget.describe(), cells=len(fwd.subscription.cells))
        if fwd.device_seq is None:
            return
        if reply is None:
            self.reply(p.Nak(fwd.device_seq, command, p.ErrorCode.INTERNAL, detail[:200]), now)
        elif isinstance(reply, p.Ack):
            self.reply(p.Ack(fwd.device_seq, command, reply.result), now)
        else:
            self.reply(p.Nak(fwd.device_seq, command, reply.code, reply.message), now)


class RestartSessionError(Exception):
    """Raised inside DeviceSession: end this serial connection and start a new one."""


def _subscribe_message(sub: Subscription) -> p.Subscribe:
    import numpy as np

    return p.Subscribe(sub.mask, sub.divider, sub.eis_mode, np.array(sub.cells, dtype=np.uint16))


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    out, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}..{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


# -- port handling -----------------------------------------------------------------------------------------
