"""Fault state and the measurement layer: what a faulty sensor REPORTS, never the true state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from protocol import FaultKind

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
C128 = npt.NDArray[np.complex128]
Bool = npt.NDArray[np.bool_]

MEASUREMENT_KINDS = frozenset(k for k in FaultKind if 0x20 <= k < 0x40)


@dataclass
class FaultState:
    fault_id: int
    kind: FaultKind
    cells: I64 | None
    """None: stream fault (no cells)."""
    severity: float
    params: Mapping[str, float | int | str]
    seed: int
    start_s: float | None
    """None until an anchoring segment starts."""
    end_s: float | None
    duration_s: float | None
    anchor: str | None
    offset_s: float
    injected: bool
    rng: np.random.Generator
    active: bool = False
    done: bool = False
    frozen: dict[str, F64 | C128] = field(default_factory=dict)
    """Per signal: the value the reading sticks at (frozen), cells x points for impedance."""

    @property
    def signal(self) -> str:
        return str(self.params.get("signal", "impedance"))

    def mask(self, n_cells: int) -> Bool:
        m = np.zeros(n_cells, dtype=bool)
        if self.cells is not None:
            m[self.cells] = True
        return m


_UNIT = {"impedance": "ohm", "voltage": "v", "current": "a", "temperature": "c"}


def apply_real(fault: FaultState, values: F64, cells: I64, time_s: float) -> F64:
    """A measurement fault on a per-cell reading (voltage, current or temperature) of ``cells``."""
    hit = np.isin(cells, fault.cells) if fault.cells is not None else np.ones(cells.shape, bool)
    if not hit.any():
        return values
    out = values.copy()
    sel = out[hit]
    kind, p = fault.kind, fault.params
    if kind == FaultKind.NOISE:
        sigma = np.abs(sel) / 10 ** (float(p["snr_db"]) / 20)
        sel = sel + sigma * fault.rng.standard_normal(sel.shape)
    elif kind == FaultKind.OUTLIERS:
        jump = fault.rng.random(sel.shape) < float(p["probability"])
        sign = np.where(fault.rng.random(sel.shape) < 0.5, -1.0, 1.0)
        sel = np.where(jump, sel * (1 + sign * float(p["magnitude"])), sel)
    elif kind == FaultKind.GAIN:
        sel = sel * float(p["gain"])
    elif kind == FaultKind.OFFSET:
        sel = sel + float(p[f"offset_{_UNIT[fault.signal]}"])
    elif kind == FaultKind.DRIFT:
        sel = sel * (1 + float(p["rate_per_h"]) * (time_s - (fault.start_s or 0.0)) / 3600)
    elif kind == FaultKind.QUANTISATION:
        lsb = float(p[f"lsb_{_UNIT[fault.signal]}"])
        sel = np.round(sel / lsb) * lsb
    elif kind == FaultKind.FROZEN:
        stuck = fault.frozen.setdefault(fault.signal, np.full(hit.shape, np.nan))
        stuck_sel = np.asarray(stuck[hit].real, dtype=np.float64)
        fresh = np.isnan(stuck_sel)
        stuck_sel[fresh] = sel[fresh]
        stuck[hit] = stuck_sel
        sel = stuck_sel
    elif kind == FaultKind.NAN:
        sel = np.where(fault.rng.random(sel.shape) < float(p["probability"]), np.nan, sel)
    out[hit] = sel
    return out


def apply_impedance(
    fault: FaultState,
    z: C128,
    dropped: Bool,
    cells: I64,
    point_index: I64,
    n_points: int,
    time_s: float,
) -> C128:
    """A measurement or spectrum fault on reported impedance z (cells x points); updates ``dropped``."""
    hit = np.isin(cells, fault.cells) if fault.cells is not None else np.ones(cells.shape, bool)
    if not hit.any():
        return z
    out = z.copy()
    sel = out[hit]
    kind, p = fault.kind, fault.params
    rng = fault.rng
    if kind == FaultKind.NOISE:
        sigma = np.abs(sel) / 10 ** (float(p["snr_db"]) / 20) / np.sqrt(2)
        sel = sel + sigma * (rng.standard_normal(sel.shape) + 1j * rng.standard_normal(sel.shape))
    elif kind == FaultKind.OUTLIERS:
        jump = rng.random(sel.shape) < float(p["probability"])
        phase = np.exp(2j * np.pi * rng.random(sel.shape))
        sel = np.where(jump, sel + float(p["magnitude"]) * np.abs(sel) * phase, sel)
    elif kind == FaultKind.GAIN:
        sel = sel * float(p["gain"])
    elif kind == FaultKind.OFFSET:
        sel = sel + float(p["offset_ohm"])
    elif kind == FaultKind.DRIFT:
        sel = sel * (1 + float(p["rate_per_h"]) * (time_s - (fault.start_s or 0.0)) / 3600)
    elif kind == FaultKind.QUANTISATION:
        lsb = float(p["lsb_ohm"])
        sel = np.round(sel.real / lsb) * lsb + 1j * np.round(sel.imag / lsb) * lsb
    elif kind == FaultKind.FROZEN:
        stuck = np.asarray(fault.frozen.get("impedance"), dtype=np.complex128)
        rows = np.searchsorted(np.asarray(fault.cells), cells[hit])
        snap = stuck[rows[:, None], point_index[None, :]]
        fresh = np.isnan(snap)
        snap = np.where(fresh, sel, snap)
        stuck[rows[:, None], point_index[None, :]] = snap
        sel = snap
    elif kind == FaultKind.DROPPED_POINTS:
        d = dropped[hit] | (rng.random(sel.shape) < float(p["probability"]))
        dropped[hit] = d
    elif kind == FaultKind.NAN:
        sel = np.where(rng.random(sel.shape) < float(p["probability"]), np.nan + 1j * np.nan, sel)
    elif kind == FaultKind.SPECTRUM_DRIFT:
        # grows linearly along the measurement order, so the spectrum is not Kramers-Kronig consistent
        frac = point_index / max(n_points - 1, 1)
        sel = sel * (1 + float(p["drift_rel"]) * frac)[None, :]
    out[hit] = sel
    return out
