"""What one engine step produces: plain frozen dataclasses holding numpy columns (read them, do not write)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from protocol import FaultKind
from protocol._constants import FaultPhase

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U16 = npt.NDArray[np.uint16]
C128 = npt.NDArray[np.complex128]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class CellColumns:
    """One value per cell (index = cell number)."""

    voltage_v: F64
    current_a: F64
    temp_c: F64
    soc: F64
    soh: F64
    flags: U16
    """``protocol.CellFlags`` bits."""


@dataclass(frozen=True, eq=False)
class Spectrum:
    """Whole spectra of several cells measured together (instant mode, or a completed sweep)."""

    time_us: int
    """End of the measurement."""
    sweep_duration_us: int
    """0 for instant output."""
    cells: I64
    spectrum_ids: I64
    """Per-cell counters; the EIS_POINTs of a sweep carry the same id."""
    freq_hz: F64
    """(F,) in measurement order (high to low)."""
    z_ohm: C128
    """(n, F) as REPORTED (measurement and spectrum faults applied; NaN possible); standard sign."""
    z_true_ohm: C128
    """(n, F) the cell's real impedance at the operating point of each point (ground truth)."""
    dropped: Bool
    """(n, F) points the instrument lost: the transport leaves them out of the frame."""
    soc: F64
    soh: F64
    temp_c: F64
    current_a: F64
    """Operating point at the end of the measurement (per cell)."""
    flags: U16


@dataclass(frozen=True, eq=False)
class SweepPoints:
    """Points of one sweep that completed during this step (EIS_POINT frames), for several cells."""

    cells: I64
    spectrum_ids: I64
    n_points: int
    point_index: I64
    """(P,) positions in the sweep."""
    time_us: I64
    """(P,) when each point's measurement completed."""
    freq_hz: F64
    z_ohm: C128
    """(n, P) reported."""
    dropped: Bool
    flags: U16


@dataclass(frozen=True)
class FaultEvent:
    time_us: int
    fault_id: int
    kind: FaultKind
    phase: FaultPhase
    cells: tuple[int, ...]
    """Empty for stream faults."""
    severity: float


@dataclass(frozen=True)
class StreamFault:
    """An active spectrum/transport fault the transport carries out on the frames it sends.

    ``seed`` seeds the transport's own ``numpy.random.Generator`` for the per-frame draws, so a replay with
    the same scenario and seed damages the same frames (given the same frame sequence)."""

    fault_id: int
    kind: FaultKind
    params: Mapping[str, float | int | str]
    seed: int
    start_us: int
    end_us: int | None


@dataclass(frozen=True)
class SegmentEvent:
    time_us: int
    index: int
    """Running number of the leaf segment (after expanding repeat and sweep)."""
    kind: str
    phase: Literal["start", "end"]
    reason: str
    """start: ""; end: duration, until, cutoff_low, cutoff_high, temperature, cv_cutoff, cycles."""
    label: str | None


@dataclass(frozen=True, eq=False)
class StepOutput:
    step: int
    """Number of steps done; ``time_us`` = step / step_rate."""
    time_us: int
    true: CellColumns
    """Ground truth."""
    reported: CellColumns
    """What a sensor reports (measurement faults on voltage/current/temperature applied): stream this."""
    spectra: tuple[Spectrum, ...]
    points: tuple[SweepPoints, ...]
    fault_events: tuple[FaultEvent, ...]
    stream_faults: tuple[StreamFault, ...]
    """Every stream fault active during this step (not only those that started)."""
    segment_events: tuple[SegmentEvent, ...]
    ambient_c: float
    finished: bool
    """The timeline has ended; further steps rest the cells (and let running sweeps complete)."""
