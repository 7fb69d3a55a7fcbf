"""``eis-hil export``: a capture as CSV files and PNG plots, so that a person can look at a session.

Output directory (columns: CAPTURE.md section 7)::

    spectra/cell003_spec000012.csv   one spectrum: frequency_hz, z_re_ohm, z_im_ohm, no header, comma:
                                     what impedance.py's ``preprocessing.readCSV`` reads (standard sign,
                                     Im < 0 capacitive, as impedance.py expects)
    spectra_index.csv                one row per spectrum: file, cell, spectrum id, times, SOC, SOH, ...
    states.csv                       one row per cell and CELL_STATES instant
    faults.csv                       FAULT_EVENT starts and ends
    nyquist_cell003.png, bode_cell003.png   per plotted cell: up to 12 spectra spread over the session,
                                     coloured by simulation time
    timeline.png                     V, I, T, SOC of the plotted cells over simulation time, the min-max
                                     band of all exported cells, fault events as vertical lines

Everything comes from the frames, not from the capture's metadata, so captures written by ``eis-hil
record`` (frames received) and by ``eis-hil serve --record`` (frames sent) export alike. The data is
streamed: CSV rows are written as frames are read; only the plotted cells are kept in memory.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

import protocol as p
from hil_server.capture.format import (
    RECORD_OVERHEAD,
    Capture,
    DamagedSpan,
    iter_records,
    lost_count,
    open_capture,
)
from hil_server.client.text import cell_ranges, enum_name

log = structlog.get_logger(__name__)

SPECTRA_INDEX_COLUMNS = (
    "file",
    "cell",
    "spectrum_id",
    "t_sim_s",
    "t_capture_s",
    "soc",
    "soh",
    "temp_c",
    "current_a",
    "kk_residual",
    "cell_flags",
    "n_points",
    "sweep_duration_ms",
)
STATES_COLUMNS = (
    "t_sim_s",
    "t_capture_s",
    "step",
    "cell",
    "voltage_v",
    "current_a",
    "temp_c",
    "soc",
    "soh",
    "flags",
)
FAULTS_COLUMNS = ("t_sim_s", "t_capture_s", "fault_id", "kind", "kind_code", "phase", "severity", "cells")
MAX_SPECTRA_PER_PLOT = 12
"""More curves on one Nyquist plot are unreadable: spectra spread evenly over the session are shown."""


@dataclasses.dataclass
class ExportResult:
    out_dir: Path
    records: int = 0
    frames: int = 0
    undecodable: int = 0
    spectra: int = 0
    state_rows: int = 0
    faults: int = 0
    cells: set[int] = dataclasses.field(default_factory=set)
    plotted_cells: list[int] = dataclasses.field(default_factory=list)
    pngs: list[Path] = dataclasses.field(default_factory=list)
    truncated_bytes: int = 0
    stop_reason: str | None = None
    damage: list[DamagedSpan] = dataclasses.field(default_factory=list)
    """Damaged spans skipped in the middle of the capture (CAPTURE.md 6.1); a torn tail is not one."""

    def summary(self) -> str:
        text = (
            f"exported {self.records} records to {self.out_dir}: {self.spectra} spectra, {self.state_rows} "
            f"state rows, {self.faults} fault events, {len(self.cells)} cells; {len(self.pngs)} plots"
        )
        if self.pngs and len(self.plotted_cells) < len(self.cells):
            text += f" (cells {cell_ranges(self.plotted_cells)} of {len(self.cells)} plotted)"
        return text + warnings_suffix(self.undecodable, self.truncated_bytes, self.damage)


def warnings_suffix(undecodable: int, truncated_bytes: int, damage: Sequence[DamagedSpan] = ()) -> str:
    """The end of an export's summary line (CSV, pcapng, MDF4): frames skipped, the records lost to damage
    and the bytes a truncated capture left out."""
    text = ""
    if damage:
        lost = lost_count(damage)
        text += (
            f"; WARNING: capture damaged, {lost} record(s) lost in {len(damage)} span(s) from offset "
            f"{damage[0].offset} (eis-hil capture check lists them)"
        )
    if undecodable:
        text += f"; {undecodable} frames not decodable (skipped)"
    if truncated_bytes:
        text += f"; WARNING: capture truncated, {truncated_bytes} bytes after the last record ignored"
    return text


def warn_truncated(capture: Capture, path: Path) -> None:
    """Log a warning when the capture read up to here was truncated (every export does, once)."""
    if capture.truncated_bytes:
        log.warning(
            "capture truncated: exported what is complete",
            path=str(path),
            truncated_bytes=capture.truncated_bytes,
            reason=capture.stop_reason,
        )


@dataclasses.dataclass
class _CellSeries:
    t: list[float] = dataclasses.field(default_factory=list)
    v: list[float] = dataclasses.field(default_factory=list)
    i: list[float] = dataclasses.field(default_factory=list)
    temp: list[float] = dataclasses.field(default_factory=list)
    soc: list[float] = dataclasses.field(default_factory=list)
    spectra: list[tuple[float, npt.NDArray[np.float64], npt.NDArray[np.complex128], str]] = dataclasses.field(
        default_factory=list
    )
    """(simulation time, frequencies, impedance, its operating point as a label) of each spectrum."""


class _Collector:
    """Writes the CSV rows as frames arrive and keeps what the plots need."""

    def __init__(self, out_dir: Path, cells: frozenset[int] | None, plot_cells: int) -> None:
        self.out_dir = out_dir
        self.wanted = cells
        self._wanted_cells = None if cells is None else np.array(sorted(cells))
        """``wanted`` as an array, for filtering each CELL_STATES frame's records."""
        self.plot_cells = plot_cells
        self.result = ExportResult(out_dir)
        self.series: dict[int, _CellSeries] = {}
        self.band: list[tuple[float, ...]] = []
        """(t, vmin, vmax, imin, imax, tmin, tmax, socmin, socmax) per CELL_STATES frame."""
        self.fault_marks: list[tuple[float, str, int]] = []
        (out_dir / "spectra").mkdir(parents=True, exist_ok=True)
        self._files = [
            (out_dir / name).open("w", newline="", encoding="utf-8")
            for name in ("spectra_index.csv", "states.csv", "faults.csv")
        ]
        self.index, self.states, self.faults = (csv.writer(f) for f in self._files)
        self.index.writerow(SPECTRA_INDEX_COLUMNS)
        self.states.writerow(STATES_COLUMNS)
        self.faults.writerow(FAULTS_COLUMNS)
        self._names: set[str] = set()

    def close(self) -> None:
        for f in self._files:
            f.close()

    def _plotted(self, cell: int) -> _CellSeries | None:
        s = self.series.get(cell)
        if s is None and len(self.series) < self.plot_cells:
            s = self.series[cell] = _CellSeries()
        return s

    def frame(self, message: p.Message, t_capture_s: float) -> None:
        match message:
            case p.CellStates():
                self._states(message, t_capture_s)
            case p.EisSpectrum():
                self._spectrum(message, t_capture_s)
            case p.FaultEvent():
                self._fault(message, t_capture_s)
            case _:
                pass  # hello, heartbeats, replies, EIS_POINT (its sweep ends in an EIS_SPECTRUM)

    def _states(self, msg: p.CellStates, t_capture_s: float) -> None:
        r = msg.records
        if self._wanted_cells is not None:
            r = r[np.isin(r["cell"], self._wanted_cells)]
        if r.size == 0:
            return
        t = msg.t_sim_us / 1e6
        v = r["voltage_uV"] / 1e6
        i = r["current_uA"] / 1e6
        temp = r["temperature_mdegC"] / 1e3
        soc = r["soc_ppm"] / 1e6
        soh = r["soh_ppm"] / 1e6
        cells = r["cell"].tolist()
        rows = zip(
            cells,
            v.tolist(),
            i.tolist(),
            temp.tolist(),
            soc.tolist(),
            soh.tolist(),
            r["flags"].tolist(),
            strict=True,
        )
        t_text, tc_text = f"{t:.6f}", f"{t_capture_s:.6f}"
        self.states.writerows(
            (
                t_text,
                tc_text,
                msg.step,
                c,
                f"{vv:.6f}",
                f"{ii:.6f}",
                f"{tt:.3f}",
                f"{ss:.6f}",
                f"{hh:.6f}",
                fl,
            )
            for c, vv, ii, tt, ss, hh, fl in rows
        )
        self.result.state_rows += int(r.size)
        self.result.cells.update(cells)
        self.band.append(
            (t, v.min(), v.max(), i.min(), i.max(), temp.min(), temp.max(), soc.min(), soc.max())
        )
        for k, cell in enumerate(cells):
            s = self._plotted(cell)
            if s is not None:
                s.t.append(t)
                s.v.append(float(v[k]))
                s.i.append(float(i[k]))
                s.temp.append(float(temp[k]))
                s.soc.append(float(soc[k]))

    def _spectrum(self, msg: p.EisSpectrum, t_capture_s: float) -> None:
        if self.wanted is not None and msg.cell not in self.wanted:
            return
        name = f"cell{msg.cell:03d}_spec{msg.spectrum_id:06d}"
        if name in self._names:  # the same id again (a restarted scenario, a looped replay)
            n = 2
            while f"{name}_{n}" in self._names:
                n += 1
            name = f"{name}_{n}"
        self._names.add(name)
        rel = f"spectra/{name}.csv"
        data = np.column_stack([msg.freq_hz, msg.z_re_ohm, msg.z_im_ohm]).astype(np.float64)
        # %.9g: every float32 value round-trips exactly; NaN (a measurement fault) is written as nan.
        np.savetxt(self.out_dir / rel, data, fmt="%.9g", delimiter=",")
        self.index.writerow(
            (
                rel,
                msg.cell,
                msg.spectrum_id,
                f"{msg.t_sim_us / 1e6:.6f}",
                f"{t_capture_s:.6f}",
                f"{msg.soc_ppm / 1e6:.6f}",
                f"{msg.soh_ppm / 1e6:.6f}",
                f"{msg.temperature_mdegC / 1e3:.3f}",
                f"{msg.current_uA / 1e6:.6f}",
                f"{msg.kk_residual:.9g}",
                msg.cell_flags,
                msg.freq_hz.size,
                msg.sweep_duration_ms,
            )
        )
        self.result.spectra += 1
        self.result.cells.add(msg.cell)
        s = self._plotted(msg.cell)
        if s is not None:
            z = msg.z_re_ohm.astype(np.float64) + 1j * msg.z_im_ohm.astype(np.float64)
            t_s, soc, temp = msg.t_sim_us / 1e6, msg.soc_ppm / 1e4, msg.temperature_mdegC / 1e3
            label = f"SOC {soc:.0f} %, {temp:.0f} C, t {t_s:.0f} s"
            s.spectra.append((msg.t_sim_us / 1e6, msg.freq_hz.astype(np.float64), z, label))

    def _fault(self, msg: p.FaultEvent, t_capture_s: float) -> None:
        cells = msg.cells.tolist()
        if self.wanted is not None and cells and not self.wanted.intersection(cells):
            return
        kind = enum_name(p.FaultKind, msg.kind)
        phase = enum_name(p.FaultPhase, msg.phase)
        self.faults.writerow(
            (
                f"{msg.t_sim_us / 1e6:.6f}",
                f"{t_capture_s:.6f}",
                msg.fault_id,
                kind,
                msg.kind,
                phase,
                f"{msg.severity_ppm / 1e6:.6f}",
                " ".join(str(c) for c in cells),
            )
        )
        self.result.faults += 1
        self.fault_marks.append((msg.t_sim_us / 1e6, kind, msg.phase))


class ProgressSink(Protocol):
    """Where ``export_capture`` reports how far it got (``cli._common.Progress`` on the command line)."""

    def update(self, count: int, nbytes: int) -> None: ...

    def close(self) -> None: ...


def export_capture(
    path: Path,
    out_dir: Path,
    *,
    csv_only: bool = False,
    cells: Sequence[int] | None = None,
    plot_cells: int = 8,
    progress: ProgressSink | None = None,
) -> ExportResult:
    """Read ``path`` and write the CSV files (and the plots unless ``csv_only``) into ``out_dir``.

    A truncated capture exports what is complete; the result (and a warning) says how many bytes were
    left. ``progress`` (the command line's status line) is told records and bytes read as it goes.
    Raises CaptureError if the file is not a readable capture."""
    capture: Capture = open_capture(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    collector = _Collector(out_dir, frozenset(cells) if cells else None, max(0, plot_cells))
    result = collector.result
    decoder = p.FrameDecoder()
    bar = progress
    nbytes = capture.data_offset
    try:
        for record in iter_records(capture):
            result.records += 1
            nbytes += RECORD_OVERHEAD + len(record.frame)
            decoder.feed(record.frame)
            for item in decoder.events():
                if isinstance(item, p.Frame):
                    result.frames += 1
                    collector.frame(item.message, record.t_us / 1e6)
                else:
                    result.undecodable += 1
            if bar is not None and result.records % 256 == 0:
                bar.update(result.records, nbytes)
    finally:
        collector.close()
        if bar is not None:
            bar.close()
    result.truncated_bytes = capture.truncated_bytes
    result.stop_reason = capture.stop_reason
    result.damage = capture.skipped
    warn_truncated(capture, path)
    result.plotted_cells = sorted(collector.series)
    if not csv_only:
        if len(result.cells) > len(result.plotted_cells):
            log.info(
                "plotting a subset of cells",
                plotted=cell_ranges(result.plotted_cells),
                of=len(result.cells),
                hint="--cells chooses them, --plot-cells raises the cap",
            )
        title = str(capture.meta.get("scenario_id", path.name))
        result.pngs = _plot(collector, out_dir, title)
    return result


# -- plots ---------------------------------------------------------------------------------------------


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(j * (n - 1) / (k - 1)) for j in range(k)})


def _plot(collector: _Collector, out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pngs: list[Path] = []
    t_all = [t for s in collector.series.values() for t, *_ in s.spectra]
    norm = matplotlib.colors.Normalize(min(t_all, default=0.0), max(t_all, default=1.0) or 1.0)
    cmap = matplotlib.colormaps["viridis"]
    for cell, series in sorted(collector.series.items()):
        if not series.spectra:
            continue
        shown = [series.spectra[k] for k in _spread(len(series.spectra), MAX_SPECTRA_PER_PLOT)]
        note = f"{len(shown)} of {len(series.spectra)} spectra" if len(shown) < len(series.spectra) else ""

        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        for k, (t, f, z, label) in enumerate(shown):
            ax.plot(z.real * 1e3, -z.imag * 1e3, ".-", color=cmap(norm(t)), lw=1, ms=3, label=label)
            _mark_decades(ax, f, z * 1e3, annotate=k == len(shown) - 1)
        ax.legend(fontsize=6, loc="best", title="operating point (decades: black dots)", title_fontsize=6)
        ax.set_xlabel("Re(Z) / mOhm")
        ax.set_ylabel("-Im(Z) / mOhm")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.set_title(f"{title}: Nyquist, cell {cell}" + (f" ({note})" if note else ""), fontsize=10)
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="simulation time / s")
        pngs.append(_save(fig, out_dir / f"nyquist_cell{cell:03d}.png"))

        fig, (ax_mag, ax_phase) = plt.subplots(2, 1, sharex=True, figsize=(6.5, 6))
        for t, f, z, label in shown:
            color = cmap(norm(t))
            ax_mag.loglog(f, np.abs(z) * 1e3, ".-", color=color, lw=1, ms=3, label=label)
            ax_phase.semilogx(f, np.degrees(np.angle(z)), ".-", color=color, lw=1, ms=3)
        ax_mag.legend(fontsize=6, loc="best")
        ax_mag.set_ylabel("|Z| / mOhm")
        ax_phase.set_ylabel("phase / deg")
        ax_phase.set_xlabel("frequency / Hz")
        for ax in (ax_mag, ax_phase):
            ax.grid(alpha=0.3, which="both")
        ax_mag.set_title(f"{title}: Bode, cell {cell}" + (f" ({note})" if note else ""), fontsize=10)
        fig.colorbar(
            matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap),
            ax=[ax_mag, ax_phase],
            label="simulation time / s",
        )
        pngs.append(_save(fig, out_dir / f"bode_cell{cell:03d}.png"))

    if collector.band:
        pngs.append(_timeline(collector, out_dir, title, plt))
    return pngs


def _mark_decades(ax: Any, f: npt.NDArray[np.float64], z: npt.NDArray[np.complex128], annotate: bool) -> None:
    """A black dot on the curve at each whole decade of frequency in its band (the nearest point in log f
    within a tenth of a decade); on one curve (``annotate``) each dot is labelled, e.g. 1e+02 Hz."""
    ok = np.isfinite(z) & (f > 0)
    if ok.sum() < 2:
        return
    lf, zz = np.log10(f[ok]), z[ok]
    for decade in range(int(np.ceil(lf.min())), int(np.floor(lf.max())) + 1):
        k = int(np.argmin(np.abs(lf - decade)))
        if abs(lf[k] - decade) > 0.1:
            continue
        x, y = float(zz[k].real), float(-zz[k].imag)
        ax.plot([x], [y], "o", color="black", ms=3, zorder=3)
        if annotate:
            ax.annotate(f"1e{decade:+03d} Hz", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=6)


def _label_groups(marks: Sequence[tuple[float, str, int]]) -> list[tuple[float, str, bool]]:
    """Fault marks whose times lie within 2 % of the timeline of each other, as one label each (time of the
    first, the texts joined, whether any is a start): labels at nearly the same time would overlap."""
    if not marks:
        return []
    ordered = sorted(marks, key=lambda m: m[0])
    gap = 0.02 * max(ordered[-1][0] - ordered[0][0], 1e-9)
    groups: list[tuple[float, list[str], bool]] = []
    for t, kind, phase in ordered:
        start = phase == p.FaultPhase.START
        text = f"{kind} {'start' if start else 'end'}"
        if groups and t - groups[-1][0] <= gap:
            groups[-1][1].append(text)
            groups[-1] = (groups[-1][0], groups[-1][1], groups[-1][2] or start)
        else:
            groups.append((t, [text], start))
    return [(t, " / ".join(texts), any_start) for t, texts, any_start in groups]


def _with_breaks(t: npt.ArrayLike, *ys: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], ...]:
    """NaN where simulation time goes backwards (seek, restart, looped replay): no line drawn back."""
    ta = np.asarray(t, dtype=np.float64)
    arrays = [ta] + [np.asarray(y, dtype=np.float64) for y in ys]
    back = np.flatnonzero(np.diff(ta) < 0) + 1
    if back.size == 0:
        return tuple(arrays)
    return tuple(np.insert(a, back, np.nan) for a in arrays)


def _timeline(collector: _Collector, out_dir: Path, title: str, plt: Any) -> Path:
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 9))
    labels = ("voltage / V", "current / A (+ discharge)", "temperature / C", "SOC / %")
    band = np.array(collector.band, dtype=np.float64)
    n_cells = len(collector.result.cells)
    if n_cells > len(collector.series):
        tb, *cols = _with_breaks(band[:, 0], *(band[:, k] for k in range(1, 9)))
        for k, ax in enumerate(axes):
            scale = 100.0 if k == 3 else 1.0
            ax.fill_between(
                tb,
                cols[2 * k] * scale,
                cols[2 * k + 1] * scale,
                color="0.8",
                label=f"all {n_cells} cells (min-max)" if k == 0 else None,
            )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (cell, s) in enumerate(sorted(collector.series.items())):
        if not s.t:
            continue
        t, v, i, temp, soc = _with_breaks(s.t, s.v, s.i, s.temp, s.soc)
        color = colors[j % len(colors)]
        for ax, y in zip(axes, (v, i, temp, soc * 100.0), strict=True):
            ax.plot(t, y, color=color, lw=0.8, label=f"cell {cell}" if ax is axes[0] else None)
    for ax, label in zip(axes, labels, strict=True):
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    marks = collector.fault_marks
    for t_mark, _kind, phase in marks:
        start = phase == p.FaultPhase.START
        for ax in axes:
            ax.axvline(
                t_mark, color="tab:red" if start else "0.4", ls="-" if start else "--", lw=0.8, alpha=0.8
            )
    groups = _label_groups(marks)
    for t_mark, text, any_start in groups if len(groups) <= 30 else []:  # above the plot, not on the curves
        axes[0].annotate(
            text,
            (t_mark, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            rotation=90,
            fontsize=6,
            va="bottom",
            ha="center",
            color="tab:red" if any_start else "0.3",
            annotation_clip=False,
        )
    axes[-1].set_xlabel("simulation time / s")
    shown = sorted(collector.series)
    subtitle = f"cells {cell_ranges(shown)}" + (f" of {n_cells} (band: all)" if n_cells > len(shown) else "")
    axes[0].set_title(
        f"{title}: state timeline, {subtitle}; faults: red start, grey end",
        fontsize=10,
        # room for the fault labels above the plot: 6 pt text rotated, about 3.8 pt a character
        pad=8 + 3.8 * max(len(text) for _, text, _ in groups) if groups and len(groups) <= 30 else 6,
    )
    if shown:
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, out_dir / "timeline.png")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
