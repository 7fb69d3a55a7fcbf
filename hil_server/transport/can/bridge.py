"""The CAN bridge: CELL_STATES in, DBC-encoded CAN frames out.

``CanEncoder`` is sans-IO: it collects one step's records (a pack of more than 169 cells arrives as several
CELL_STATES frames with the same step), and when a message's period has passed in simulated time it builds
that message's frames (one per multiplexer value) from the step's values with cantools. ``run_bridge`` is
the asyncio glue: upstream client, bus, optional log writer, stop on a signal or at a simulated time.

Invalid flags per signal: the stream's MEASUREMENT_FAULT bit is per cell, whatever signal the fault distorts.
The encoder follows the FAULT_EVENTs and, where it knows each measurement fault's signal (``fault_signals``:
from the scenario when the bridge runs it), flags only that signal: a stuck temperature sensor invalidates
the temperature, not the voltage, and a fault on the impedance reading invalidates neither. A fault whose
signal it does not know (``--server``, faults injected by CONTROL) flags every signal of the cell. The
FAULT_EVENT of a step follows its CELL_STATES, so a step where a cell's bit turns on is sent once the next
frame shows the events are complete: one step of latency at the start of a fault, none otherwise.

Frames carry the simulated time of their step as ``timestamp`` (seconds), so the log file replays with
``can.Player`` at the simulation's pace and a reader can tell which step a frame came from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import can
import numpy as np
import structlog

import protocol as p

from .mapping import FIELDS, MessagePlan, Slot

if TYPE_CHECKING:
    from hil_server.client.client import HilClient

log = structlog.get_logger(__name__)

MF = int(p.CellFlags.MEASUREMENT_FAULT)
FIELD_SIGNAL = {"voltage": "voltage", "temperature": "temperature", "current": "current"}
"""Mapping field -> the scenario's measured signal (soc and soh are estimates: no measurement fault acts
on them)."""


@dataclasses.dataclass
class EncoderStats:
    frames: int = 0
    steps: int = 0
    invalid: int = 0
    """Values sent with their invalid flag set (measurement fault or out of the signal's range)."""
    clamped: int = 0
    """Values outside the signal's range, sent at the nearest limit (and flagged invalid if they can be)."""
    send_errors: int = 0


class CanEncoder:
    def __init__(
        self,
        plans: Sequence[MessagePlan],
        cells: Sequence[int],
        decimation: int = 1,
        channel: str | None = None,
        fault_signals: dict[int, str] | None = None,
    ) -> None:
        self.plans = list(plans)
        self.channel = channel
        self.fault_signals = dict(fault_signals or {})
        self.active: dict[int, tuple[str | None, frozenset[int]]] = {}
        """Measurement faults under way: fault_id -> (signal if known, cells; empty = all)."""
        self.cells = list(cells)
        self.pos = {cell: i for i, cell in enumerate(self.cells)}
        n = len(self.cells)
        self.columns = {col: np.zeros(n, np.int64) for col, _, _ in FIELDS.values()}
        self.flags = np.zeros(n, np.uint16)
        self._prev_mf = np.zeros(n, bool)
        self.period_us = [max(1, round(plan.period_s * 1e6 * decimation)) for plan in self.plans]
        self.next_due: list[int | None] = [None] * len(self.plans)
        self.stats = EncoderStats()
        self._step: int | None = None
        self._seen: set[int] = set()
        self._t_sim_us = 0

    def update(self, states: p.CellStates) -> bool:
        """Take one CELL_STATES frame; True when every cell of its step has arrived."""
        if states.step != self._step:
            self._step = states.step
            self._seen = set()
        self._t_sim_us = states.t_sim_us
        records = states.records
        idx = np.array([self.pos.get(int(c), -1) for c in records["cell"]], np.int64)
        ok = idx >= 0
        for col, arr in self.columns.items():
            arr[idx[ok]] = records[col][ok]
        self.flags[idx[ok]] = records["flags"][ok]
        self._seen.update(int(c) for c in records["cell"][ok])
        return len(self._seen) >= len(self.cells)

    def event(self, event: p.FaultEvent) -> None:
        """Follow a FAULT_EVENT: which measurement faults act now, and on which signal."""
        if not 0x20 <= event.kind < 0x40:
            return
        if event.phase == p.FaultPhase.START:
            cells = frozenset(int(c) for c in event.cells)
            self.active[event.fault_id] = (self.fault_signals.get(event.fault_id), cells)
        else:
            self.active.pop(event.fault_id, None)

    def needs_events(self) -> bool:
        """True when a cell's MEASUREMENT_FAULT bit turned on at the step just completed: its FAULT_EVENT
        (which says the signal) follows, so the step's frames should wait for the next frame."""
        mf = (self.flags & MF) != 0
        turned_on = bool(np.any(mf & ~self._prev_mf))
        self._prev_mf = mf
        return turned_on

    def _signal_invalid(self, cell: int, field: str) -> bool:
        """A cell with its MEASUREMENT_FAULT bit set: is this field's reading one the faults distort?"""
        covering = [sig for sig, cells in self.active.values() if not cells or cell in cells]
        if not covering:
            return True  # the bit without a fault we know of: trust the bit
        signal = FIELD_SIGNAL.get(field)
        return any(sig is None or sig == signal for sig in covering)

    def due(self) -> list[can.Message]:
        """The frames of every message whose period has come, at the last complete step."""
        t = self._t_sim_us
        out: list[can.Message] = []
        self.stats.steps += 1
        for i, plan in enumerate(self.plans):
            due = self.next_due[i]
            if due is not None and t < due:
                continue
            period = self.period_us[i]
            nxt = t + period if due is None else due
            while nxt <= t:
                nxt += period
            self.next_due[i] = nxt
            out.extend(self._frames(plan, t))
        return out

    def _frames(self, plan: MessagePlan, t_us: int) -> list[can.Message]:
        msg = plan.message
        out = []
        for frame in plan.frames:
            data: dict[str, float] = dict(frame.fill)
            for slot in frame.slots:
                value, invalid = self._value(slot)
                data[slot.signal] = value
                if slot.invalid_flag is not None:
                    data[slot.invalid_flag] = slot.invalid_value if invalid else _valid_value(slot)
                    self.stats.invalid += int(invalid)
            payload = msg.encode(data, scaling=True, strict=True)
            out.append(
                can.Message(
                    timestamp=t_us / 1e6,
                    arbitration_id=int(msg.frame_id),
                    is_extended_id=bool(msg.is_extended_frame),
                    is_fd=bool(msg.is_fd),
                    bitrate_switch=bool(msg.is_fd),
                    is_rx=False,
                    channel=self.channel,
                    data=payload,
                )
            )
        self.stats.frames += len(out)
        return out

    def _value(self, slot: Slot) -> tuple[float, bool]:
        i = self.pos[slot.cell]
        column, factor, _ = FIELDS[slot.field]
        physical = float(self.columns[column][i]) * factor * slot.scale + slot.offset
        bits = int(self.flags[i]) & slot.invalid_when
        if bits & MF and not self._signal_invalid(slot.cell, slot.field):
            bits &= ~MF
        invalid = bool(bits)
        raw = round((physical - slot.raw_offset) / slot.resolution)
        value = raw * slot.resolution + slot.raw_offset
        lo, hi = slot.minimum, slot.maximum
        if (lo is not None and value < lo) or (hi is not None and value > hi) or not math.isfinite(value):
            self.stats.clamped += 1
            value = min(max(value, lo if lo is not None else value), hi if hi is not None else value)
            invalid = invalid or slot.invalid_flag is not None
        return value, invalid


def _valid_value(slot: Slot) -> int:
    """The flag value meaning valid: the other of a one-bit flag, else 0."""
    return 1 - slot.invalid_value if slot.invalid_value in (0, 1) else 0


@dataclasses.dataclass
class BridgeResult:
    code: int
    message: str
    stats: EncoderStats


async def run_bridge(
    client: HilClient,
    bus: can.BusABC,
    encoder: CanEncoder,
    *,
    until_us: int | None = None,
    on_frame: Callable[[can.Message], None] | None = None,
    stop: asyncio.Event | None = None,
    status_every_steps: int = 600,
) -> BridgeResult:
    """Forward until ``until_us`` of simulated time, ``stop`` set, or the upstream closes (code 1)."""
    from hil_server.client.client import ClientError

    stop = stop or asyncio.Event()
    stopper = asyncio.create_task(stop.wait())
    held = False  # a complete step waiting for its FAULT_EVENTs

    def send_due() -> None:
        for out in encoder.due():
            try:
                bus.send(out, timeout=0.1)
            except can.CanError as exc:
                encoder.stats.send_errors += 1
                if encoder.stats.send_errors in (1, 10, 100) or encoder.stats.send_errors % 1000 == 0:
                    log.warning("can send failed", error=str(exc), count=encoder.stats.send_errors)
                continue
            if on_frame is not None:
                on_frame(out)

    try:
        while True:
            getter = asyncio.create_task(client.next_frame())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if held:
                    send_due()
                return BridgeResult(0, "stopped", encoder.stats)
            try:
                frame = getter.result()
            except ClientError as exc:
                if held:
                    send_due()
                bye = client.bye
                return BridgeResult(1, f"upstream closed: {bye.message if bye else exc}", encoder.stats)
            msg = frame.message
            if isinstance(msg, p.FaultEvent):
                encoder.event(msg)
                continue
            if held:
                held = False
                send_due()
            if not isinstance(msg, p.CellStates) or not encoder.update(msg):
                continue
            if until_us is not None and msg.t_sim_us > until_us:
                return BridgeResult(0, f"reached {until_us / 1e6:g} s of simulated time", encoder.stats)
            if encoder.needs_events():
                held = True
            else:
                send_due()
            if encoder.stats.steps % status_every_steps == 0:
                log.info(
                    "can status", t_sim_s=round(msg.t_sim_us / 1e6, 1), **dataclasses.asdict(encoder.stats)
                )
    finally:
        stopper.cancel()


def log_channel(channel: str | None) -> str | None:
    """The channel to stamp on frames for the log: a name whose trailing number a BLF file cannot hold
    (u16, e.g. a virtual channel named after a uuid) is left out rather than failing the writer."""
    number = can.util.channel2int(channel)
    return channel if number is None or 0 <= number < 0xFFFF else None


def open_bus(interface: str, channel: str | None, bitrate: int, data_bitrate: int | None, fd: bool) -> Any:
    """A python-can bus; raises ValueError with one line on any failure to open it."""
    kwargs: dict[str, Any] = {"interface": interface, "bitrate": bitrate}
    if channel is not None:
        kwargs["channel"] = channel
    if fd:
        kwargs["fd"] = True
        if data_bitrate:
            kwargs["data_bitrate"] = data_bitrate
    try:
        return can.Bus(**kwargs)
    except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as exc:
        where = f" channel {channel}" if channel else ""
        raise ValueError(f"cannot open CAN interface {interface}{where}: {exc}") from None
