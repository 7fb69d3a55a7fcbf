"""The simulation engine: cell model, timeline, EIS schedule, faults, determinism and controls."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest

from hil_server.model.circuit import N_PARAMS, P, impedance
from hil_server.scenario import Scenario, load_scenario
from hil_server.sim import (
    PROFILES,
    Engine,
    FixedCircuitSource,
    OperatingRange,
    PinnCircuitSource,
    StepOutput,
)
from protocol import CellFlags, FaultKind
from protocol._constants import FaultPhase

F64 = npt.NDArray[np.float64]
SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"))


def scenario(tmp_path: Path, body: str, name: str = "t") -> Scenario:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}", encoding="utf-8")
    return load_scenario(path)


class ConstSource:
    """Parameters independent of the operating point, so time constants can be checked exactly."""

    def __init__(self, **values: float) -> None:
        self.row = np.array(PROFILES["rashid2023"].params_25c)
        for key, value in values.items():
            self.row[P[key]] = value

    def params(self, profile: str, soc: F64, temp_c: F64, soh: F64) -> F64:
        return np.tile(self.row, (soc.shape[0], 1))

    def input_range(self, profile: str) -> OperatingRange | None:
        return None


def run_all(engine: Engine, until_s: float) -> list[StepOutput]:
    return list(engine.run(until_s))


COIN = """
step_rate_hz: 10
eis: {interval_s: null}
cells: {count: 1, profile: zhang2020, soc: 1.0}
"""
BIG = """
step_rate_hz: 10
eis: {interval_s: null}
cells: {count: 1, profile: rashid2023, capacity_ah: 2.5, soc: 0.5}
"""


# ------------------------------------------------------------------------------------------ cell model
def test_coulomb_counting_is_exact_at_constant_current(tmp_path: Path) -> None:
    sc = scenario(tmp_path, COIN + "timeline:\n  - constant_current: {current_a: 0.045, duration_s: 360}\n")
    outs = run_all(Engine(sc, FixedCircuitSource()), 1e9)
    assert outs[-1].time_us == 360_000_000
    assert outs[-1].true.soc[0] == pytest.approx(0.9, abs=1e-12)
    soc = np.array([o.true.soc[0] for o in outs])
    assert np.allclose(np.diff(soc), -0.045 * 0.1 / (3600 * 0.045), rtol=1e-9, atol=0)
    assert (soc < 1).all()


def test_relaxation_follows_rc_time_constant(tmp_path: Path) -> None:
    src = ConstSource(R0=0.01, R1=0.02, TAU1=5.0, R2=1e-9, TAU2=1e-3, R_W=1e-9, TAU_W=1.0)
    sc = scenario(
        tmp_path,
        BIG
        + "timeline:\n  - constant_current: {current_a: 1.0, duration_s: 100}\n  - rest: {duration_s: 50}\n",
    )
    eng = Engine(sc, src)
    outs = run_all(eng, 150)
    v = np.array([o.true.voltage_v[0] for o in outs])
    soc = outs[999].true.soc[0]
    ocv = float(PROFILES["rashid2023"].ocv_v_at(np.array([soc]))[0])
    # settled under load: OCV - I (R0 + R1)
    # (the step's voltage uses the OCV at the start of the step: one step of SOC change, ~7 uV, apart)
    assert v[999] == pytest.approx(ocv - 1.0 * 0.03, abs=2e-5)
    # at rest the ZARC's RC branch relaxes with its tau: after 5 s, e^-1 of the polarisation is left
    assert ocv - v[1000] == pytest.approx(0.02 * math.exp(-0.1 / 5.0), rel=1e-6)
    assert ocv - v[1049] == pytest.approx(0.02 * math.exp(-5.0 / 5.0), rel=1e-6)


def test_cc_cv_switches_at_voltage_and_ends_at_cutoff(tmp_path: Path) -> None:
    body = COIN.replace("soc: 1.0", "soc: 0.6") + (
        "timeline:\n  - cc_cv_charge: {current_a: 0.045, voltage_v: 4.1, cutoff_current_a: 0.0045}\n"
    )
    outs = run_all(Engine(scenario(tmp_path, body), FixedCircuitSource()), 1e9)
    i = np.array([o.true.current_a[0] for o in outs])
    v = np.array([o.true.voltage_v[0] for o in outs])
    assert i[0] == pytest.approx(-0.045)
    cv = i > -0.045 + 1e-9
    first_cv = int(np.argmax(cv))
    assert first_cv > 10
    assert cv[first_cv:].all()
    assert np.allclose(v[first_cv:], 4.1, atol=1e-9)
    assert (np.diff(i[first_cv:]) >= -1e-12).all()
    ends = [e for o in outs for e in o.segment_events if e.phase == "end"]
    assert ends[-1].reason == "cv_cutoff"
    assert -i[-1] <= 0.0045
    assert outs[-1].finished


def test_lower_cutoff_ends_a_discharge(tmp_path: Path) -> None:
    body = COIN.replace("soc: 1.0", "soc: 0.2") + (
        "timeline:\n  - constant_current: {current_a: 0.09, duration_s: 20000}\n  - rest: {duration_s: 10}\n"
    )
    outs = run_all(Engine(scenario(tmp_path, body), FixedCircuitSource()), 1e9)
    ends = [(o, e) for o in outs for e in o.segment_events if e.phase == "end"]
    out, first = ends[0]
    assert first.reason == "cutoff_low"
    assert out.time_us < 20000 * 1_000_000
    assert out.true.voltage_v[0] <= 3.0
    assert out.true.flags[0] & CellFlags.VOLTAGE_LOW_LIMIT


def test_thermal_rise_under_load_and_cool_down(tmp_path: Path) -> None:
    body = BIG + (
        "timeline:\n  - constant_current: {current_a: 8, duration_s: 200}\n  - rest: {duration_s: 2000}\n"
    )
    outs = run_all(Engine(scenario(tmp_path, body), FixedCircuitSource()), 1e9)
    temp = np.array([o.true.temp_c[0] for o in outs])
    assert temp[1999] > 25.5
    assert (np.diff(temp[:2000]) > 0).all()
    assert (np.diff(temp[2001:]) < 0).all()
    assert temp[-1] < 25 + 0.2 * (temp[1999] - 25)


def test_drive_cycle_interpolates_and_loops(tmp_path: Path) -> None:
    (tmp_path / "cyc.csv").write_text("# t, I\n0,0.01\n1,0.02\n2,0.03\n3,0.04\n", encoding="utf-8")
    body = COIN.replace("soc: 1.0", "soc: 0.5") + (
        "timeline:\n  - drive_cycle: {cycle: cyc.csv, signal: current, loops: 3, scale: 2}\n"
    )
    outs = run_all(Engine(scenario(tmp_path, body), FixedCircuitSource()), 1e9)
    i = np.array([o.true.current_a[0] for o in outs])
    assert i.size == 90
    assert i[5] == pytest.approx(2 * 0.015)
    assert np.allclose(i[:30], i[30:60])
    assert np.allclose(i[:30], i[60:90])
    assert [e.reason for o in outs for e in o.segment_events if e.phase == "end"] == ["cycles"]


def test_constant_power_draws_the_power(tmp_path: Path) -> None:
    body = BIG + "timeline:\n  - constant_power: {power_w: 5, duration_s: 10}\n"
    outs = run_all(Engine(scenario(tmp_path, body), FixedCircuitSource()), 1e9)
    p = outs[-1].true.voltage_v * outs[-1].true.current_a
    assert p[0] == pytest.approx(5.0, rel=1e-9)


# ------------------------------------------------------------------------------------------------- EIS
def test_instant_eis_on_interval_matches_circuit(tmp_path: Path) -> None:
    body = COIN.replace("eis: {interval_s: null}", "eis: {interval_s: 5}") + (
        "timeline:\n  - rest: {duration_s: 12}\n"
    )
    eng = Engine(scenario(tmp_path, body), FixedCircuitSource())
    outs = run_all(eng, 1e9)
    spectra = [(o.time_us, s) for o in outs for s in o.spectra]
    assert [t for t, _ in spectra] == [5_000_000, 10_000_000]
    _, spec = spectra[0]
    assert spec.freq_hz.size == 61
    assert spec.z_ohm.shape == (1, 61)
    params = FixedCircuitSource().params("zhang2020", spec.soc, spec.temp_c, spec.soh)
    assert np.allclose(spec.z_ohm, impedance(params, spec.freq_hz[None, :]))
    assert list(spec.spectrum_ids) == [1]
    assert list(spectra[1][1].spectrum_ids) == [2]


def test_sweep_timing_and_drifting_operating_point(tmp_path: Path) -> None:
    body = (
        "step_rate_hz: 10\n"
        "eis: {interval_s: null, mode: sweep, frequencies_hz: [100, 1, 0.1],\n"
        "      periods_per_point: 2, settle_s: 1}\n"
        "cells: {count: 2, profile: zhang2020, soc: 0.8}\n"
        "timeline:\n  - eis: {}\n  - constant_current: {current_a: 0.09, duration_s: 60}\n"
    )
    outs = run_all(Engine(scenario(tmp_path, body), FixedCircuitSource()), 1e9)
    pts = [p for o in outs for p in o.points]
    times = np.concatenate([p.time_us for p in pts])
    # start at t = 0.1 s (the eis segment runs at the first step); point k ends after sum(2 / f + 1)
    expected = 0.1 + np.cumsum([2 / 100 + 1, 2 / 1 + 1, 2 / 0.1 + 1])
    assert np.array_equal(times, np.round(expected * 1e6).astype(np.int64))
    (spec,) = [s for o in outs for s in o.spectra]
    assert spec.sweep_duration_us == round((expected[-1] - 0.1) * 1e6)
    assert spec.time_us == math.ceil(expected[-1] * 10) * 100_000
    # the SOC fell during the sweep: the last point belongs to a lower SOC than the first
    src = FixedCircuitSource()
    first_op = src.params("zhang2020", np.array([0.8]), np.array([25.0]), np.array([1.0]))
    assert spec.z_true_ohm[0, 0] == pytest.approx(impedance(first_op, np.array([100.0]))[0], rel=1e-3)
    assert spec.z_true_ohm[0, 2] != pytest.approx(impedance(first_op, np.array([0.1]))[0], rel=1e-4)


# ----------------------------------------------------------------------------------------------- faults
FAULTY = """
step_rate_hz: 10
eis: {interval_s: 1, frequencies: {min_hz: 0.1, max_hz: 1000, points_per_decade: 2}}
cells: {count: 3, profile: zhang2020, soc: 0.8}
timeline:
  - rest: {duration_s: 30}
"""


def faulty(tmp_path: Path, faults: str) -> list[StepOutput]:
    return run_all(Engine(scenario(tmp_path, FAULTY + "faults:\n" + faults), FixedCircuitSource()), 1e9)


def spectra_at(outs: list[StepOutput], time_s: float) -> tuple[np.ndarray, np.ndarray]:
    for o in outs:
        if o.time_us == round(time_s * 1e6):
            (s,) = o.spectra
            return s.z_ohm, s.z_true_ohm
    raise AssertionError(f"no spectrum at {time_s}")


def test_contact_resistance_raises_r0_and_emits_events(tmp_path: Path) -> None:
    outs = faulty(
        tmp_path, "  - {kind: contact_resistance, start_s: 10, end_s: 20, cells: [1], severity: 0.5}\n"
    )
    before, _ = spectra_at(outs, 5)
    during, _ = spectra_at(outs, 15)
    r0 = PROFILES["zhang2020"].params_25c[P.R0]
    assert during[1, 0].real - before[1, 0].real == pytest.approx(r0, rel=0.05)
    assert during[0, 0].real == pytest.approx(before[0, 0].real, rel=1e-3)
    events = [e for o in outs for e in o.fault_events]
    assert [(e.phase, e.time_us, e.cells, e.kind, e.severity) for e in events] == [
        (FaultPhase.START, 10_000_000, (1,), FaultKind.CONTACT_RESISTANCE, 0.5),
        (FaultPhase.END, 20_000_000, (1,), FaultKind.CONTACT_RESISTANCE, 0.5),
    ]
    flagged = next(o for o in outs if o.time_us == 15_000_000).true.flags
    assert flagged[1] & CellFlags.FAULT_ACTIVE
    assert not flagged[0] & CellFlags.FAULT_ACTIVE


def test_a_lasting_contact_fault_does_not_evaluate_the_model_every_step(tmp_path: Path) -> None:
    """The model is the costly part of a step: a physics fault re-applies itself to the cached circuit
    (each step while it ramps), and the model runs again only when the operating point moves."""
    calls = 0

    class Counting(FixedCircuitSource):
        def params(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return super().params(*args, **kwargs)

    body = (
        "step_rate_hz: 10\n"
        "eis: {frequencies: {min_hz: 0.1, max_hz: 1000, points_per_decade: 2}}\n"
        "cells: {count: 3, profile: zhang2020, soc: 0.8}\n"
        "timeline:\n  - rest: {duration_s: 30}\n"
        "faults:\n"
        "  - {kind: contact_resistance, start_s: 10, cells: [1], resistance_factor: 3.0, ramp_s: 5}\n"
    )
    eng = Engine(scenario(tmp_path, body), Counting())
    r0 = []
    for _ in eng.run(30):
        r0.append(eng._circuit()[6][:, P.R0].copy())
    assert calls == 1  # at rest nothing moves the operating point
    base = r0[0]
    factor = np.array([r[1] / base[1] for r in r0])
    assert np.all(np.diff(factor) >= 0)
    assert 40 <= np.count_nonzero((factor > 1) & (factor < 3)) <= 52  # ramping for 5 s at 10 steps/s
    assert factor[-1] == pytest.approx(3.0)
    assert all(np.array_equal(r[[0, 2]], base[[0, 2]]) for r in r0)


def test_capacity_fade_internal_short_heating(tmp_path: Path) -> None:
    outs = faulty(
        tmp_path,
        "  - {kind: capacity_fade, start_s: 5, cells: [0], capacity_loss: 0.1}\n"
        "  - {kind: internal_short, start_s: 5, cells: [1], short_resistance_ohm: 10}\n"
        "  - {kind: accelerated_heating, start_s: 5, cells: [2], extra_heat_w: 0.05}\n",
    )
    last = outs[-1].true
    assert last.soh[0] == pytest.approx(0.9)
    assert last.soh[1] == pytest.approx(1.0)
    # the short drains about V / R over 25 s at rest
    expected = 3.9 / 10 * 25 / (3600 * 0.045)
    assert 0.8 - last.soc[1] == pytest.approx(expected, rel=0.05)
    assert last.soc[0] == pytest.approx(0.8)
    assert last.soc[2] == pytest.approx(0.8)
    assert last.temp_c[2] > 25.3
    assert last.temp_c[0] == pytest.approx(25.0)


def test_lithium_plating_signature_only_when_cold(tmp_path: Path) -> None:
    body = FAULTY.replace(
        "count: 3, profile: zhang2020, soc: 0.8", "count: 2, profile: zhang2020, soc: 0.8, temp_c: -5"
    )
    body = body.replace("cells:", "ambient: {temp_c: -5}\ncells:")
    faults = "faults:\n  - {kind: lithium_plating, start_s: 0, cells: [0], below_temp_c: 0}\n"
    outs = run_all(Engine(scenario(tmp_path, body + faults), FixedCircuitSource()), 1e9)
    z, _ = spectra_at(outs, 5)
    assert z[0, -1].real > 1.5 * z[1, -1].real
    assert abs(z[0, 0] - z[1, 0]) < 0.5 * abs(z[0, -1] - z[1, -1])
    warm = scenario(tmp_path, FAULTY + faults, name="warm")
    z_warm, _ = spectra_at(run_all(Engine(warm, FixedCircuitSource()), 1e9), 5)
    assert z_warm[0, -1] == pytest.approx(z_warm[1, -1], rel=1e-6)


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("{kind: noise, start_s: 0, cells: [0], snr_db: 20}", "noise"),
        ("{kind: gain, start_s: 0, cells: [0], gain: 1.1}", "gain"),
        ("{kind: offset, start_s: 0, cells: [0], offset_ohm: 0.5}", "offset"),
        ("{kind: quantisation, start_s: 0, cells: [0], lsb_ohm: 0.25}", "quant"),
        ("{kind: outliers, start_s: 0, cells: [0], probability: 1.0, magnitude: 5}", "outliers"),
        ("{kind: nan, start_s: 0, cells: [0], probability: 1.0}", "nan"),
        ("{kind: dropped_points, start_s: 0, cells: [0], probability: 1.0}", "dropped"),
        ("{kind: drift, start_s: 0, cells: [0], rate_per_h: 10}", "drift"),
        ("{kind: spectrum_drift, start_s: 0, cells: [0], drift_rel: 0.5}", "spectrum_drift"),
    ],
)
def test_measurement_faults_change_only_the_report(tmp_path: Path, fault: str, check: str) -> None:
    outs = faulty(tmp_path, f"  - {fault}\n")
    (spec,) = next(o for o in outs if o.time_us == 10_000_000).spectra
    rep, true = spec.z_ohm, spec.z_true_ohm
    assert np.array_equal(rep[1], true[1])
    assert np.array_equal(true[0], true[1]) or np.allclose(true[0], true[1])
    if check == "noise":
        rel = np.abs(rep[0] - true[0]) / np.abs(true[0])
        assert 0.01 < float(np.sqrt(np.mean(rel**2))) < 0.3
    elif check == "gain":
        assert np.allclose(rep[0], 1.1 * true[0])
    elif check == "offset":
        assert np.allclose(rep[0], true[0] + 0.5)
    elif check == "quant":
        assert np.allclose(rep[0].real / 0.25, np.round(rep[0].real / 0.25))
        assert not np.allclose(rep[0], true[0])
    elif check == "outliers":
        assert (np.abs(rep[0] - true[0]) > 3 * np.abs(true[0])).all()
    elif check == "nan":
        assert np.isnan(rep[0]).all()
    elif check == "dropped":
        assert spec.dropped[0].all()
        assert not spec.dropped[1].any()
    elif check == "drift":
        assert np.allclose(rep[0], true[0] * (1 + 10 * 10 / 3600))
    else:
        ratio = (rep[0] / true[0]).real
        assert ratio[0] == pytest.approx(1.0)
        assert ratio[-1] == pytest.approx(1.5)
        assert np.allclose(np.diff(ratio), 0.5 / (ratio.size - 1))
    flags = next(o for o in outs if o.time_us == 10_000_000).true.flags
    assert flags[0] & (CellFlags.MEASUREMENT_FAULT | CellFlags.FAULT_ACTIVE)


def test_frozen_impedance_and_voltage_offset(tmp_path: Path) -> None:
    outs = faulty(
        tmp_path,
        "  - {kind: frozen, start_s: 5.05, end_s: 20, cells: [0], signal: impedance}\n"
        "  - {kind: offset, start_s: 3, cells: [2], signal: voltage, offset_v: 0.015}\n"
        "  - {kind: frozen, start_s: 3, cells: [1], signal: temperature}\n"
        "  - {kind: capacity_fade, start_s: 5, cells: [0], capacity_loss: 0.5}\n",
    )
    at5, _ = spectra_at(outs, 5)
    at15, true15 = spectra_at(outs, 15)
    at25, true25 = spectra_at(outs, 25)
    assert np.array_equal(at15[0], at5[0])
    assert not np.allclose(true15[0], at5[0])
    assert np.array_equal(at25[0], true25[0])
    o = outs[100]
    assert o.reported.voltage_v[2] == pytest.approx(o.true.voltage_v[2] + 0.015)
    assert o.reported.voltage_v[0] == o.true.voltage_v[0]


def test_stream_faults_are_scheduled_not_applied(tmp_path: Path) -> None:
    outs = faulty(
        tmp_path,
        "  - {kind: drop_frames, start_s: 5, duration_s: 5, probability: 0.5, seed: 42}\n"
        "  - {kind: disconnect, start_s: 12, end_s: 13}\n",
    )
    active = {o.time_us: [(f.kind, f.seed) for f in o.stream_faults] for o in outs}
    assert active[4_000_000] == []
    assert active[7_000_000] == [(FaultKind.DROP_FRAMES, 42)]
    assert active[12_500_000] == [(FaultKind.DISCONNECT, active_seed(outs, FaultKind.DISCONNECT))]
    assert active[20_000_000] == []
    events = [(e.kind, e.phase, e.cells) for o in outs for e in o.fault_events]
    assert (FaultKind.DROP_FRAMES, FaultPhase.START, ()) in events
    assert (FaultKind.DISCONNECT, FaultPhase.END, ()) in events


def active_seed(outs: list[StepOutput], kind: FaultKind) -> int:
    return next(f.seed for o in outs for f in o.stream_faults if f.kind == kind)


def test_fault_anchored_to_a_segment_label(tmp_path: Path) -> None:
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "fault_showcase.yaml")
    eng = Engine(sc, FixedCircuitSource())
    events = [e for o in eng.run(200) for e in o.fault_events]
    noise = [e for e in events if e.kind == FaultKind.NOISE]
    assert noise
    assert noise[0].time_us == 120_000_000
    assert noise[0].cells == tuple(range(12))


# ---------------------------------------------------------------------------------- controls, determinism
def test_overrides_and_release(tmp_path: Path) -> None:
    eng = Engine(scenario(tmp_path, BIG + "timeline:\n  - rest: {duration_s: 100}\n"), FixedCircuitSource())
    eng.set_load_current(2.0, [0])
    assert eng.step().true.current_a[0] == 2.0
    eng.set_load_current(50.0)
    out = eng.step()
    assert out.true.current_a[0] == PROFILES["rashid2023"].current_max_a
    assert out.true.flags[0] & CellFlags.CURRENT_LIMIT
    eng.set_load_current(None)
    assert eng.step().true.current_a[0] == 0.0
    eng.set_ambient(40.0)
    assert eng.step().ambient_c == 40.0
    eng.set_ambient(None)
    assert eng.step().ambient_c == 25.0


def test_injected_fault_request_and_clear(tmp_path: Path) -> None:
    eng = Engine(scenario(tmp_path, FAULTY), FixedCircuitSource())
    list(eng.run(2.5))
    fid = eng.inject_fault(FaultKind.GAIN, [2], severity=0.3, params={"gain": 2.0})
    sid = eng.request_spectrum([2])
    out = eng.step()
    assert [(e.fault_id, e.phase) for e in out.fault_events] == [(fid, FaultPhase.START)]
    (spec,) = out.spectra
    assert list(spec.cells) == [2]
    assert int(spec.spectrum_ids[0]) == sid
    assert np.allclose(spec.z_ohm, 2 * spec.z_true_ohm)
    assert eng.active_faults() == [(fid, FaultKind.GAIN, (2,), 0.3)]
    assert eng.clear_fault(0) == 1
    assert [(e.fault_id, e.phase) for e in eng.step().fault_events] == [(fid, FaultPhase.END)]


def fingerprint(outs: list[StepOutput]) -> list[bytes]:
    out = []
    for o in outs:
        cols = (o.true, o.reported)
        out.append(
            b"".join(getattr(c, k).tobytes() for c in cols for k in ("voltage_v", "temp_c", "soc", "flags"))
        )
        out.extend(s.z_ohm.tobytes() + s.dropped.tobytes() for s in o.spectra)
        out.extend(repr((e.time_us, e.fault_id, e.kind, e.phase, e.cells)).encode() for e in o.fault_events)
    return out


def test_same_seed_same_bits_other_seed_differs() -> None:
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "fault_showcase.yaml")
    a = fingerprint(list(Engine(sc, FixedCircuitSource()).run(700)))
    b = fingerprint(list(Engine(sc, FixedCircuitSource()).run(700)))
    c = fingerprint(list(Engine(sc, FixedCircuitSource(), seed=99).run(700)))
    assert a == b
    assert a != c


def test_seek_back_replays_controls(tmp_path: Path) -> None:
    eng = Engine(scenario(tmp_path, BIG + "timeline:\n  - rest: {duration_s: 100}\n"), FixedCircuitSource())
    list(eng.run(10))
    eng.set_load_current(3.0)
    list(eng.run(20))
    eng.set_load_current(None)
    ref = {o.time_us: o.true.voltage_v.tobytes() for o in eng.run(40)}
    eng.set_load_current(-1.0)  # after the seek target: forgotten
    list(eng.run(60))
    eng.seek(25)
    assert eng.time_us == 25_000_000
    again = {o.time_us: o.true.voltage_v.tobytes() for o in eng.run(40)}
    assert len(set(again) & set(ref)) == 150
    assert all(again[t] == ref[t] for t in set(again) & set(ref))
    eng.seek(50)
    assert eng.time_us == 50_000_000
    assert eng.current_a[0] == 0.0


def test_pinn_adapter_passes_operating_points() -> None:
    class FakePinn:
        profiles: ClassVar[list[str]] = ["rashid2023", "zhang2020"]

        def params(self, profile_idx: int, op: npt.ArrayLike, latent: npt.ArrayLike | None = None) -> F64:
            rows = np.asarray(op)
            out = np.zeros((rows.shape[0], N_PARAMS))
            out[:, 0] = profile_idx + rows[:, 0]
            out[:, 1] = rows[:, 1]
            out[:, 2] = 0.0 if latent is None else float(np.sum(latent))
            return out

    src = PinnCircuitSource(FakePinn(), latents={"cell7": ("zhang2020", [1.0, 2.0])})
    got = src.params("zhang2020", np.array([0.5]), np.array([30.0]), np.array([0.9]))
    assert got[0, :3].tolist() == [1.5, 30.0, 0.0]
    assert src.params("cell7", np.array([0.5]), np.array([30.0]), np.array([0.9]))[0, 2] == 3.0
    with pytest.raises(ValueError, match="unknown profile"):
        src.params("nope", np.array([0.5]), np.array([30.0]), np.array([0.9]))


def test_extrapolated_flag_outside_trained_range(tmp_path: Path) -> None:
    cold = BIG.replace("soc: 0.5", "soc: 0.5, temp_c: 0") + "ambient: {temp_c: 0}\n"
    out = Engine(
        scenario(tmp_path, cold + "timeline:\n  - rest: {duration_s: 1}\n"), FixedCircuitSource()
    ).step()
    assert out.true.flags[0] & CellFlags.EXTRAPOLATED


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_bundled_scenarios_run(path: Path) -> None:
    eng = Engine(load_scenario(path), FixedCircuitSource())
    n = 0
    for out in eng.run(600):
        n += 1
        assert np.isfinite(out.true.voltage_v).all()
        assert np.isfinite(out.true.temp_c).all()
        assert (out.true.voltage_v > 2.0).all()
        assert (out.true.voltage_v < 4.5).all()
    assert n == 6000


@pytest.mark.parametrize(
    ("seek_s", "until_s", "replayed"),
    [
        (100.0, 200.0, 400),  # from the checkpoint at 60 s, across the rest -> drive boundary at 120 s
        (330.0, 400.0, 300),  # from the checkpoint at 300 s, which holds the fault injected at 300 s
        (300.0, 400.0, 600),  # exactly at that checkpoint: its control is forgotten, so from 240 s
    ],
)
def test_seek_back_restarts_from_a_checkpoint_and_matches_a_straight_run(
    seek_s: float, until_s: float, replayed: int
) -> None:
    """Seeking back must not re-run from t = 0 (a long scenario would stall the server), and must land in
    exactly the state a straight run reaches: faults with their random draws, timeline, controls."""
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "fault_showcase.yaml")

    def outputs(eng: Engine, until: float) -> dict[int, tuple[bytes, ...]]:
        return {
            o.time_us: (
                o.reported.voltage_v.tobytes(),
                o.reported.current_a.tobytes(),
                b"".join(s.z_ohm.tobytes() for s in o.spectra),
                repr(o.fault_events).encode(),
            )
            for o in eng.run(until)
        }

    def run_with_control(until: float) -> Engine:
        """Runs to ``until``, injecting a fault at 300 s on the way."""
        eng = Engine(sc, FixedCircuitSource())
        list(eng.run(min(until, 300)))
        if until > 300:
            eng.inject_fault(FaultKind.NOISE, [1], 1.0, 200.0, {"signal": "voltage", "snr_db": 20})
            list(eng.run(until))
        return eng

    straight = run_with_control(seek_s)
    ref = outputs(straight, until_s)
    eng = run_with_control(800)
    assert [k for k, _ in eng._checkpoints][:5] == [600, 1200, 1800, 2400, 3000]  # every 60 s simulated
    advanced = 0
    step = eng._advance

    def counting() -> Any:
        nonlocal advanced
        advanced += 1
        return step()

    eng._advance = counting  # type: ignore[method-assign]
    assert eng.seek_steps(seek_s) == replayed  # what the server weighs before it accepts a SEEK
    eng.seek(seek_s)
    assert advanced == replayed  # from the last checkpoint before the target, not from t = 0
    again = outputs(eng, until_s)
    assert again.keys() == ref.keys()
    assert all(again[t] == ref[t] for t in ref)


def test_seek_back_replays_the_eis_modes_in_force_then(tmp_path: Path) -> None:
    """The EIS modes are state: seeking back must start from the modes of that time, not today's, or the
    spectra differ from a straight run. Their ids do not repeat: they count the spectra given out."""
    body = (
        "step_rate_hz: 10\n"
        "eis: {interval_s: 1, frequencies: {min_hz: 10, max_hz: 1000, points_per_decade: 2}}\n"
        "cells: {count: 2, profile: zhang2020, soc: 0.8}\n"
        "timeline:\n  - rest: {duration_s: 100}\n"
    )

    def spectra(eng: Engine, until: float) -> list[tuple[int, int, list[int]]]:
        out = [(o.time_us, s) for o in eng.run(until) for s in o.spectra]
        return [(t, s.sweep_duration_us, s.spectrum_ids.tolist()) for t, s in out]

    def straight_to(until: float) -> Engine:
        eng = Engine(scenario(tmp_path, body), FixedCircuitSource())
        list(eng.run(min(until, 3)))
        eng.set_eis_modes(frozenset({"instant", "sweep"}))
        list(eng.run(until))
        return eng

    ref = spectra(straight_to(6), 9)
    eng = straight_to(8)
    given = int(eng._spectrum_counter.max())
    eng.seek(6)
    again = spectra(eng, 9)
    assert [(t, d) for t, d, _ in again] == [(t, d) for t, d, _ in ref]
    # the same spectra, but ids are never given twice: they go on from the last one given before the seek
    ids = [i for _, _, cell_ids in again for i in cell_ids[:1]]
    assert ids == sorted(set(ids))
    assert min(ids) == given + 1


def test_checkpoints_are_at_most_checkpoint_max_steps_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a high step rate a simulated minute is many steps: seeking back must not redo that many."""
    import hil_server.sim.engine as engine_module

    monkeypatch.setattr(engine_module, "CHECKPOINT_MAX_STEPS", 50)
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "fault_showcase.yaml")
    eng = Engine(sc, FixedCircuitSource())
    list(eng.run(30))
    assert [k for k, _ in eng._checkpoints] == [50, 100, 150, 200, 250]
    assert eng.seek_steps(12) == 20  # from the checkpoint at step 100
    assert eng.seek_steps(40) == 100  # ahead: every step from here


def test_ended_faults_are_dropped_after_their_end_event(tmp_path: Path) -> None:
    """A bench that injects faults for days must not make every step slower: ended faults leave the engine
    once their END event has gone out."""
    eng = Engine(scenario(tmp_path, BIG + "timeline:\n  - rest: {duration_s: 1000}\n"), FixedCircuitSource())
    ends = 0
    for _ in range(200):
        eng.inject_fault(FaultKind.NOISE, [0], 1.0, 0.5, {"signal": "voltage"})
        for out in eng.run(eng.time_s + 1.0):
            ends += sum(e.phase == FaultPhase.END for e in out.fault_events)
    assert ends == 200
    assert len(eng._faults) <= 1


def test_control_history_is_bounded_and_seek_back_refused_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending controls for days must not grow memory without bound: the older half of the
    history goes, a seek back before what can still be rebuilt exactly is refused with a reason, and a seek
    back after it still lands exactly where a straight run is."""
    import hil_server.sim.engine as engine_module

    monkeypatch.setattr(engine_module, "MAX_CONTROLS", 100)
    body = BIG + "timeline:\n  - rest: {duration_s: 10000}\n"

    def run(eng: Engine, seconds: int) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for i in range(seconds):  # one control per simulated second
            eng.set_ambient(20.0 + 5 * (i % 7))
            out.update({o.time_us: o.true.temp_c.tobytes() for o in eng.run(eng.time_s + 1.0)})
        return out

    eng = Engine(scenario(tmp_path, body), FixedCircuitSource())
    run(eng, 300)
    assert len(eng._controls) <= 100
    with pytest.raises(ValueError, match="cannot seek back before"):
        eng.seek(10)
    earliest = eng._history_from_k / 10
    assert 0 < earliest < 300
    target = int(earliest) + 20
    straight = Engine(scenario(tmp_path, body), FixedCircuitSource())
    run(straight, target)  # the controls before the target, as the seek keeps them; none after
    ref = {o.time_us: o.true.temp_c.tobytes() for o in straight.run(target + 10)}
    eng.seek(target)
    again = {o.time_us: o.true.temp_c.tobytes() for o in eng.run(target + 10)}
    assert len(again) == 100
    assert again == ref
