"""Fault kinds as the scenario format names them, and their kind-specific parameters, declared once."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import FaultKind

from ._reader import Range


@dataclass(frozen=True)
class Param:
    bounds: Range | None = None
    default: float | int | str | None = None
    """None: required."""
    integer: bool = False
    choices: tuple[str, ...] | None = None


SIGNALS = ("impedance", "voltage", "current", "temperature")
SIGNAL_UNIT = {"impedance": "ohm", "voltage": "v", "current": "a", "temperature": "c"}
"""Suffix of unit-bearing parameters (offset_*, lsb_*) per measured signal."""

_PROB = Param(Range(0, 1, lo_open=True), 0.1)
_SIGNAL = Param(choices=SIGNALS, default="impedance")

PARAMS: dict[FaultKind, dict[str, Param]] = {
    FaultKind.CONTACT_RESISTANCE: {
        "resistance_factor": Param(Range(1, 1000), 2.0),
        "ramp_s": Param(Range(0), 0.0),
    },
    FaultKind.CAPACITY_FADE: {"capacity_loss": Param(Range(0, 1, lo_open=True, hi_open=True), 0.05)},
    FaultKind.INTERNAL_SHORT: {"short_resistance_ohm": Param(Range(0, lo_open=True), 10.0)},
    FaultKind.ACCELERATED_HEATING: {"extra_heat_w": Param(Range(0, 1e5, lo_open=True), None)},
    FaultKind.LITHIUM_PLATING: {"below_temp_c": Param(Range(-60, 60), 0.0)},
    FaultKind.NOISE: {"signal": _SIGNAL, "snr_db": Param(Range(-20, 140), 40.0)},
    FaultKind.OUTLIERS: {
        "signal": _SIGNAL,
        "probability": Param(Range(0, 1, lo_open=True), 0.01),
        "magnitude": Param(Range(0, lo_open=True), 5.0),
    },
    FaultKind.GAIN: {"signal": _SIGNAL, "gain": Param(Range(0, 1000, lo_open=True), 1.05)},
    FaultKind.OFFSET: {"signal": _SIGNAL},
    FaultKind.DRIFT: {"signal": _SIGNAL, "rate_per_h": Param(Range(-10, 10), 0.01)},
    FaultKind.QUANTISATION: {"signal": _SIGNAL},
    FaultKind.FROZEN: {"signal": _SIGNAL},
    FaultKind.DROPPED_POINTS: {"probability": _PROB},
    FaultKind.NAN: {"signal": _SIGNAL, "probability": _PROB},
    FaultKind.SPECTRUM_DRIFT: {"drift_rel": Param(Range(-0.9, 10), 0.05)},
    FaultKind.DROP_FRAMES: {"probability": _PROB},
    FaultKind.DELAY_FRAMES: {
        "probability": Param(Range(0, 1, lo_open=True), 1.0),
        "delay_s": Param(Range(0, 60, lo_open=True), 0.5),
    },
    FaultKind.DUPLICATE_FRAMES: {"probability": _PROB},
    FaultKind.REORDER_FRAMES: {"probability": _PROB, "window_frames": Param(Range(2, 64), 3, integer=True)},
    FaultKind.CORRUPT_CRC: {"probability": _PROB},
    FaultKind.STRAY_BYTES: {"probability": _PROB, "max_bytes": Param(Range(1, 4096), 16, integer=True)},
    FaultKind.DISCONNECT: {},
}

UNIT_PARAM_PREFIX: dict[FaultKind, str] = {FaultKind.OFFSET: "offset", FaultKind.QUANTISATION: "lsb"}
"""Kinds whose magnitude is in the measured signal's unit: one ``<prefix>_<unit>`` key matching signal."""

STREAM_KINDS = frozenset(
    {
        FaultKind.DROP_FRAMES,
        FaultKind.DELAY_FRAMES,
        FaultKind.DUPLICATE_FRAMES,
        FaultKind.REORDER_FRAMES,
        FaultKind.CORRUPT_CRC,
        FaultKind.STRAY_BYTES,
        FaultKind.DISCONNECT,
    }
)
"""Act on the byte stream to clients, not on cells: ``cells`` is not allowed."""


def kind_name(kind: FaultKind) -> str:
    return kind.name.lower()


KINDS_BY_NAME = {kind_name(k): k for k in FaultKind}
