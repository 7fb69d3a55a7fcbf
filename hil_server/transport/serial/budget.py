"""Line budget of a UART stream: bytes per second needed against baud / 10 (8N1), and the state
divider that makes it fit (decimation)."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import TYPE_CHECKING

import protocol as p
from hil_server.stream.source import MAX_CELLS_PER_FRAME

if TYPE_CHECKING:
    pass


HEADROOM = 0.9
"""Plan the stream to at most this share of the line: the rest absorbs replies, hellos and bursts."""
_ENVELOPE = p.HEADER_SIZE + p.CRC_SIZE
HEARTBEAT_FRAME_BYTES = _ENVELOPE + p.fixed_payload_size(p.MsgType.HEARTBEAT)
STATES_PER_FRAME = MAX_CELLS_PER_FRAME
_STATES_FIXED = p.fixed_payload_size(p.MsgType.CELL_STATES)
_SPECTRUM_FIXED = p.fixed_payload_size(p.MsgType.EIS_SPECTRUM)
_SPECTRUM_PER_FREQ = 3 * 4
"""freq_hz, z_re_ohm and z_im_ohm, float32 each (EisSpectrum.ARRAY_FIELDS)."""
MAX_SPECTRUM_POINTS = (p.MAX_PAYLOAD_SIZE - _SPECTRUM_FIXED) // _SPECTRUM_PER_FREQ
"""The most points one EIS_SPECTRUM carries (337)."""


class BridgeError(Exception):
    """Bad configuration or a port that cannot be opened at start: the message says what and why."""


# -- line budget -------------------------------------------------------------------------------------------


def line_rate(baud: int) -> float:
    """Bytes per second of an 8N1 UART: one start bit, eight data bits, one stop bit per byte."""
    return baud / 10.0


def states_bytes(n_cells: int) -> int:
    """Bytes on the wire of one step's CELL_STATES (split into frames of at most STATES_PER_FRAME records)."""
    full, rest = divmod(n_cells, STATES_PER_FRAME)
    frames = [STATES_PER_FRAME] * full + ([rest] if rest else [])
    record = p.CELL_STATE_DTYPE.itemsize
    return sum(_ENVELOPE + _STATES_FIXED + record * n for n in frames)


def spectrum_bytes(n_freq: int) -> int:
    return _ENVELOPE + _SPECTRUM_FIXED + _SPECTRUM_PER_FREQ * n_freq


POINT_BYTES = _ENVELOPE + p.fixed_payload_size(p.MsgType.EIS_POINT)


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
        from hil_server.transport.serial.ad5940 import TYPICAL_LINE_BYTES

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
