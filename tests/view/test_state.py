"""The view's state (``hil_server.view.state``): pure, frames in, JSON messages out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import protocol as p
from hil_server.view.state import FAULTS_KEPT, SPECTRA_KEPT, History, PageCursor, ViewState

CELLS = 4


def hello(cells: int = CELLS) -> p.ServerHello:
    return p.ServerHello(
        cell_count=cells,
        step_period_us=100_000,
        scenario_id="unit",
        model_id="m",
        freq_hz=np.array([1000.0, 10.0, 0.1]),
    )


class Stream:
    """Frames in seq order, as a server would send them."""

    def __init__(self) -> None:
        self.seq = 0

    def frame(self, message: p.Message) -> p.Frame:
        self.seq += 1
        return p.Frame(message, self.seq)

    def states(self, step: int, cells: int = CELLS, volts: float = 3.7) -> p.Frame:
        idx = np.arange(cells)
        return self.frame(
            p.CellStates.from_columns(
                step * 100_000,
                1_700_000_000_000_000 + step,
                step,
                cell=idx,
                voltage_uV=round(volts * 1e6) + idx,
                current_uA=1000 * idx,
                temperature_mdegC=25_000 + step,
                soc_ppm=500_000 - step,
                soh_ppm=990_000,
            )
        )

    def spectrum(self, cell: int, sid: int, t_us: int = 0, kk: float = 0.001) -> p.Frame:
        f = np.array([1000.0, 10.0, 0.1])
        return self.frame(
            p.EisSpectrum(
                t_us, sid, 0, cell, 0, 500_000, 990_000, 25_000, 0, kk, f, f * 0 + 0.03, -f * 0 - 0.01
            )
        )

    def fault(self, fid: int, phase: p.FaultPhase, cells: list[int], t_us: int) -> p.Frame:
        return self.frame(
            p.FaultEvent(t_us, fid, 500_000, p.FaultKind.CONTACT_RESISTANCE, phase, np.array(cells))
        )


def roundtrip(message: dict[str, Any]) -> dict[str, Any]:
    """What the page receives: strict JSON (no NaN)."""
    out: dict[str, Any] = json.loads(json.dumps(message, allow_nan=False))
    return out


def test_latest_values_and_decimation_count() -> None:
    s, state, cursor = Stream(), ViewState(hello(), "h:1"), PageCursor()
    for step in range(10):
        state.update(s.states(step))
    msg = roundtrip(state.update_message(cursor, wall_s=100.0))
    assert msg["step"] == 9
    assert msg["t_sim_us"] == 900_000
    assert msg["cells"]["voltage_uV"] == [3_700_000, 3_700_001, 3_700_002, 3_700_003]
    assert msg["cells"]["soc_ppm"] == [499_991] * CELLS
    assert msg["decimation"] == {"states": 10, "states_per_s": None, "history_stride": 1}
    for step in range(10, 30):
        state.update(s.states(step))
    msg = roundtrip(state.update_message(cursor, wall_s=100.5))
    assert msg["decimation"]["states"] == 20
    assert msg["decimation"]["states_per_s"] is None  # averaged over a second at least
    for step in range(30, 40):
        state.update(s.states(step))
    msg = roundtrip(state.update_message(cursor, wall_s=101.0))
    assert msg["decimation"]["states"] == 10
    assert msg["decimation"]["states_per_s"] == pytest.approx(30.0)


def test_history_is_incremental_per_page_and_reset_on_select() -> None:
    s, state = Stream(), ViewState(hello(), "h:1")
    cursor = PageCursor()
    for step in range(5):
        state.update(s.states(step))
    first = state.update_message(cursor, 0.0)["detail"]
    assert first["history_reset"] is True
    assert first["history"]["t_us"] == [0, 100_000, 200_000, 300_000, 400_000]
    for step in range(5, 7):
        state.update(s.states(step))
    second = state.update_message(cursor, 0.1)["detail"]
    assert second["history_reset"] is False
    assert second["history"]["t_us"] == [500_000, 600_000]
    cursor.select(2)
    third = state.update_message(cursor, 0.2)["detail"]
    assert third["cell"] == 2
    assert third["history_reset"] is True
    assert len(third["history"]["t_us"]) == 7
    assert third["history"]["voltage_uV"][0] == 3_700_002


def test_history_halves_when_full_and_restarts_on_a_step_back() -> None:
    h = History(1, capacity=8)
    col = np.zeros((4, 1), dtype=np.int64)
    for t in range(8):
        h.add(t, col)
    assert (h.size, h.stride, h.generation) == (4, 2, 1)
    assert h.t_us[: h.size].tolist() == [0, 2, 4, 6]
    for t in range(8, 16):
        h.add(t, col)
    assert h.t_us[: h.size].tolist() == [0, 4, 8, 12]  # full again at 14: halved, stride 4
    assert h.stride == 4
    h.add(3, col)  # a seek back
    assert (h.size, h.stride) == (1, 1)
    assert h.generation == 3
    with pytest.raises(ValueError, match="even number"):
        History(1, capacity=7)


def test_long_run_keeps_at_most_capacity_samples() -> None:
    s, state = Stream(), ViewState(hello(1), "h:1", history_points=100)
    for step in range(10_000):
        state.update(s.states(step, cells=1))
    assert state.history.size <= 100
    msg = state.update_message(PageCursor(), 0.0)
    t = msg["detail"]["history"]["t_us"]
    assert t[0] == 0
    assert t[-1] >= 9_000 * 100_000  # the history spans the whole run
    assert msg["decimation"]["history_stride"] == 128


def test_spectra_sent_once_and_previous_ones_kept() -> None:
    s, state, cursor = Stream(), ViewState(hello(), "h:1"), PageCursor(cell=1)
    for sid in range(SPECTRA_KEPT + 3):
        state.update(s.spectrum(1, sid, t_us=sid * 30_000_000))
    state.update(s.spectrum(0, 99))
    msg = roundtrip(state.update_message(cursor, 0.0))
    ids = [sp["spectrum_id"] for sp in msg["detail"]["spectra"]]
    assert ids == list(range(3, SPECTRA_KEPT + 3))  # the last SPECTRA_KEPT of cell 1
    assert msg["spectrum_summary"]["1"]["z_high_mohm"] == pytest.approx(np.hypot(30, 10), rel=1e-5)
    again = state.update_message(cursor, 0.1)
    assert again["detail"]["spectra"] == []
    assert "spectrum_summary" not in again  # unchanged
    cursor.select(0)
    assert [sp["spectrum_id"] for sp in state.update_message(cursor, 0.2)["detail"]["spectra"]] == [99]


def test_nan_is_null_on_the_wire() -> None:
    s, state = Stream(), ViewState(hello(), "h:1")
    state.update(s.spectrum(0, 1, kk=float("nan")))
    msg = roundtrip(state.update_message(PageCursor(), 0.0))
    assert msg["detail"]["spectra"][0]["kk_residual"] is None


def test_sweep_points_become_a_spectrum() -> None:
    s, state = Stream(), ViewState(hello(), "h:1")
    freqs = [100.0, 1.0, 0.01]
    for i, f in enumerate(freqs):
        state.update(s.frame(p.EisPoint(1000 + i, 7, 2, i, 3, 0, f, 0.02 + i, -0.001 * i)))
        if i < 2:
            assert 2 not in state.spectra
    (spectrum,) = state.spectra[2]
    assert spectrum.freq_hz.tolist() == pytest.approx(freqs)
    assert spectrum.z_re_ohm.tolist() == pytest.approx([0.02, 1.02, 2.02])
    assert np.isnan(spectrum.kk_residual)


def test_fault_timeline_from_events() -> None:
    s, state, cursor = Stream(), ViewState(hello(), "h:1"), PageCursor()
    state.update(s.fault(5, p.FaultPhase.END, [0], 1_000_000))  # started before we connected
    state.update(s.fault(6, p.FaultPhase.START, [2, 3], 2_000_000))
    msg = roundtrip(state.update_message(cursor, 0.0))
    assert msg["faults"] == [
        {
            "fault_id": 5,
            "kind": "contact_resistance",
            "severity_ppm": 500_000,
            "cells": [0],
            "t_start_us": None,
            "t_end_us": 1_000_000,
        },
        {
            "fault_id": 6,
            "kind": "contact_resistance",
            "severity_ppm": 500_000,
            "cells": [2, 3],
            "t_start_us": 2_000_000,
            "t_end_us": None,
        },
    ]
    assert msg["fault_cells"] == [2, 3]
    assert "faults" not in state.update_message(cursor, 0.1)  # only when changed
    state.update(s.fault(6, p.FaultPhase.END, [2, 3], 3_000_000))
    msg = state.update_message(cursor, 0.2)
    assert msg["faults"][1]["t_end_us"] == 3_000_000
    assert msg["fault_cells"] == []


def test_fault_timeline_is_bounded_dropping_ended_spans_first() -> None:
    s, state = Stream(), ViewState(hello(), "h:1")
    state.update(s.fault(0, p.FaultPhase.START, [0], 0))  # stays active
    for fid in range(1, FAULTS_KEPT + 50):
        state.update(s.fault(fid, p.FaultPhase.START, [1], fid))
        state.update(s.fault(fid, p.FaultPhase.END, [1], fid + 1))
    assert len(state.faults) == FAULTS_KEPT
    assert state.faults[0].fault_id == 0
    assert state.faults[-1].fault_id == FAULTS_KEPT + 49


def test_health_from_heartbeats_and_link_counters() -> None:
    s, state = Stream(), ViewState(hello(), "h:1")
    hb = p.Heartbeat(
        t_sim_us=5,
        t_wall_us=7,
        frames_dropped=3,
        lateness_p50_us=100,
        lateness_p99_us=900,
        lateness_max_us=1200,
        queue_depth=2,
        sim_state=p.SimState.PAUSED,
    )
    state.update(s.frame(hb))
    state.link_counters(frames=10, gaps=1, lost=2, late=0, duplicates=0, bad_frames=4)
    msg = roundtrip(state.update_message(PageCursor(), 0.0))
    assert msg["sim_state"] == "PAUSED"
    assert msg["health"] == {
        "heartbeats": 1,
        "lateness_p50_us": 100,
        "lateness_p99_us": 900,
        "lateness_max_us": 1200,
        "worst_p99_us": 900,
        "worst_max_us": 1200,
        "frames_dropped": 3,
        "queue_depth": 2,
        "frames": 10,
        "gaps": 1,
        "lost": 2,
        "late": 0,
        "duplicates": 0,
        "bad_frames": 4,
    }


def test_replies_go_out_once() -> None:
    state, cursor = ViewState(hello(), "h:1"), PageCursor()
    cursor.replies.append({"type": "reply", "id": 1, "ok": True})
    assert state.update_message(cursor, 0.0)["replies"] == [{"type": "reply", "id": 1, "ok": True}]
    assert "replies" not in state.update_message(cursor, 0.1)


def test_hello_message() -> None:
    msg = roundtrip(ViewState(hello(), "h:1").hello_message(controls=False))
    assert msg["cell_count"] == CELLS
    assert msg["controls"] is False
    assert msg["freq_hz"] == [1000.0, 10.0, 0.1]
    assert "contact_resistance" in msg["fault_kinds"]
