"""What a session of a ``HilServer`` is to the stream, whatever carries its bytes (a TCP socket, the loopback
pipe, a serial port): the subscription the stream scheduler filters each frame by (``wants``), and what the
peer's SUBSCRIBE and CONTROL requests do to the server (the control rate limit included). ``tcp.Session``
and ``serial.served.LineSubscriber`` mix it in; the protocol checks before them are ``ServerSession``'s.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import protocol as p
from hil_server.client.text import enum_name
from hil_server.session.config import ServerConfig
from hil_server.session.server_session import DETAIL_MAX
from hil_server.stream.source import BIT_POINT, BIT_STATES, INSTANT, ControlRefusedError, Item, Source
from hil_server.stream.stream_faults import TransportFaults


class Served(Protocol):
    """What a subscriber needs of its server (``tcp.HilServer``)."""

    config: ServerConfig
    source: Source
    streaming_changed: asyncio.Event

    def apply_control(self, msg: p.Control, owner: object = None) -> int: ...

    def fault_starts(self, session: object) -> list[p.FaultEvent]: ...

    def update_eis_modes(self) -> None: ...


class Subscriber:
    """The stream side of one session of a server: what it subscribed to, and its control budget."""

    server: Served
    mask: int
    divider: int
    eis_mode: int
    """EisMode the peer asked for (0: the scenario's)."""
    cells: set[int] | None
    """The cells subscribed to (None: all)."""
    transport: TransportFaults
    """The stream faults' state for this session's frames."""
    control_tokens: float
    control_refill: float

    if TYPE_CHECKING:
        log: Any

        def reply(self, message: p.Message, now: float = 0.0) -> None: ...

    def init_subscription(self, mask: int, now: float) -> None:
        """Nothing subscribed yet (``mask`` 0) or a default subscription; a full control budget."""
        self.mask = mask
        self.divider = 1
        self.eis_mode = 0
        self.transport = TransportFaults()
        self.cells = None
        self.control_tokens = self.server.config.control_rate_per_s
        self.control_refill = now

    def set_subscription(self, mask: int, divider: int, eis_mode: int, cells: tuple[int, ...]) -> None:
        """Subscribe (``cells`` empty: all) and let the stream know: the scheduler wakes, the source learns
        which EIS outputs are wanted."""
        self.mask = int(mask)
        self.divider = max(1, divider)
        self.eis_mode = int(eis_mode)
        self.cells = set(cells) if cells else None
        self.server.streaming_changed.set()
        self.server.update_eis_modes()

    def subscribe_request(self, seq: int, msg: p.Subscribe, cells: tuple[int, ...], now: float) -> None:
        """A SUBSCRIBE that passed the session's checks: subscribe, ACK with the number of cells."""
        events_before = self.mask & p.SubscribeMask.FAULT_EVENT
        self.set_subscription(msg.msg_mask, msg.state_divider, msg.eis_mode, cells)
        self.reply(p.Ack(seq, 0, len(cells) if cells else self.server.source.n_cells), now)
        if self.mask & p.SubscribeMask.FAULT_EVENT and not events_before:
            for event in self.server.fault_starts(self):  # the faults already active (SPEC.md 6.4)
                self.reply(event, now)

    def control_request(self, seq: int, msg: p.Control, now: float) -> None:
        """A CONTROL: at most ``control_rate_per_s`` a second (token bucket), applied to the server, answered
        with ACK (the command's result) or NAK (why it was refused)."""
        rate = self.server.config.control_rate_per_s
        self.control_tokens = min(rate, self.control_tokens + (now - self.control_refill) * rate)
        self.control_refill = now
        if self.control_tokens < 1:
            text = f"more than {rate:g} commands/s"
            self.reply(p.Nak(seq, msg.command, p.ErrorCode.RATE_LIMITED, text), now)
            return
        self.control_tokens -= 1
        try:
            result = self.server.apply_control(msg, self)
        except ControlRefusedError as exc:
            self.reply(p.Nak(seq, msg.command, exc.code, str(exc)[:DETAIL_MAX]), now)
            self.log.info("control refused", command=msg.command, reason=str(exc))
            return
        self.log.info("control", command=enum_name(p.ControlCommand, msg.command), result=result)
        self.reply(p.Ack(seq, msg.command, result), now)

    def wants(self, item: Item, default_mode: int) -> bool:
        """Whether this session gets ``item`` (the divider is the scheduler's check, before this one)."""
        if not self.mask & item.bit:
            return False
        if item.bit == BIT_STATES:  # the most frequent: no cell or mode of its own (cells filtered later)
            return True
        if item.cell is not None and self.cells is not None and item.cell not in self.cells:
            return False
        mode = self.eis_mode or default_mode
        if item.bit == BIT_POINT:
            return mode != INSTANT
        if item.eis_mode and mode:  # a replayed capture has no default: every spectrum goes out
            return item.eis_mode == mode
        return True
