"""Bus load of a CAN bridge, from the DBC's frame layouts and the mapping's periods, before anything is sent.

Classical CAN frames are counted at their worst-case length with bit stuffing (Davis, Burns, Bril, Lukkien,
"Controller Area Network (CAN) schedulability analysis", Real-Time Systems 35, 2007): ``g + 8n + 13 +
floor((g + 8n - 1) / 4)`` bits with g = 34 (11-bit ID) or 54 (29-bit ID), n data bytes, interframe space
included; 135 bits for an 8-byte standard frame. CAN FD frames: arbitration and end of frame at the nominal
bitrate, the data phase (DLC, data, stuff count, CRC) at the data bitrate, both with worst-case stuffing
(one bit in four for the arbitration part, fixed stuff bits every four in the data phase), expressed as
the equivalent number of nominal bits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from .mapping import MessagePlan

DEFAULT_MAX_LOAD = 0.7
"""Plan to at most this share of the bus: the rest is for the BMS's own traffic and retransmissions."""


class BudgetError(Exception):
    """The stream does not fit on the bus and decimation was not allowed: the message has the figures."""


def classic_frame_bits(n_bytes: int, *, extended: bool = False) -> int:
    g = 54 if extended else 34
    return g + 8 * n_bytes + 13 + (g + 8 * n_bytes - 1) // 4


def fd_frame_bits(n_bytes: int, bitrate: int, data_bitrate: int, *, extended: bool = False) -> float:
    """Worst-case CAN FD frame with bitrate switching, in nominal bit times."""
    arbitration = (30 if extended else 17) * 1.25  # SOF .. BRS, stuffed
    tail = 1 + 1 + 1 + 7 + 3  # CRC delimiter, ACK slot and delimiter, EOF, interframe space
    crc = 17 if n_bytes <= 16 else 21
    data_fields = 1 + 4 + 8 * n_bytes + 4 + crc  # ESI, DLC, data, stuff count, CRC
    data = data_fields + math.ceil(data_fields / 4)  # fixed stuff bits
    return arbitration + tail + data * bitrate / max(data_bitrate, 1)


@dataclasses.dataclass(frozen=True)
class MessageLoad:
    name: str
    frame_id: int
    frames_per_period: int
    period_s: float
    bits_per_frame: float

    @property
    def bits_per_sim_s(self) -> float:
        return self.frames_per_period * self.bits_per_frame / self.period_s


@dataclasses.dataclass(frozen=True)
class BusBudget:
    bitrate: int
    max_load: float
    speed: float
    """Simulation speed; 0: unpaced (rates per simulated second)."""
    messages: tuple[MessageLoad, ...]
    decimation: int
    """Every period is multiplied by this (1: as the mapping says)."""
    bus_speed: float | None
    """Speed 0 only: the simulation speed at which the stream fills ``max_load`` of the bus."""

    @property
    def bits_per_s(self) -> float:
        speed = self.speed if self.speed > 0 else 1.0
        return sum(m.bits_per_sim_s for m in self.messages) * speed

    @property
    def load(self) -> float:
        return self.bits_per_s / self.bitrate

    @property
    def load_effective(self) -> float:
        return self.load / self.decimation

    @property
    def fits(self) -> bool:
        return self.load <= self.max_load

    def describe(self) -> str:
        parts = ", ".join(
            f"{m.name} 0x{m.frame_id:X} {m.frames_per_period} frames/{m.period_s * 1e3:g} ms"
            for m in self.messages
        )
        head = f"bus {self.bitrate} bit/s; {parts}: {self.bits_per_s:.0f} bit/s worst case"
        if self.bus_speed is not None:
            return (
                f"{head} per simulated second; speed 0: running at {self.bus_speed:.3g}x, "
                f"{100 * self.max_load:.0f} % of the bus"
            )
        if self.fits:
            return f"{head}, {100 * self.load:.1f} % of the bus: fits (limit {100 * self.max_load:.0f} %)"
        text = f"{head}, {100 * self.load:.1f} % of the bus: does NOT fit (limit {100 * self.max_load:.0f} %)"
        if self.decimation > 1:
            return (
                f"{text}; periods multiplied by {self.decimation} (decimation), now "
                f"{100 * self.load_effective:.1f} %"
            )
        return text


def plan_bus(
    plans: Sequence[MessagePlan],
    bitrate: int,
    *,
    data_bitrate: int | None = None,
    speed: float = 1.0,
    max_load: float = DEFAULT_MAX_LOAD,
    decimate: bool = True,
) -> BusBudget:
    """The load of ``plans`` on a bus of ``bitrate`` at simulation ``speed``; decimation when it does not fit
    and ``decimate``, BudgetError when it does not fit and not ``decimate``."""
    loads = []
    for plan in plans:
        msg = plan.message
        n = int(msg.length)
        if msg.is_fd:
            bits = fd_frame_bits(n, bitrate, data_bitrate or bitrate, extended=bool(msg.is_extended_frame))
        else:
            bits = classic_frame_bits(n, extended=bool(msg.is_extended_frame))
        loads.append(MessageLoad(plan.name, int(msg.frame_id), len(plan.frames), plan.period_s, bits))
    budget = BusBudget(bitrate, max_load, speed, tuple(loads), 1, None)
    if speed <= 0:
        per_sim_s = budget.bits_per_s
        bus_speed = max_load * bitrate / per_sim_s if per_sim_s > 0 else 1.0
        return dataclasses.replace(budget, bus_speed=bus_speed)
    if budget.fits:
        return budget
    if not decimate:
        raise BudgetError(
            budget.describe() + "; refused (--overload refuse): raise --bitrate, lengthen the "
            "periods in the mapping, serve fewer cells (--cells) or lower --speed"
        )
    return dataclasses.replace(budget, decimation=math.ceil(budget.load / max_load))
