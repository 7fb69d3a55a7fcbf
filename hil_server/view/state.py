"""What the browser view shows, folded frame by frame from the protocol stream, and the JSON messages the page
is sent. Pure: no I/O and no clock (the caller passes the wall time where a rate is computed).

- the latest state of every cell, the stream's time, heartbeats and active faults: a
  :class:`client.monitor.MonitorState`, the same state the mock BMS's table is drawn from;
- a decimated history of V, I, T and SOC of every cell (:class:`History`);
- the last :data:`SPECTRA_KEPT` spectra of each cell (sweep-timed points are gathered into spectra);
- the fault timeline from FAULT_EVENTs, the ground truth (:class:`FaultSpan`).

The page is not sent every frame: each browser gets at most a few updates a second, built by
:meth:`ViewState.update_message` from what changed since that page's :class:`PageCursor`. How many state
frames an update stands for is in the update (``decimation``), and the page says so.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

import protocol as p
from hil_server.client.monitor import MonitorState
from hil_server.client.text import enum_name

HISTORY_POINTS = 600
"""Samples kept per series; when full, every other one is dropped and the sampling interval doubles."""
SPECTRA_KEPT = 5
"""Spectra kept per cell: the latest and the previous ones the page draws fading."""
FAULTS_KEPT = 200
"""Fault spans kept on the timeline (the oldest ended ones go first)."""
RATE_WINDOW_S = 1.0
"""The arrival rate of state frames the page shows is averaged over windows of at least this long."""
QUANTITIES = ("voltage_uV", "current_uA", "temperature_mdegC", "soc_ppm")
"""The history's series, in wire units."""


class History:
    """V, I, T and SOC of every cell over time, at most ``capacity`` samples: when full, every other sample
    is dropped and from then on only every ``stride``-th state is kept (the history spans twice the time at
    half the resolution). A step back in time (a seek back, a replay's loop) starts it afresh.
    ``generation`` changes whenever samples already handed out change (compaction, restart)."""

    def __init__(self, n_cells: int, capacity: int = HISTORY_POINTS) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError(f"history capacity {capacity}: expected an even number >= 2")
        self.capacity = capacity
        self.t_us = np.zeros(capacity, dtype=np.int64)
        self.values = np.zeros((capacity, len(QUANTITIES), n_cells), dtype=np.int64)
        self.size = 0
        self.stride = 1
        self.offered = 0
        self.generation = 0

    def add(self, t_us: int, columns: npt.NDArray[np.int64]) -> None:
        """One state of the pack: ``columns`` has shape (len(QUANTITIES), n_cells)."""
        if self.size and t_us < self.t_us[self.size - 1]:
            self.size, self.stride, self.offered = 0, 1, 0
            self.generation += 1
        self.offered += 1
        if (self.offered - 1) % self.stride:
            return
        self.t_us[self.size] = t_us
        self.values[self.size] = columns
        self.size += 1
        if self.size == self.capacity:
            half = self.capacity // 2
            self.t_us[:half] = self.t_us[0 : self.capacity : 2]
            self.values[:half] = self.values[0 : self.capacity : 2]
            self.size = half
            self.stride *= 2
            self.generation += 1

    def series(self, cell: int, start: int = 0) -> dict[str, list[int]]:
        """Samples ``start`` .. end of one cell: ``t_us`` and one list per quantity."""
        out = {"t_us": self.t_us[start : self.size].tolist()}
        for k, name in enumerate(QUANTITIES):
            out[name] = self.values[start : self.size, k, cell].tolist()
        return out


@dataclasses.dataclass
class SpectrumView:
    """One spectrum of one cell as the page draws it (standard sign: ``z_im_ohm > 0`` is inductive)."""

    t_sim_us: int
    spectrum_id: int
    cell_flags: int
    kk_residual: float
    freq_hz: npt.NDArray[np.float64]
    z_re_ohm: npt.NDArray[np.float64]
    z_im_ohm: npt.NDArray[np.float64]

    def to_json(self) -> dict[str, Any]:
        return {
            "t_sim_us": self.t_sim_us,
            "spectrum_id": self.spectrum_id,
            "flags": self.cell_flags,
            "kk_residual": _finite(self.kk_residual),
            "freq_hz": _floats(self.freq_hz),
            "z_re_ohm": _floats(self.z_re_ohm),
            "z_im_ohm": _floats(self.z_im_ohm),
        }


@dataclasses.dataclass
class FaultSpan:
    """One fault on the timeline: from its START event to its END event (``t_end_us`` None while active;
    ``t_start_us`` None if it started before the view connected)."""

    fault_id: int
    kind: int
    severity_ppm: int
    cells: list[int]
    t_start_us: int | None
    t_end_us: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id,
            "kind": enum_name(p.FaultKind, self.kind, "kind 0x{value:02x}").lower(),
            "severity_ppm": self.severity_ppm,
            "cells": self.cells,
            "t_start_us": self.t_start_us,
            "t_end_us": self.t_end_us,
        }


@dataclasses.dataclass
class PageCursor:
    """What one page has been sent so far, so that the next update carries only what is new to it."""

    cell: int = 0
    """The cell whose detail the page shows."""
    history_generation: int = -1
    history_sent: int = 0
    spectra_sent: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    """(spectrum_id, t_sim_us) of the selected cell's spectra already sent."""
    faults_version: int = -1
    spectra_version: int = -1
    states_seen: int = 0
    """``ViewState.states_in`` at the last update."""
    rate_window: tuple[float, int] | None = None
    """Wall time (the caller's clock) and ``states_in`` where the current rate window began."""
    states_per_s: float | None = None
    """State frames per second over the last full window of at least :data:`RATE_WINDOW_S`."""
    replies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Answers to the page's control commands, sent with the next update."""
    in_flight: int = 0
    """The page's control commands waiting for their answer."""

    def select(self, cell: int) -> None:
        self.cell = cell
        self.history_generation = -1
        self.spectra_sent.clear()


class ViewState:
    """The view of one stream, updated by :meth:`update` for every frame received."""

    def __init__(self, hello: p.ServerHello, endpoint: str, history_points: int = HISTORY_POINTS) -> None:
        self.hello = hello
        self.monitor = MonitorState.from_hello(hello, endpoint)
        n = hello.cell_count
        self.history = History(n, history_points)
        self.spectra: dict[int, collections.deque[SpectrumView]] = {}
        self._sweeps: dict[int, dict[int, tuple[float, float, float]]] = {}
        self.faults: list[FaultSpan] = []
        self.t_wall_us = 0
        self.states_in = 0
        """CELL_STATES frames received."""
        self.faults_version = 0
        self.spectra_version = 0
        self.bye: str | None = None
        """The server's BYE as the page says it: ``SHUTDOWN: server shutting down``."""

    @property
    def cell_count(self) -> int:
        return self.hello.cell_count

    def update(self, frame: p.Frame) -> None:
        m = self.monitor
        m.update(frame)
        msg = frame.message
        match msg:
            case p.CellStates():
                self.states_in += 1
                self.t_wall_us = msg.t_wall_us
                columns = np.stack(
                    [m.voltage_uV, m.current_uA, m.temperature_mdegC, m.soc_ppm]
                )  # latest of every cell, shape (4, n)
                self.history.add(msg.t_sim_us, columns)
            case p.Heartbeat():
                self.t_wall_us = max(self.t_wall_us, msg.t_wall_us)
            case p.EisSpectrum():
                self._add_spectrum(
                    msg.cell,
                    SpectrumView(
                        msg.t_sim_us,
                        msg.spectrum_id,
                        msg.cell_flags,
                        float(msg.kk_residual),
                        msg.freq_hz.astype(np.float64),
                        msg.z_re_ohm.astype(np.float64),
                        msg.z_im_ohm.astype(np.float64),
                    ),
                )
            case p.EisPoint():
                self._add_point(msg)
            case p.FaultEvent():
                self._fault(msg)
            case p.Bye():
                reason = enum_name(p.ErrorCode, msg.reason, "reason {value}")
                self.bye = f"{reason}: {msg.message}" if msg.message else reason
            case _:
                pass

    def _add_spectrum(self, cell: int, spectrum: SpectrumView) -> None:
        if not 0 <= cell < self.cell_count:
            return
        self.spectra.setdefault(cell, collections.deque(maxlen=SPECTRA_KEPT)).append(spectrum)
        self.spectra_version += 1

    def _add_point(self, msg: p.EisPoint) -> None:
        """A sweep-timed point; the spectrum is complete at its last point (no KK figure for those)."""
        points = self._sweeps.setdefault(msg.cell, {})
        if msg.point_index == 0:
            points.clear()
        points[msg.point_index] = (msg.freq_hz, msg.z_re_ohm, msg.z_im_ohm)
        if msg.point_index + 1 < msg.n_points:
            return
        f, re, im = (np.array([points[i][k] for i in sorted(points)], dtype=np.float64) for k in range(3))
        self._sweeps.pop(msg.cell, None)
        self._add_spectrum(
            msg.cell, SpectrumView(msg.t_sim_us, msg.spectrum_id, msg.cell_flags, float("nan"), f, re, im)
        )

    def _fault(self, msg: p.FaultEvent) -> None:
        cells = [int(c) for c in msg.cells]
        if msg.phase == p.FaultPhase.START:
            self.faults.append(FaultSpan(msg.fault_id, msg.kind, msg.severity_ppm, cells, msg.t_sim_us))
        else:
            span = next(
                (s for s in reversed(self.faults) if s.fault_id == msg.fault_id and s.t_end_us is None), None
            )
            if span is None:  # started before the view connected
                span = FaultSpan(msg.fault_id, msg.kind, msg.severity_ppm, cells, None)
                self.faults.append(span)
            span.t_end_us = msg.t_sim_us
        while len(self.faults) > FAULTS_KEPT:
            ended = next((s for s in self.faults if s.t_end_us is not None), self.faults[0])
            self.faults.remove(ended)
        self.faults_version += 1

    def link_counters(
        self, frames: int, gaps: int, lost: int, late: int, duplicates: int, bad_frames: int
    ) -> None:
        """The continuity counters the client keeps of the stream (SeqTracker) and its decoder errors."""
        m = self.monitor
        m.frames, m.gaps, m.lost, m.late, m.duplicates, m.bad_frames = (
            frames,
            gaps,
            lost,
            late,
            duplicates,
            bad_frames,
        )

    # -- messages to the page ------------------------------------------------------------------------------

    def hello_message(self, controls: bool) -> dict[str, Any]:
        h = self.hello
        return {
            "type": "hello",
            "endpoint": self.monitor.endpoint,
            "scenario": h.scenario_id,
            "model": h.model_id,
            "server_version": h.server_version,
            "cell_count": h.cell_count,
            "step_period_us": h.step_period_us,
            "freq_hz": _floats(h.freq_hz.astype(np.float64)),
            "controls": controls,
            "fault_kinds": [k.name.lower() for k in p.FaultKind],
        }

    def update_message(self, cursor: PageCursor, wall_s: float) -> dict[str, Any]:
        """Everything new to the page of ``cursor`` since its last update; advances the cursor."""
        m = self.monitor
        states = self.states_in - cursor.states_seen
        cursor.states_seen = self.states_in
        if cursor.rate_window is None:
            cursor.rate_window = (wall_s, self.states_in)
        elif wall_s - cursor.rate_window[0] >= RATE_WINDOW_S:
            since, count = cursor.rate_window
            cursor.states_per_s = (self.states_in - count) / (wall_s - since)
            cursor.rate_window = (wall_s, self.states_in)
        out: dict[str, Any] = {
            "type": "update",
            "t_sim_us": m.t_sim_us,
            "t_wall_us": self.t_wall_us,
            "step": m.step,
            "sim_state": None if m.sim_state is None else enum_name(p.SimState, m.sim_state, "{value}"),
            "cells": {
                "seen": m.seen.astype(np.int8).tolist(),
                "flags": m.flags.tolist(),
                "voltage_uV": m.voltage_uV.tolist(),
                "current_uA": m.current_uA.tolist(),
                "temperature_mdegC": m.temperature_mdegC.tolist(),
                "soc_ppm": m.soc_ppm.tolist(),
                "soh_ppm": m.soh_ppm.tolist(),
            },
            "fault_cells": sorted({c for _, cells in m.faults.values() for c in cells}),
            "health": self._health(),
            "decimation": {
                "states": states,
                "states_per_s": cursor.states_per_s,
                "history_stride": self.history.stride,
            },
            "sweeps": {str(c): list(v) for c, v in m.sweeps.items()},
            "bye": self.bye,
        }
        if cursor.faults_version != self.faults_version:
            cursor.faults_version = self.faults_version
            out["faults"] = [s.to_json() for s in self.faults]
        if cursor.spectra_version != self.spectra_version:
            cursor.spectra_version = self.spectra_version
            out["spectrum_summary"] = {
                str(c): {
                    "t_sim_us": s.t_sim_us,
                    "z_high_mohm": _finite(s.z_high_mohm),
                    "f_high_hz": _finite(s.f_high_hz),
                    "z_low_mohm": _finite(s.z_low_mohm),
                    "f_low_hz": _finite(s.f_low_hz),
                    "kk_residual": _finite(s.kk_residual),
                }
                for c, s in m.spectra.items()
            }
        out["detail"] = self._detail(cursor)
        if cursor.replies:
            out["replies"], cursor.replies = cursor.replies, []
        return out

    def _health(self) -> dict[str, Any]:
        m = self.monitor
        p50, p99, mx = m.lateness_us if m.lateness_us else (None, None, None)
        return {
            "heartbeats": m.heartbeats,
            "lateness_p50_us": p50,
            "lateness_p99_us": p99,
            "lateness_max_us": mx,
            "worst_p99_us": m.worst_p99_us,
            "worst_max_us": m.worst_max_us,
            "frames_dropped": m.drops,
            "queue_depth": m.queue_depth,
            "frames": m.frames,
            "gaps": m.gaps,
            "lost": m.lost,
            "late": m.late,
            "duplicates": m.duplicates,
            "bad_frames": m.bad_frames,
        }

    def _detail(self, cursor: PageCursor) -> dict[str, Any]:
        """The selected cell's new history samples (all of them after a compaction) and new spectra."""
        h = self.history
        cell = cursor.cell
        reset = cursor.history_generation != h.generation
        start = 0 if reset else cursor.history_sent
        cursor.history_generation, cursor.history_sent = h.generation, h.size
        kept = self.spectra.get(cell, ())
        new = [s for s in kept if (s.spectrum_id, s.t_sim_us) not in cursor.spectra_sent]
        cursor.spectra_sent = {(s.spectrum_id, s.t_sim_us) for s in kept}
        return {
            "cell": cell,
            "history_reset": reset,
            "history": h.series(cell, start),
            "spectra": [s.to_json() for s in new],
        }


def _finite(value: float) -> float | None:
    """Strict JSON has no NaN: a measurement fault may send one."""
    return value if np.isfinite(value) else None


def _floats(values: npt.NDArray[np.float64]) -> list[float | None]:
    """Values of float32 fields (all wire floats are float32) in their shortest decimal form."""
    return [float(str(v)) if np.isfinite(v) else None for v in values.astype(np.float32)]
