"""The typed, validated scenario: frozen dataclasses the simulation engine consumes.

Conventions: SI units with the unit in the name; current and power positive = discharge (as on the wire);
SOC and SOH are fractions 0..1; cell indices are 0-based (as on the wire); times in simulated seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from protocol import FaultKind

EisMode: TypeAlias = Literal["instant", "sweep"]
ConditionQuantity: TypeAlias = Literal["voltage_v", "soc", "temp_c"]
ConditionOp: TypeAlias = Literal["<", "<=", ">", ">="]
CellScope: TypeAlias = Literal["any", "all", "mean"]
SweepParameter: TypeAlias = Literal["ambient_temp_c", "soc", "soh"]
DriveSignal: TypeAlias = Literal["current", "power"]


MeasuredSelect: TypeAlias = Literal["nearest", "sequence"]


@dataclass(frozen=True)
class MeasuredEis:
    """Spectra measured on real cells (generic EIS CSV) streamed in place of the model's."""

    file: Path
    select: MeasuredSelect
    """nearest: the measured spectrum closest to the cell's operating point; sequence: the file's spectra in
    order, one per spectrum requested, each cell on its own, wrapping around."""
    spectra: tuple[Any, ...]
    """``hil_server.eis_data.Spectrum`` objects, read and checked when the scenario is loaded."""


@dataclass(frozen=True)
class EisSchedule:
    interval_s: float | None
    """Time between automatic spectra; None = only when an ``eis`` segment or a client asks."""
    mode: EisMode
    frequencies_hz: tuple[float, ...]
    """Measurement order: descending, as an instrument sweeps."""
    periods_per_point: float
    """Sweep mode: periods of each frequency measured per point (a point takes periods / f + settle_s)."""
    settle_s: float
    measured: MeasuredEis | None = None
    """Measured spectra instead of the model's; None: the model."""


@dataclass(frozen=True)
class Spread:
    """Manufacturing spread, drawn once per cell from the scenario seed (normal distributions)."""

    capacity_rel_std: float
    resistance_rel_std: float
    soc_std: float


@dataclass(frozen=True)
class Cells:
    count: int
    profile: str
    capacity_ah: float | None
    """Nominal capacity override; None = the profile's nominal capacity."""
    soc: float
    soh: float
    temp_c: float
    spread: Spread


@dataclass(frozen=True)
class Condition:
    quantity: ConditionQuantity
    op: ConditionOp
    threshold: float

    def holds(self, value: float) -> bool:
        if self.op == "<":
            return value < self.threshold
        if self.op == "<=":
            return value <= self.threshold
        if self.op == ">":
            return value > self.threshold
        return value >= self.threshold


@dataclass(frozen=True)
class Until:
    """The segment ends as soon as ANY condition holds; ``cells`` says over which cells each is evaluated."""

    conditions: tuple[Condition, ...]
    cells: CellScope


@dataclass(frozen=True, eq=False)
class DriveCycle:
    """A loaded profile: time_s strictly increasing, value in A (current) or W (power), both read-only."""

    name: str
    source: Path
    signal: DriveSignal
    time_s: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1] - self.time_s[0])


@dataclass(frozen=True)
class _Segment:
    line: int
    """Line of the segment in the scenario file, for messages at run time."""
    label: str | None


@dataclass(frozen=True)
class _Load(_Segment):
    duration_s: float | None
    until: Until | None


@dataclass(frozen=True)
class Rest(_Load):
    pass


@dataclass(frozen=True)
class ConstantCurrent(_Load):
    current_a: float


@dataclass(frozen=True)
class ConstantPower(_Load):
    power_w: float


@dataclass(frozen=True)
class DriveCycleSegment(_Load):
    cycle: DriveCycle
    scale: float
    loops: int


@dataclass(frozen=True)
class CcCvCharge(_Load):
    current_a: float
    """Charge current magnitude (> 0); on the wire it appears negative (positive = discharge)."""
    voltage_v: float
    cutoff_current_a: float


@dataclass(frozen=True)
class Ambient(_Segment):
    """Instantaneous: sets the chamber setpoint; with a rate, ramps towards it while later segments run."""

    temp_c: float
    rate_c_per_min: float | None


@dataclass(frozen=True)
class Soh(_Segment):
    """Instantaneous: sets SOH of every cell and/or the aging rate that applies from now on."""

    value: float | None
    fade_per_h: float | None


@dataclass(frozen=True)
class EisRequest(_Segment):
    pass


@dataclass(frozen=True)
class Repeat(_Segment):
    count: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Sweep(_Segment):
    """For each value: set the parameter on every cell (or the chamber), then run ``segments``."""

    parameter: SweepParameter
    values: tuple[float, ...]
    segments: tuple[Segment, ...]


Segment: TypeAlias = (
    Rest
    | ConstantCurrent
    | ConstantPower
    | DriveCycleSegment
    | CcCvCharge
    | Ambient
    | Soh
    | EisRequest
    | Repeat
    | Sweep
)


@dataclass(frozen=True)
class Fault:
    line: int
    kind: FaultKind
    start_s: float | None
    """Absolute start in simulation time; None when ``start_segment`` is set."""
    start_segment: str | None
    """Label of the segment whose (first) start anchors the fault; the fault starts start_offset_s later."""
    start_offset_s: float
    end_s: float | None
    duration_s: float | None
    """At most one of end_s and duration_s; both None = until the end of the scenario."""
    cells: tuple[int, ...] | None
    """0-based indices; None for transport faults, which act on the stream rather than on cells."""
    severity: float
    seed: int
    params: Mapping[str, float | int | str] = field(default_factory=dict)
    """Kind-specific parameters with defaults filled in (see scenarios/README.md)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    step_rate_hz: float
    eis: EisSchedule
    cells: Cells
    ambient_temp_c: float
    timeline: tuple[Segment, ...]
    faults: tuple[Fault, ...]
    source: Path
    sha256: bytes
    """SHA-256 of the scenario file's bytes (what SERVER_HELLO carries); referenced CSVs are not included."""
