"""``eis-hil serial-bridge``: the eis-hil stream over a UART (user documentation: ``hil_server/SERIAL.md``).

Upstream the bridge is an ordinary protocol client (``HilClient``) of a running server, or of a server it
starts in-process on a loopback port (``--scenario``). Downstream it writes to a serial port either the same
binary protocol (``--format protocol``: toward the device the bridge plays the server, with its own
sequence numbers, handshake answers and heartbeats) or the text of the AD5940 battery-impedance example
firmware (``--format ad5940``, ``instrument.py``).

Layers, after the sans-IO split of the protocol package:

- ``plan_budget``: bytes per second the stream needs against ``baud / 10`` (8N1), and the state divider
  that makes it fit (decimation).
- ``LinePacer``: the line itself, sans-IO with an explicit clock: a token bucket at the line rate, a queue
  of replies that are never dropped and a bounded queue of telemetry dropped oldest-first.
- ``DeviceSession``: the protocol session toward the device, sans-IO: handshake, subscription, control
  forwarding with seq mapping, heartbeats, hello repeats, peer timeout.
- ``SerialBridge``: the asyncio glue: upstream pump, paced writer, port reader thread, reopen with backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import enum
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import serial
import structlog

import protocol as p

from ._cli_util import cell_index, read_secret

if TYPE_CHECKING:
    from .client import HilClient
    from .server import HilServer

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_UPSTREAM = 1
EXIT_USAGE = 2
EXIT_PORT_GONE = 3

HEADROOM = 0.9
"""Plan the stream to at most this share of the line: the rest absorbs replies, hellos and bursts."""
HEARTBEAT_FRAME_BYTES = p.HEADER_SIZE + 52 + p.CRC_SIZE
STATES_PER_FRAME = 169
FTDI_SYSFS = Path("/sys/bus/usb-serial/devices")


class BridgeError(Exception):
    """Bad configuration or a port that cannot be opened at start: the message says what and why."""


# -- line budget -------------------------------------------------------------------------------------------


def line_rate(baud: int) -> float:
    """Bytes per second of an 8N1 UART: one start bit, eight data bits, one stop bit per byte."""
    return baud / 10.0


def states_bytes(n_cells: int) -> int:
    """Bytes on the wire of one step's CELL_STATES (split into frames of at most 169 records)."""
    full, rest = divmod(n_cells, STATES_PER_FRAME)
    frames = [STATES_PER_FRAME] * full + ([rest] if rest else [])
    return sum(p.HEADER_SIZE + 24 + 24 * n + p.CRC_SIZE for n in frames)


def spectrum_bytes(n_freq: int) -> int:
    return p.HEADER_SIZE + 44 + 12 * n_freq + p.CRC_SIZE


POINT_BYTES = p.HEADER_SIZE + 32 + p.CRC_SIZE


class OutputFormat(enum.Enum):
    PROTOCOL = "protocol"
    AD5940 = "ad5940"


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What the device is to receive, in the terms the estimate needs."""

    n_cells: int
    step_period_us: int
    n_freq: int
    speed: float
    """Simulation speed (1.0 real time); 0 means paced to the line (``line_speed`` of the budget)."""
    divider: int = 1
    mask: int = p.SubscribeMask.ALL
    eis_interval_s: float | None = 60.0
    eis_sweep: bool = False
    fmt: OutputFormat = OutputFormat.PROTOCOL


@dataclasses.dataclass(frozen=True)
class Budget:
    available: float
    """Line bytes per second (baud / 10)."""
    states: float
    """Bytes per second of cell states at the requested divider."""
    spectra: float
    overhead: float
    """Heartbeats."""
    divider: int
    effective_divider: int
    states_effective: float
    line_speed: float | None
    """Speed 0 only: the simulation speed at which the stream fills ``HEADROOM`` of the line."""

    @property
    def needed(self) -> float:
        return self.states + self.spectra + self.overhead

    @property
    def needed_effective(self) -> float:
        return self.states_effective + self.spectra + self.overhead

    @property
    def fits(self) -> bool:
        return self.needed <= HEADROOM * self.available

    def describe(self) -> str:
        head = (
            f"line {self.available:.0f} B/s; stream needs {self.needed:.0f} B/s "
            f"(states {self.states:.0f}, spectra {self.spectra:.0f}, heartbeats {self.overhead:.0f})"
        )
        if self.line_speed is not None:
            return f"{head} per simulated second; speed 0: running at {self.line_speed:.3g}x, the line's pace"
        if self.fits:
            return f"{head}: fits ({100 * self.needed / self.available:.0f} % of the line)"
        if self.effective_divider != self.divider:
            return (
                f"{head}: does NOT fit; state divider raised {self.divider} -> {self.effective_divider} "
                f"(decimation), now {self.needed_effective:.0f} B/s"
                + (
                    ""
                    if self.needed_effective <= HEADROOM * self.available
                    else "; spectra alone exceed the line: the oldest are dropped"
                )
            )
        return f"{head}: does NOT fit; the oldest telemetry is dropped and counted"


def plan_budget(spec: StreamSpec, baud: int) -> Budget:
    """Estimate bytes per second against the line and choose the state divider (a multiple of the requested
    one, so the steps sent are a subset of those asked for)."""
    available = line_rate(baud)
    steps_per_s = 1e6 / spec.step_period_us if spec.step_period_us > 0 else 0.0
    speed = spec.speed if spec.speed > 0 else 1.0  # speed 0: rates per simulated second
    divider = max(1, spec.divider)
    if spec.fmt is OutputFormat.AD5940:
        from .instrument import TYPICAL_LINE_BYTES

        per_spectrum = spec.n_freq * TYPICAL_LINE_BYTES
        state_frame = 0
        overhead = 0.0
    else:
        per_spectrum = (spectrum_bytes(spec.n_freq) if spec.mask & p.SubscribeMask.EIS_SPECTRUM else 0) + (
            spec.n_freq * POINT_BYTES if spec.eis_sweep and spec.mask & p.SubscribeMask.EIS_POINT else 0
        )
        state_frame = states_bytes(spec.n_cells) if spec.mask & p.SubscribeMask.CELL_STATES else 0
        overhead = float(HEARTBEAT_FRAME_BYTES)
    spectra = spec.n_cells * speed / spec.eis_interval_s * per_spectrum if spec.eis_interval_s else 0.0

    def states_at(d: int) -> float:
        return steps_per_s * speed / d * state_frame

    states = states_at(divider)
    if spec.speed <= 0:
        per_sim_s = states + spectra
        room = HEADROOM * available - overhead
        line_speed = room / per_sim_s if per_sim_s > 0 and room > 0 else 1.0
        return Budget(available, states, spectra, overhead, divider, divider, states, line_speed)
    effective = divider
    room = HEADROOM * available - spectra - overhead
    if states + spectra + overhead > HEADROOM * available and states > 0:
        if room <= 0:
            effective = 65535 // divider * divider
        else:
            effective = min(65535 // divider, math.ceil(states / room)) * divider
    return Budget(available, states, spectra, overhead, divider, effective, states_at(effective), None)


# -- the line ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Item:
    data: bytes
    t_enq: float
    kind: str


class LinePacer:
    """A UART's worth of bytes per second, sans-IO: ``push`` what is to be sent, ``pull(now)`` what may be
    written now. Nothing beyond a small burst (``burst_s`` of line time, at least 64 bytes) is ever handed
    to the OS, so the kernel and adapter buffers stay near empty and latency stays in this queue, where the
    drop policy can act on it.

    Frames go out in the order they were pushed, which is their ``seq`` order (SPEC.md 2.3: a gap is a
    drop, so nothing may overtake). Replies (``droppable=False``) are never dropped; telemetry beyond
    ``limit_bytes`` is dropped oldest-first; the newest always gets in, so one frame larger than the limit
    is still sent. A frame once started is always finished. A reply waits behind at most ``limit_bytes``
    of telemetry: that bounds its latency to the queue's length in line time.
    """

    def __init__(self, bytes_per_s: float, *, limit_bytes: int, burst_s: float = 0.02) -> None:
        self.rate = bytes_per_s
        self.burst = max(64.0, bytes_per_s * burst_s)
        self.limit_bytes = limit_bytes
        self.credit = self.burst
        self._last: float | None = None
        self.queue: collections.deque[tuple[_Item, bool]] = collections.deque()
        """Items in push order, each with whether it may be dropped."""
        self.telemetry_bytes = 0
        """Bytes of the droppable items queued."""
        self._current: _Item | None = None
        self._current_droppable = False
        self._offset = 0
        self._chunk: list[list[Any]] = []
        """What the last ``pull`` handed out: [item, droppable, finished] each, for ``write_failed``."""
        self.online = True
        """False while the port is gone: telemetry pushed then is dropped at once (and counted)."""
        self.dropped = 0
        self.dropped_by_kind: collections.Counter[str] = collections.Counter()
        self.frames_sent = 0
        self.bytes_sent = 0
        self.latency_s: list[float] = []
        """Enqueue to last byte handed to the port, per item, since the caller last cleared it."""

    def push(self, data: bytes, now: float, *, droppable: bool, kind: str) -> int:
        """Queue one frame (or text unit); returns how many telemetry items were dropped for it."""
        item = _Item(data, now, kind)
        if not droppable:
            self.queue.append((item, False))
            return 0
        if not self.online:
            self._drop(item)
            return 1
        dropped = 0
        while self.telemetry_bytes and self.telemetry_bytes + len(data) > self.limit_bytes:
            i = next(i for i, (_, may_drop) in enumerate(self.queue) if may_drop)
            old = self.queue[i][0]
            del self.queue[i]
            self.telemetry_bytes -= len(old.data)
            self._drop(old)
            dropped += 1
        self.queue.append((item, True))
        self.telemetry_bytes += len(data)
        return dropped

    def _drop(self, item: _Item) -> None:
        self.dropped += 1
        self.dropped_by_kind[item.kind] += 1

    def drop_telemetry(self) -> int:
        """Drop every queued telemetry item (the port went away); returns how many."""
        kept: collections.deque[tuple[_Item, bool]] = collections.deque()
        n = 0
        for item, may_drop in self.queue:
            if may_drop:
                self._drop(item)
                n += 1
            else:
                kept.append((item, may_drop))
        self.queue = kept
        self.telemetry_bytes = 0
        return n

    def queued(self, kind: str | None = None) -> int:
        items = [i for i, _ in self.queue] + ([self._current] if self._current else [])
        return sum(1 for i in items if kind is None or i.kind == kind)

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.credit = min(self.burst, self.credit + (now - self._last) * self.rate)
        self._last = now if self._last is None else max(self._last, now)

    def pull(self, now: float) -> bytes:
        """The bytes the line can take now (possibly none). If writing them fails, call ``write_failed``."""
        self._refill(now)
        out = bytearray()
        self._chunk = []
        if self._current is not None:
            self._chunk.append([self._current, self._current_droppable, False])
        while self.credit >= 1:
            if self._current is None:
                if not self.queue:
                    break
                self._current, self._current_droppable = self.queue.popleft()
                if self._current_droppable:
                    self.telemetry_bytes -= len(self._current.data)
                self._offset = 0
                self._chunk.append([self._current, self._current_droppable, False])
            cur = self._current
            n = min(int(self.credit), len(cur.data) - self._offset)
            out += cur.data[self._offset : self._offset + n]
            self._offset += n
            self.credit -= n
            if self._offset >= len(cur.data):
                self.frames_sent += 1
                self.latency_s.append(now - cur.t_enq)
                self._chunk[-1][2] = True
                self._current = None
        self.bytes_sent += len(out)
        return bytes(out)

    def write_failed(self, nbytes: int) -> None:
        """The last ``pull``'s bytes never reached the line (the port went away): the telemetry in them is
        counted as dropped, the replies go back to the front of the queue to be sent whole, and a frame cut
        in the middle is not continued (its tail alone would be garbage on the next connection)."""
        self.bytes_sent -= nbytes
        replies: list[tuple[_Item, bool]] = []
        for item, droppable, finished in self._chunk:
            if finished:
                self.frames_sent -= 1
            if droppable:
                self._drop(item)
            else:
                replies.append((item, False))
        self.queue.extendleft(reversed(replies))
        self._chunk = []
        self._current, self._offset = None, 0

    def abort_current(self) -> None:
        """The line went away between writes: a frame started on it is not continued on the next one
        (dropped if telemetry, sent again whole if a reply)."""
        if self._current is not None and self._offset:
            if self._current_droppable:
                self._drop(self._current)
            else:
                self.queue.appendleft((self._current, False))
            self._current, self._offset = None, 0

    def next_ready(self, now: float) -> float | None:
        """When ``pull`` will next return bytes: None if nothing is queued."""
        if self._current is None and not self.queue:
            return None
        self._refill(now)
        need = min(self.burst, 1.0 if self._current is None else len(self._current.data) - self._offset)
        need = max(1.0, min(need, self.burst / 2))
        return now + max(0.0, (need - self.credit) / self.rate)

    @property
    def idle(self) -> bool:
        return self._current is None and not self.queue


# -- the protocol session toward the device ---------------------------------------------------------------


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
            raise _RestartSessionError
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
            raise _RestartSessionError
        if isinstance(msg, p.ClientHello):
            lo, hi = max(msg.proto_min_major, 1), min(msg.proto_max_major, p.PROTOCOL_VERSION)
            if lo > hi:
                theirs = f"{msg.proto_min_major}..{msg.proto_max_major}"
                text = f"bridge speaks protocol 1..{p.PROTOCOL_VERSION}, device {theirs}"
                self.reply(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, seq, text), now)
                self.reply(p.Bye(p.ErrorCode.UNSUPPORTED_VERSION, text), now)
                self.log.warning("device protocol version not supported", detail=text)
                raise _RestartSessionError
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


class _RestartSessionError(Exception):
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

Opener = Callable[[str, int], "serial.SerialBase"]


def open_serial(port: str, baud: int) -> serial.SerialBase:
    """A device path or a pyserial URL (``loop://``, ``rfc2217://``...), raw 8N1, no flow control."""
    return serial.serial_for_url(port, baudrate=baud, timeout=0.1, write_timeout=5.0)


def set_low_latency(ser: serial.SerialBase) -> bool:
    """Linux ``ASYNC_LOW_LATENCY`` through ``TIOCSSERIAL`` (pyserial's ``set_low_latency_mode``): the
    driver pushes received bytes to the reader at once. Best effort: ptys and many USB drivers refuse it."""
    setter = getattr(ser, "set_low_latency_mode", None)
    if setter is None:
        log.info("low_latency: not available for this port type", port=ser.name)
        return False
    try:
        setter(True)
    except (OSError, ValueError, NotImplementedError) as exc:
        log.info("low_latency: not supported by this port, left unchanged", port=ser.name, error=str(exc))
        return False
    log.info("low_latency: set", port=ser.name)
    return True


def ftdi_latency_timer(port: str, ms: int, sysfs: Path = FTDI_SYSFS) -> str:
    """Set the USB-serial (FTDI) latency timer to ``ms`` if it is higher and writable. Returns one of
    ``absent``, ``ok``, ``set``, ``readonly``."""
    name = Path(os.path.realpath(port)).name
    path = sysfs / name / "latency_timer"
    try:
        current = int(path.read_text().strip())
    except (OSError, ValueError):
        log.debug("no USB-serial latency timer for this port", path=str(path))
        return "absent"
    if current <= ms:
        log.info("FTDI latency timer", path=str(path), ms=current)
        return "ok"
    try:
        path.write_text(f"{ms}\n")
    except OSError as exc:
        log.warning(
            f"FTDI latency timer is {current} ms (adds up to that much delay per read); to lower it run: "
            f"echo {ms} | sudo tee {path}",
            error=str(exc),
        )
        return "readonly"
    log.info("FTDI latency timer set", path=str(path), was_ms=current, ms=ms)
    return "set"


class _PortReader(threading.Thread):
    """Blocking reads in a thread (pyserial has no asyncio API and ``loop://`` no file descriptor)."""

    def __init__(
        self,
        ser: serial.SerialBase,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        on_error: Callable[[serial.SerialBase, Exception], None],
    ) -> None:
        super().__init__(name=f"serial-reader {ser.name}", daemon=True)
        self.ser, self.loop, self.on_data, self.on_error = ser, loop, on_data, on_error
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                data = self.ser.read(max(1, getattr(self.ser, "in_waiting", 1)))
            except Exception as exc:  # pyserial raises SerialException, OSError, TypeError on a closed port
                if self.running:
                    with contextlib.suppress(RuntimeError):  # the loop is already closed
                        self.loop.call_soon_threadsafe(self.on_error, self.ser, exc)
                return
            if data and self.running:
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self.on_data, data)


# -- the bridge --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    port: str
    baud: int = 921600
    fmt: OutputFormat = OutputFormat.PROTOCOL
    cells: tuple[int, ...] = ()
    divider: int = 1
    speed: float = 1.0
    """The upstream's simulation speed, for the estimate (0: paced to the line, in-process only)."""
    eis_interval_s: float | None = 60.0
    eis_sweep: bool = False
    queue_ms: float = 250.0
    reopen_timeout_s: float = 30.0
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 5.0
    upstream_timeout_s: float = 5.0
    low_latency: bool = True
    latency_timer_ms: int = 1
    status_s: float = 10.0


class SerialBridge:
    """Runs one bridge: ``await bridge.run()`` returns the exit code. ``stop()`` ends it cleanly."""

    def __init__(
        self,
        client: HilClient,
        config: BridgeConfig,
        *,
        opener: Opener = open_serial,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        server: HilServer | None = None,
    ) -> None:
        assert client.hello is not None, "connect the client first"
        self.client = client
        self.hello: p.ServerHello = client.hello
        self.config = config
        self.opener = opener
        self.clock = clock
        self.sleep = sleep
        self.server = server
        self.allowed = frozenset(config.cells) if config.cells else None
        cell_count = self.hello.cell_count
        bad = [c for c in config.cells if c >= cell_count]
        if bad:
            raise BridgeError(f"--cells {bad}: the stream has {cell_count} cells (0..{cell_count - 1})")
        if config.fmt is OutputFormat.AD5940 and len(config.cells) > 1:
            raise BridgeError(
                "--format ad5940 prints one battery, as the AD5940 example measures one: give one cell "
                f"with --cells, not {len(config.cells)}"
            )
        if config.fmt is OutputFormat.AD5940:
            self.default = Subscription(
                p.SubscribeMask.EIS_SPECTRUM | p.SubscribeMask.EIS_POINT, 1, 0, config.cells or (0,)
            )
        else:
            self.default = Subscription(p.SubscribeMask.ALL, config.divider, 0, config.cells)
        self.rate = line_rate(config.baud)
        biggest = max(spectrum_bytes(self.hello.freq_hz.size), states_bytes(len(config.cells) or cell_count))
        self.pacer = LinePacer(
            self.rate, limit_bytes=int(max(self.rate * config.queue_ms / 1000, 2 * min(biggest, 8 * 4114)))
        )
        hello_bytes = len(p.encode_frame(self.hello, 0))
        self.session = DeviceSession(
            self.hello,
            self.default,
            self.pacer,
            allowed_cells=self.allowed,
            plan=self.plan,
            hello_interval_s=max(1.0, 20 * hello_bytes / self.rate),  # hellos take at most 5 % of the line
            heartbeat_s=config.heartbeat_s,
            peer_timeout_s=config.peer_timeout_s,
        )
        from .instrument import Ad5940Formatter

        self.formatter = Ad5940Formatter()
        self.port: serial.SerialBase | None = None
        self._reader: _PortReader | None = None
        self._port_up = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._pending: dict[int, tuple[Forward, float]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._reopen_task: asyncio.Task[None] | None = None
        self.exit_code: int | None = None
        self.exit_message = ""
        self.outages = 0

    # -- budget ------------------------------------------------------------------------------------------
    def spec(self, sub: Subscription) -> StreamSpec:
        return StreamSpec(
            n_cells=len(sub.cells) or self.hello.cell_count,
            step_period_us=self.hello.step_period_us,
            n_freq=int(self.hello.freq_hz.size),
            speed=self.config.speed,
            divider=sub.divider,
            mask=sub.mask,
            eis_interval_s=self.config.eis_interval_s,
            eis_sweep=self.config.eis_sweep or sub.eis_mode == p.EisMode.SWEEP,
            fmt=self.config.fmt,
        )

    def plan(self, sub: Subscription) -> Budget:
        return plan_budget(self.spec(sub), self.config.baud)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def _finish(self, code: int, message: str) -> None:
        if self.exit_code is None:
            self.exit_code, self.exit_message = code, message
        self._stop.set()

    async def run(self) -> int:
        budget = self.plan(self.default)
        level = log.info if budget.fits or budget.line_speed is not None else log.warning
        level(f"line budget: {budget.describe()}", baud=self.config.baud, port=self.config.port)
        try:
            self._open(self.opener(self.config.port, self.config.baud))
        except (OSError, serial.SerialException, ValueError) as exc:
            raise BridgeError(f"cannot open serial port {self.config.port}: {exc}") from exc
        now = self.clock()
        if self.config.fmt is OutputFormat.PROTOCOL:
            self._dispatch(self.session.open(now))
        else:
            self._open_ad5940(now)
        self._tasks = [
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._writer()),
            asyncio.create_task(self._ticker()),
        ]
        await self._stop.wait()
        await self._shutdown()
        return EXIT_OK if self.exit_code is None else self.exit_code

    async def _shutdown(self) -> None:
        if self.exit_code in (None, EXIT_UPSTREAM) and self.port is not None:
            if self.config.fmt is OutputFormat.PROTOCOL:
                self.pacer.drop_telemetry()  # the BYE goes out next, not after the queued stream
                bye = p.Bye(p.ErrorCode.SHUTDOWN, self.exit_message[:200] or "bridge stopping")
                self.session.reply(bye, self.clock())
            self._wake.set()
            deadline = self.clock() + 1.0 + len(self.pacer.queue) * 64 / self.rate
            while not self.pacer.idle and self.port is not None and self.clock() < deadline:
                await asyncio.sleep(0.01)
        for t in [*self._tasks, *([self._reopen_task] if self._reopen_task else [])]:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._close_port()
        log.info(
            "serial bridge stopped",
            frames_sent=self.pacer.frames_sent,
            dropped=dict(self.pacer.dropped_by_kind),
            decimated=self.session.decimated,
            outages=self.outages,
        )

    # -- port --------------------------------------------------------------------------------------------
    def _open(self, ser: serial.SerialBase) -> None:
        self.port = ser
        if self.config.low_latency:
            set_low_latency(ser)
            ftdi_latency_timer(self.config.port, self.config.latency_timer_ms)
        if self.config.fmt is OutputFormat.PROTOCOL:  # in ad5940 mode the device has nothing to say
            self._reader = _PortReader(ser, asyncio.get_running_loop(), self._on_serial, self._port_lost)
            self._reader.start()
        self.pacer.online = True
        self._port_up.set()
        self._wake.set()

    def _close_port(self) -> None:
        if self._reader is not None:
            self._reader.running = False
            self._reader = None
        if self.port is not None:
            with contextlib.suppress(Exception):
                self.port.close()
            self.port = None
        self._port_up.clear()

    def _port_lost(self, ser: serial.SerialBase, exc: Exception) -> None:
        if ser is not self.port or self._stop.is_set():
            return
        self.outages += 1
        self._close_port()
        self.pacer.online = False
        self.pacer.abort_current()
        dropped = self.pacer.drop_telemetry()
        log.warning("serial port lost; reopening", port=self.config.port, error=str(exc), dropped=dropped)
        self._reopen_task = asyncio.create_task(self._reopen())

    async def _reopen(self) -> None:
        start = self.clock()
        deadline = start + self.config.reopen_timeout_s
        delay, attempts = 0.05, 0
        while True:
            attempts += 1
            try:
                ser = self.opener(self.config.port, self.config.baud)
            except (OSError, serial.SerialException, ValueError) as exc:
                now = self.clock()
                if now >= deadline:
                    msg = (
                        f"serial port {self.config.port} did not come back within "
                        f"{self.config.reopen_timeout_s:g} s ({attempts} attempts; last error: {exc})"
                    )
                    log.error(msg)
                    self._finish(EXIT_PORT_GONE, msg)
                    return
                await self.sleep(min(delay, deadline - now))
                delay = min(2 * delay, 2.0)
                continue
            self._open(ser)
            self.session.last_rx = self.clock()  # the device was cut off, not silent: its timeout restarts
            log.info(
                "serial port back",
                port=self.config.port,
                after_s=round(self.clock() - start, 3),
                attempts=attempts,
            )
            if self.config.fmt is OutputFormat.AD5940:
                self._open_ad5940(self.clock())
            return

    def _on_serial(self, data: bytes) -> None:
        try:
            self._dispatch(self.session.feed(data, self.clock()))
        except _RestartSessionError:
            self._dispatch(self.session.open(self.clock()))
        self._wake.set()

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
        from .client import ClientError

        try:
            while True:
                frame = await self.client.next_frame()
                now = self.clock()
                msg = frame.message
                if isinstance(msg, p.Ack | p.Nak) and msg.ack_seq in self._pending:
                    fwd, _ = self._pending.pop(msg.ack_seq)
                    if fwd.message.MSG_TYPE == p.MsgType.CONTROL and fwd.device_seq is None:
                        log.info("upstream reply", reply=type(msg).__name__)
                    self.session.resolve(fwd, msg, "", now)
                    if isinstance(msg, p.Ack) and fwd.subscription is not None:
                        self._repace(fwd.subscription)
                elif self.config.fmt is OutputFormat.PROTOCOL:
                    self.session.forward(frame, now)
                else:
                    self._forward_ad5940(frame, now)
                self._wake.set()
        except ClientError as exc:
            bye = self.client.bye
            text = f"upstream closed: {bye.message if bye else exc}"
            log.error(text)
            self._finish(EXIT_UPSTREAM, text)

    def _repace(self, sub: Subscription) -> None:
        """Speed 0 in-process: run the scenario at the pace the line carries for this subscription."""
        if self.server is None or self.config.speed > 0:
            return
        budget = self.plan(sub)
        if budget.line_speed is not None:
            speed_ppm = max(1, round(budget.line_speed * 1e6))
            self._dispatch([Forward(p.Control.set_speed(speed_ppm), None, self.session.generation)])
            log.info("line-paced speed", speed=round(budget.line_speed, 3))

    # -- ad5940 ------------------------------------------------------------------------------------------
    def _open_ad5940(self, now: float) -> None:
        from .instrument import format_banner

        self.pacer.push(format_banner().encode("ascii"), now, droppable=False, kind="banner")
        self._wake.set()

    def _forward_ad5940(self, frame: p.Frame, now: float) -> None:
        text = self.formatter.text(frame.message)
        if text:
            self.pacer.push(text.encode("ascii"), now, droppable=True, kind="spectrum")

    # -- writer and timers -------------------------------------------------------------------------------
    async def _writer(self) -> None:
        while True:
            await self._port_up.wait()
            port = self.port
            assert port is not None
            chunk = self.pacer.pull(self.clock())
            if chunk:
                try:
                    await asyncio.to_thread(port.write, chunk)
                except Exception as exc:  # SerialException, OSError, or a port closed under us
                    self.pacer.write_failed(len(chunk))
                    self._port_lost(port, exc)
                continue
            now = self.clock()
            due = self.pacer.next_ready(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if due is None else max(0.001, due - now))

    async def _ticker(self) -> None:
        next_status = self.clock() + self.config.status_s
        while True:
            await asyncio.sleep(0.05)
            now = self.clock()
            if self.config.fmt is OutputFormat.PROTOCOL:
                try:
                    self.session.tick(now)
                except _RestartSessionError:
                    self._dispatch(self.session.open(now))
            for seq, (fwd, deadline) in list(self._pending.items()):
                if now >= deadline:
                    del self._pending[seq]
                    text = f"the upstream server did not answer within {self.config.upstream_timeout_s:g} s"
                    log.warning(text, request=type(fwd.message).__name__)
                    self.session.resolve(fwd, None, text, now)
            if now >= next_status:
                next_status = now + self.config.status_s
                self._status(now)
            self._wake.set()

    def _status(self, now: float) -> None:
        log.info(
            "line status",
            port="up" if self.port is not None else "down",
            frames_sent=self.pacer.frames_sent,
            bytes_sent=self.pacer.bytes_sent,
            dropped=dict(self.pacer.dropped_by_kind),
            decimated=self.session.decimated,
            divider=self.session.effective_divider,
            queued=self.pacer.queued(),
            t_sim_s=round(self.session.t_sim_us / 1e6, 1),
        )


# -- command line ------------------------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--server {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7700")
    return host or "127.0.0.1", int(port)


def register(subparsers: Any) -> None:
    sp = subparsers.add_parser(
        "serial-bridge",
        help="stream to a device on a serial port (protocol frames or AD5940-style text); see SERIAL.md",
    )
    sp.add_argument("--port", required=True, help="serial device (/dev/ttyUSB0) or pyserial URL (loop://)")
    sp.add_argument("--baud", type=int, default=921600, help="line rate, 8N1 (default 921600)")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", type=_host_port, metavar="HOST:PORT", help="a running eis-hil server")
    src.add_argument("--scenario", metavar="FILE", help="run this scenario in-process")
    sp.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="with --scenario: simulation speed (0: as fast as the line carries); with --server: the "
        "server's speed, for the line budget (default 1)",
    )
    sp.add_argument("--seed", type=int, help="with --scenario: seed (default: the scenario's)")
    sp.add_argument("--cells", type=cell_index, nargs="+", help="cells to serve (default: all)")
    sp.add_argument("--divider", type=int, default=1, help="send every n-th step's states (default 1)")
    sp.add_argument("--format", choices=[f.value for f in OutputFormat], default="protocol")
    sp.add_argument("--secret-file", help="shared secret for an upstream server that requires it")
    sp.add_argument("--name", default="serial-bridge", help="client name upstream")
    sp.add_argument(
        "--eis-interval",
        type=float,
        default=60.0,
        help="with --server: seconds between a cell's spectra, for the budget (default 60)",
    )
    sp.add_argument("--queue-ms", type=float, default=250.0, help="telemetry queued, in line time (250)")
    sp.add_argument(
        "--reopen-timeout", type=float, default=30.0, help="seconds to wait for a lost port (default 30)"
    )
    sp.add_argument("--latency-timer-ms", type=int, default=1, help="FTDI latency timer to set (default 1)")
    sp.add_argument(
        "--no-low-latency", action="store_true", help="leave low_latency and the FTDI latency timer alone"
    )
    sp.set_defaults(func=cmd_serial_bridge)


def cmd_serial_bridge(args: argparse.Namespace) -> int:
    from ._loop import run as run_loop

    try:
        return run_loop(_main(args))
    except BridgeError as exc:
        log.error("serial-bridge", error=str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while the model loads, before the signal handlers are installed
        return EXIT_OK


async def _main(args: argparse.Namespace, opener: Opener = open_serial) -> int:
    from .client import ClientError, HilClient

    if args.divider < 1 or args.divider > 65535:
        raise BridgeError(f"--divider {args.divider}: expected 1..65535")
    if args.baud <= 0:
        raise BridgeError(f"--baud {args.baud}: expected a positive line rate, e.g. 115200")
    try:
        secret = read_secret(args)
    except (OSError, ValueError) as exc:
        raise BridgeError(str(exc)) from None
    server: HilServer | None = None
    eis_interval: float | None = args.eis_interval
    sweep = False
    speed = args.speed
    if args.scenario:
        server, eis_interval, sweep = await _start_scenario(args, secret)
        host, port = "127.0.0.1", server.port
    else:
        if speed <= 0:
            raise BridgeError("--speed 0 needs --scenario: the bridge cannot pace someone else's server")
        host, port = args.server
    try:
        try:
            client = await HilClient.connect(host, port, name=args.name, secret=secret)
        except (ClientError, OSError, TimeoutError) as exc:
            raise BridgeError(f"cannot connect to the server at {host}:{port}: {exc}") from exc
        config = BridgeConfig(
            port=args.port,
            baud=args.baud,
            fmt=OutputFormat(args.format),
            cells=tuple(args.cells or ()),
            divider=args.divider,
            speed=speed,
            eis_interval_s=eis_interval,
            eis_sweep=sweep,
            queue_ms=args.queue_ms,
            reopen_timeout_s=args.reopen_timeout,
            low_latency=not args.no_low_latency,
            latency_timer_ms=args.latency_timer_ms,
        )
        try:
            bridge = SerialBridge(client, config, opener=opener, server=server)
            budget = bridge.plan(bridge.default)
            if server is not None and speed <= 0 and budget.line_speed is not None:
                reply = await client.control(p.Control.set_speed(max(1, round(budget.line_speed * 1e6))))
                if not isinstance(reply, p.Ack):
                    raise BridgeError(f"the in-process server refused SET_SPEED: {reply}")
            await client.subscribe(
                bridge.default.mask, bridge.default.cells, bridge.default.divider, bridge.default.eis_mode
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, bridge.stop)
            sys.stderr.write(
                f"eis-hil serial-bridge: {host}:{port} -> {args.port} at {args.baud} baud, "
                f"format {args.format}; Ctrl-C stops\n"
            )
            code = await bridge.run()
        finally:
            await client.close()
        if code == EXIT_PORT_GONE:
            sys.stderr.write(f"eis-hil serial-bridge: {bridge.exit_message}\n")
        return code
    finally:
        if server is not None:
            await server.stop("serial bridge stopping")


async def _start_scenario(
    args: argparse.Namespace, secret: bytes | None
) -> tuple[HilServer, float | None, bool]:
    from .model.store import ModelLoadError
    from .scenario import ScenarioError
    from .testing import start_server

    try:
        server = await start_server(
            args.scenario, seed=args.seed, host="127.0.0.1", port=0, speed=max(args.speed, 0.0), secret=secret
        )
    except ScenarioError as exc:
        raise BridgeError(f"scenario {args.scenario}: " + "; ".join(str(i) for i in exc.errors)) from exc
    except (ModelLoadError, OSError, ValueError) as exc:
        raise BridgeError(f"scenario {args.scenario}: {exc}") from exc
    eis = server.engine.scenario.eis
    return server, eis.interval_s, eis.mode == "sweep"
