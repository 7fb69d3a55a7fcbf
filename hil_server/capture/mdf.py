"""``eis-hil export FILE --format mf4 --out FILE.mf4``: a capture as ASAM MDF 4.10, the measurement file of
CANape, INCA, Vector and ETAS tools and asammdf (``pip install 'eis-hil[mdf]'``).

Channel-group layout (every group's master channel is ``time``: capture time in s since the recording
started, ``t_us`` of the capture records, so the groups share one time base; simulation time is a channel):

``CellStates`` (acquisition name ``eis-hil CELL_STATES``), one sample per simulation step streamed:

    t_sim                 s     simulation time (raw u64 µs, linear conversion)
    step                        simulation step index
    CellCCC_Voltage       V     terminal voltage (raw i32 µV)           CCC: zero-padded cell index
    CellCCC_Current       A     cell current, positive = discharge (raw i32 µA)
    CellCCC_Temperature   °C    surface temperature (raw i32 m°C)
    CellCCC_SOC           %     state of charge (raw u32 ppm)
    CellCCC_SOH           %     state of health (raw u32 ppm)
    CellCCC_Flags               CellFlags bit set (SPEC.md section 4.1)

  Values are stored raw with the wire's integer type and a linear conversion, so nothing is rounded: the
  physical value is raw × factor, exactly what ``states.csv`` holds (SOC and SOH in % here, 0..1 there).
  A cell absent from a step (a subscription that changed, a pack split over frames that lost one) has its
  invalidation bit set in that sample.

``FaultEvents`` (``eis-hil FAULT_EVENT``), one sample per fault start or end:

    Fault_t_sim  s, Fault_id, Fault_kind (value-to-text: FaultKind names), Fault_phase (START/END),
    Fault_severity (0..1, raw ppm), Fault_cells (text: space-separated cell indices)

``Spectra`` (``eis-hil EIS_SPECTRUM``), one sample per spectrum, the spectrum itself as array channels of
the longest spectrum's length (shorter ones padded with NaN; ``Spectrum_n_points`` says how many are real):

    Spectrum_t_sim s, Spectrum_cell, Spectrum_id, Spectrum_n_points, Spectrum_SOC %, Spectrum_SOH %,
    Spectrum_Temperature °C, Spectrum_Current A, Spectrum_kk_residual, Spectrum_flags,
    Spectrum_Frequency Hz[n], Spectrum_Z_Re Ω[n], Spectrum_Z_Im Ω[n]

Fault events are a channel group rather than MDF event blocks (EV): asammdf, and so this exporter, does not
write EV blocks, and a channel group is what CANape and asammdf plot and filter directly.

Memory: cell states are written in chunks of ``CHUNK_STEPS`` steps (asammdf ``extend``); spectra and fault
events are kept until the end (~0.8 kB per 61-point spectrum).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import protocol as p

from .export import warn_truncated, warnings_suffix
from .format import DamagedSpan, iter_records, open_capture

CHUNK_STEPS = 4096
QUANTITIES: tuple[tuple[str, str, str, float, str], ...] = (
    # (channel suffix, record field, unit, factor, comment)
    ("Voltage", "voltage_uV", "V", 1e-6, "terminal voltage"),
    ("Current", "current_uA", "A", 1e-6, "cell current, positive = discharge"),
    ("Temperature", "temperature_mdegC", "°C", 1e-3, "cell surface temperature"),
    ("SOC", "soc_ppm", "%", 1e-4, "state of charge"),
    ("SOH", "soh_ppm", "%", 1e-4, "state of health: capacity / nominal capacity"),
    ("Flags", "flags", "", 1.0, "CellFlags: 1 FAULT_ACTIVE, 2 MEASUREMENT_FAULT, 4/8 V low/high limit, ..."),
)


@dataclasses.dataclass
class MdfResult:
    path: Path
    steps: int = 0
    cells: int = 0
    spectra: int = 0
    faults: int = 0
    frames: int = 0
    undecodable: int = 0
    truncated_bytes: int = 0
    damage: list[DamagedSpan] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"wrote {self.path}: {self.steps} cell-state samples of {self.cells} cells (group CellStates), "
            f"{self.faults} fault events (FaultEvents), {self.spectra} spectra (Spectra)"
        )
        return text + warnings_suffix(self.undecodable, self.truncated_bytes, self.damage)


def _linear(factor: float) -> dict[str, Any] | None:
    return None if factor == 1.0 else {"a": factor, "b": 0.0}


def _text_conversion(values: dict[int, str]) -> dict[str, Any]:
    conv: dict[str, Any] = {}
    for k, (value, text) in enumerate(sorted(values.items())):
        conv[f"val_{k}"] = value
        conv[f"text_{k}"] = text.encode()
    conv["default"] = b""
    return conv


def _messages(path: Path, result: MdfResult | None = None) -> Any:
    """(t_capture_s, message) of every decodable frame."""
    capture = open_capture(path)
    decoder = p.FrameDecoder()
    for record in iter_records(capture):
        decoder.feed(record.frame)
        for item in decoder.events():
            if isinstance(item, p.Frame):
                if result is not None:
                    result.frames += 1
                yield record.t_us / 1e6, item.message
            elif result is not None:
                result.undecodable += 1
    if result is not None:
        result.truncated_bytes = capture.truncated_bytes
        result.damage = capture.skipped
        warn_truncated(capture, path)


class _StateChunks:
    """Cell states step by step, appended to the MDF group in chunks."""

    def __init__(self, mdf: Any, cells: list[int]) -> None:
        self.mdf = mdf
        self.cells = cells
        self.column = {c: k for k, c in enumerate(cells)}
        self.group: int | None = None
        self.samples = 0
        self._reset()

    def _reset(self) -> None:
        self.time: list[float] = []
        self.t_sim: list[int] = []
        self.step: list[int] = []
        self.rows: list[npt.NDArray[Any]] = []  # per step: the records of all cells, in self.cells order
        self.valid: list[npt.NDArray[np.bool_]] = []

    def add(self, t_capture_s: float, msg: p.CellStates) -> None:
        r = msg.records
        same_step = self.step and self.step[-1] == msg.step and self.t_sim[-1] == msg.t_sim_us
        if not same_step:  # a pack of more than 169 cells comes as several frames of one step
            if len(self.step) >= CHUNK_STEPS:
                self.flush()
            self.samples += 1
            self.time.append(t_capture_s)
            self.t_sim.append(msg.t_sim_us)
            self.step.append(msg.step)
            self.rows.append(np.zeros(len(self.cells), dtype=p.CELL_STATE_DTYPE))
            self.valid.append(np.zeros(len(self.cells), dtype=bool))
        cols = np.array([self.column[int(c)] for c in r["cell"]], dtype=np.intp)
        self.rows[-1][cols] = r
        self.valid[-1][cols] = True

    def flush(self) -> None:
        if not self.step:
            return
        from asammdf import Signal

        t = np.asarray(self.time, dtype=np.float64)
        rows = np.stack(self.rows)
        invalid = ~np.stack(self.valid)
        columns: list[tuple[str, npt.NDArray[Any], npt.NDArray[np.bool_] | None, str, float, str]] = [
            ("t_sim", np.asarray(self.t_sim, dtype=np.uint64), None, "s", 1e-6, "simulation time"),
            ("step", np.asarray(self.step, dtype=np.uint32), None, "", 1.0, "simulation step index"),
        ]
        for k, cell in enumerate(self.cells):
            for suffix, field, unit, factor, comment in QUANTITIES:
                columns.append(
                    (
                        f"Cell{cell:03d}_{suffix}",
                        rows[field][:, k],
                        invalid[:, k],
                        unit,
                        factor,
                        f"cell {cell}: {comment}",
                    )
                )
        if self.group is None:
            signals = [
                Signal(
                    samples=samples,
                    timestamps=t,
                    name=name,
                    unit=unit,
                    conversion=_linear(factor),
                    comment=comment,
                    invalidation_bits=bits,
                )
                for name, samples, bits, unit, factor, comment in columns
            ]
            self.mdf.append(
                signals, acq_name="eis-hil CELL_STATES", comment="cell states, one sample per step"
            )
            self.group = len(self.mdf.groups) - 1
        else:
            self.mdf.extend(self.group, [(t, None), *[(samples, bits) for _, samples, bits, *_ in columns]])
        self._reset()


def export_mdf(capture_path: Path, out_path: Path) -> MdfResult:
    """Write the capture as MDF 4.10 to ``out_path`` (replaced if it exists). Two passes over the capture:
    the first finds the cells (one channel set for the whole file), the second writes."""
    from asammdf import MDF, Signal

    result = MdfResult(out_path)
    cells: set[int] = set()
    for _, msg in _messages(capture_path):
        if isinstance(msg, p.CellStates):
            cells.update(int(c) for c in msg.records["cell"])
    result.cells = len(cells)

    mdf = MDF(version="4.10")
    mdf.header.comment = f"eis-hil export of {capture_path.name}"
    states = _StateChunks(mdf, sorted(cells))
    faults: list[tuple[float, p.FaultEvent]] = []
    spectra: list[tuple[float, p.EisSpectrum]] = []
    for t_capture_s, msg in _messages(capture_path, result):
        if isinstance(msg, p.CellStates) and msg.records.size:
            states.add(t_capture_s, msg)
        elif isinstance(msg, p.FaultEvent):
            faults.append((t_capture_s, msg))
        elif isinstance(msg, p.EisSpectrum):
            spectra.append((t_capture_s, msg))
    states.flush()
    result.steps = states.samples

    if faults:
        t = np.array([tc for tc, _ in faults])
        ev = [m for _, m in faults]
        kinds = {int(k): k.name for k in p.FaultKind} | {
            int(m.kind): f"0x{m.kind:02x}" for m in ev if m.kind not in p.FaultKind._value2member_map_
        }
        mdf.append(
            [
                Signal(
                    np.array([m.t_sim_us for m in ev], np.uint64),
                    t,
                    name="Fault_t_sim",
                    unit="s",
                    conversion=_linear(1e-6),
                ),
                Signal(np.array([m.fault_id for m in ev], np.uint32), t, name="Fault_id"),
                Signal(
                    np.array([m.kind for m in ev], np.uint8),
                    t,
                    name="Fault_kind",
                    conversion=_text_conversion(kinds),
                ),
                Signal(
                    np.array([m.phase for m in ev], np.uint8),
                    t,
                    name="Fault_phase",
                    conversion=_text_conversion({int(ph): ph.name for ph in p.FaultPhase}),
                ),
                Signal(
                    np.array([m.severity_ppm for m in ev], np.uint32),
                    t,
                    name="Fault_severity",
                    conversion=_linear(1e-6),
                ),
                Signal(
                    np.array([" ".join(str(c) for c in m.cells.tolist()).encode() for m in ev]),
                    t,
                    name="Fault_cells",
                    encoding="utf-8",
                    comment="cells affected, space-separated; empty for a fault on the link",
                ),
            ],
            acq_name="eis-hil FAULT_EVENT",
            comment="fault starts and ends (ground truth)",
        )
        result.faults = len(ev)

    if spectra:
        t = np.array([tc for tc, _ in spectra])
        sp = [m for _, m in spectra]
        width = max(m.freq_hz.size for m in sp) or 1

        def padded(field: str, channel: str) -> npt.NDArray[Any]:
            """An MDF array channel: asammdf wants a record array whose one field is the array."""
            out = np.full((len(sp), width), np.nan, dtype=np.float32)
            for k, m in enumerate(sp):
                values = getattr(m, field)
                out[k, : values.size] = values
            rec = np.zeros(len(sp), dtype=[(channel, "<f4", (width,))])
            rec[channel] = out
            return rec

        scalar = [
            ("Spectrum_t_sim", np.uint64, "t_sim_us", "s", 1e-6),
            ("Spectrum_cell", np.uint16, "cell", "", 1.0),
            ("Spectrum_id", np.uint32, "spectrum_id", "", 1.0),
            ("Spectrum_SOC", np.uint32, "soc_ppm", "%", 1e-4),
            ("Spectrum_SOH", np.uint32, "soh_ppm", "%", 1e-4),
            ("Spectrum_Temperature", np.int32, "temperature_mdegC", "°C", 1e-3),
            ("Spectrum_Current", np.int32, "current_uA", "A", 1e-6),
            ("Spectrum_kk_residual", np.float32, "kk_residual", "", 1.0),
            ("Spectrum_flags", np.uint16, "cell_flags", "", 1.0),
        ]
        signals = [
            Signal(
                np.array([getattr(m, f) for m in sp], dtype),
                t,
                name=name,
                unit=unit,
                conversion=_linear(factor),
            )
            for name, dtype, f, unit, factor in scalar
        ]
        signals.append(Signal(np.array([m.freq_hz.size for m in sp], np.uint16), t, name="Spectrum_n_points"))
        signals += [
            Signal(padded("freq_hz", "Spectrum_Frequency"), t, name="Spectrum_Frequency", unit="Hz"),
            Signal(padded("z_re_ohm", "Spectrum_Z_Re"), t, name="Spectrum_Z_Re", unit="Ω"),
            Signal(
                padded("z_im_ohm", "Spectrum_Z_Im"),
                t,
                name="Spectrum_Z_Im",
                unit="Ω",
                comment="standard sign: > 0 inductive",
            ),
        ]
        mdf.append(signals, acq_name="eis-hil EIS_SPECTRUM", comment="one sample per impedance spectrum")
        result.spectra = len(sp)

    mdf.save(out_path, overwrite=True, compression=1)
    mdf.close()
    return result
