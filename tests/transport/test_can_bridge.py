"""eis-hil can-bridge on python-can's virtual bus, decoded with cantools from foxBMS 2's own DBC
(../shared/data/foxbms, as CI has it) and compared with the TCP stream at the same steps."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import can
import cantools
import numpy as np
import pytest

import protocol as p
from hil_server.cli import main
from hil_server.testing import loopback
from hil_server.transport.can.bridge import CanEncoder
from hil_server.transport.can.budget import BudgetError, classic_frame_bits, plan_bus
from hil_server.transport.can.mapping import MappingError, bind, load_mapping

ROOT = Path(__file__).resolve().parents[2]
FOX_DBC = ROOT.parent / "shared" / "data" / "foxbms" / "foxbms.dbc"
MF = p.CellFlags.MEASUREMENT_FAULT

SCENARIO = """\
name: can_faults
description: 6 cells on US06, a stuck temperature sensor, NaN and offset voltages, noisy impedance
seed: 3
step_rate_hz: 10
eis:
  interval_s: 600
  mode: instant
  frequencies: {min_hz: 1, max_hz: 1000, points_per_decade: 2}
cells:
  count: 6
  profile: zhang2020
  soc: 0.9
ambient:
  temp_c: -5
timeline:
  - drive_cycle: {cycle: US06, scale: 0.009, loops: 1}
faults:
  - {kind: frozen, start_s: 2, duration_s: 3, cells: [1], signal: temperature}
  - {kind: nan, start_s: 4, duration_s: 2, cells: [4], signal: voltage, probability: 0.5}
  - {kind: offset, start_s: 1, duration_s: 1, cells: [5], signal: voltage, offset_v: 0.015}
  - {kind: noise, start_s: 3, duration_s: 4, cells: [2], signal: impedance, snr_db: 30}
"""
AFFECTED = {"voltage": {4, 5}, "temperature": {1}}
"""Which cells' readings of each quantity the scenario's measurement faults distort."""
UNTIL_S = 8.0


@pytest.fixture(scope="module")
def fox_db() -> Any:
    return cantools.database.load_file(FOX_DBC)


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "can_faults.yaml"
    path.write_text(SCENARIO)
    return path


def _tcp_states(scenario: Path) -> dict[int, p.CellStates]:
    """The reference: what a TCP client of the same scenario receives, by simulated time."""

    async def collect() -> dict[int, p.CellStates]:
        out: dict[int, p.CellStates] = {}
        async with loopback(scenario) as (_, client):
            await client.subscribe(p.SubscribeMask.CELL_STATES)
            while True:
                msg = await client.next_message(p.CellStates, timeout=10)
                if msg.t_sim_us > UNTIL_S * 1e6:
                    return out
                out[msg.t_sim_us] = msg

    return asyncio.run(collect())


def _bridge(scenario: Path, channel: str, *extra: str) -> int:
    argv = ["can-bridge", "--interface", "virtual", "--channel", channel, "--dbc", str(FOX_DBC)]
    argv += ["--mapping", "foxbms", "--scenario", str(scenario), "--speed", "0", "--until", str(UNTIL_S)]
    return main([*argv, *extra])


def _drain(bus: can.BusABC) -> list[can.Message]:
    out = []
    while (msg := bus.recv(timeout=0)) is not None:
        out.append(msg)
    return out


def test_frames_decoded_with_foxbms_dbc_match_the_tcp_stream_with_faults(
    tmp_path: Path, scenario: Path, fox_db: Any
) -> None:
    reference = _tcp_states(scenario)
    channel = f"t-{uuid.uuid4().hex}"
    log_file = tmp_path / "run.log"
    with can.Bus(interface="virtual", channel=channel) as rx:
        assert _bridge(scenario, channel, "--log", str(log_file)) == 0
        live = _drain(rx)
    logged = list(can.LogReader(log_file))
    assert [(m.arbitration_id, bytes(m.data)) for m in live] == [
        (m.arbitration_id, bytes(m.data)) for m in logged
    ]
    volts, temps = (
        fox_db.get_message_by_name("AFE_CellVoltages"),
        fox_db.get_message_by_name("AFE_CellTemperatures"),
    )
    seen: dict[tuple[int, str], int] = {}
    flagged = {"voltage": 0, "temperature": 0}
    impedance_only = 0
    for msg in logged:
        t_us = round(msg.timestamp * 1e6)
        ref = reference[t_us]  # every frame belongs to a step the TCP stream carried
        rec = {int(c): i for i, c in enumerate(ref.records["cell"])}
        dec = fox_db.decode_message(msg.arbitration_id, msg.data, decode_choices=False)
        if msg.arbitration_id == volts.frame_id:
            kind, first, per, sig = "voltage", 4 * dec["AFE_CellVoltages_Mux"], 4, "CellVoltage"
        else:
            assert msg.arbitration_id == temps.frame_id
            kind, first, per, sig = "temperature", 6 * dec["AFE_CellTemperatures_Mux"], 6, "CellTemperature"
        for index in range(first, first + per):
            value, flag = dec[f"{sig}_{index:03d}"], dec[f"{sig}_{index:03d}_invalidFlag"]
            if index not in rec:  # the stream has 6 cells: the rest of the frame is marked invalid
                assert (value, flag) == (0, 1)
                continue
            r = ref.records[rec[index]]
            expect = r["voltage_uV"] / 1000 if kind == "voltage" else r["temperature_mdegC"] / 1000
            assert abs(value - expect) <= 0.5 + 1e-9, (t_us, kind, index, value, expect)  # 1 mV, 1 degC
            # the stream's bit is per cell; the flag is per signal: set bit = invalid (foxBMS firmware)
            expect_flag = int(bool(r["flags"] & MF) and index in AFFECTED[kind])
            assert flag == expect_flag, (t_us, kind, index)
            flagged[kind] += flag
            impedance_only += int(bool(r["flags"] & MF) and index == 2)
            seen[(t_us, kind)] = seen.get((t_us, kind), 0) + 1
    # every step of the stream, every cell, both quantities (period 100 ms = the step)
    assert set(seen) == {(t, k) for t in reference for k in ("voltage", "temperature")}
    assert set(seen.values()) == {6}
    # at 10 Hz: cell 1 temperature frozen 3 s; cell 4 voltage NaN 2 s + cell 5 offset 1 s
    assert flagged == {"voltage": 30, "temperature": 30}
    assert impedance_only == 2 * 40  # cell 2's bit was set 4 s, its voltage and temperature stayed valid


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
def test_log_formats_replay_what_was_sent(tmp_path: Path, scenario: Path, suffix: str) -> None:
    channel = f"t-{uuid.uuid4().hex}-99999999"  # BLF numbers channels in a u16: this one is not kept
    log_file = tmp_path / f"run{suffix}"
    with can.Bus(interface="virtual", channel=channel) as rx:
        assert _bridge(scenario, channel, "--log", str(log_file)) == 0
        live = _drain(rx)
    logged = list(can.LogReader(log_file))
    assert len(live) == 3 * 80  # 2 voltage + 1 temperature frames per step, 80 steps
    assert [(m.arbitration_id, bytes(m.data)) for m in logged] == [
        (m.arbitration_id, bytes(m.data)) for m in live
    ]
    times = [m.timestamp - logged[0].timestamp for m in logged]
    assert times[-1] == pytest.approx(7.9, abs=1e-3)  # simulated time, for can.Player


def test_worst_case_frame_bits_and_foxbms_budget(fox_db: Any) -> None:
    assert classic_frame_bits(8) == 135
    assert classic_frame_bits(8, extended=True) == 160
    plans = bind(load_mapping("foxbms"), fox_db, range(160))
    budget = plan_bus(plans, 500_000)
    assert [(m.name, m.frames_per_period) for m in budget.messages] == [
        ("AFE_CellVoltages", 40),
        ("AFE_CellTemperatures", 27),
    ]
    assert budget.bits_per_s == pytest.approx(67 * 135 * 10)  # 90 450 bit/s
    assert budget.fits
    assert budget.load == pytest.approx(0.1809)
    slow = plan_bus(plans, 100_000)
    assert slow.decimation == 2
    assert "does NOT fit" in slow.describe()
    with pytest.raises(BudgetError, match="refused"):
        plan_bus(plans, 100_000, decimate=False)
    paced = plan_bus(plans, 500_000, speed=0)  # speed 0 on a real bus: the speed that fills 70 %
    assert paced.bus_speed == pytest.approx(0.7 * 500_000 / 90_450)


def _states(step: int, n: int, voltage_uV: int = 3_700_000, flags: int | list[int] = 0) -> p.CellStates:
    return p.CellStates.from_columns(
        step * 100_000,
        0,
        step,
        cell=np.arange(n),
        voltage_uV=np.full(n, voltage_uV),
        current_uA=0,
        temperature_mdegC=25_000,
        soc_ppm=500_000,
        soh_ppm=1_000_000,
        flags=flags,
    )


def test_decimation_multiplies_the_periods_and_out_of_range_is_flagged(fox_db: Any) -> None:
    plans = bind(load_mapping("foxbms"), fox_db, range(4))
    enc = CanEncoder(plans, range(4), decimation=3)
    sent = []
    for step in range(1, 10):
        assert enc.update(_states(step, 4, voltage_uV=9_000_000 if step == 7 else 3_700_000))
        sent.append(len(enc.due()))
    assert sent == [2, 0, 0, 2, 0, 0, 2, 0, 0]  # every 3rd step: one voltage and one temperature frame
    assert enc.stats.clamped == 4  # step 7: 9 V does not fit 13 bits of mV
    frame = CanEncoder(plans, range(4))
    frame.update(_states(7, 4, voltage_uV=9_000_000))
    dec = fox_db.decode_message(0x270, frame.due()[0].data, decode_choices=False)
    assert dec["CellVoltage_000"] == 8191
    assert dec["CellVoltage_000_invalidFlag"] == 1


def test_a_step_split_over_frames_is_sent_once_complete(fox_db: Any) -> None:
    plans = bind(load_mapping("foxbms"), fox_db, range(8))
    enc = CanEncoder(plans, range(8))
    whole = _states(1, 8)
    first = p.CellStates(whole.t_sim_us, 0, 1, whole.records[:5])
    rest = p.CellStates(whole.t_sim_us, 0, 1, whole.records[5:])
    assert not enc.update(first)
    assert enc.update(rest)
    assert len(enc.due()) == 2 + 2


def test_mapping_errors_name_file_line_and_key(tmp_path: Path, fox_db: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "messages:\n"
        "  - message: AFE_CellVoltages\n"
        "    period_ms: 100\n"
        "    perod: 3\n"
        "    signals:\n"
        "      - {field: volts, name: 'CellVoltage_{index:03d}'}\n"
    )
    with pytest.raises(MappingError) as err:
        load_mapping(bad)
    text = str(err.value)
    assert f"{bad}:4: messages[0].perod: unknown key 'perod'" in text
    assert f"{bad}:6: messages[0].signals[0].field: expected one of voltage" in text
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        "messages:\n"
        "  - message: AFE_CellVoltage\n"
        "    period_ms: 100\n"
        "    signals: [{field: voltage, name: 'CellVoltage_{index:03d}'}]\n"
        "  - message: AFE_CellTemperatures\n"
        "    period_ms: 100\n"
        "    signals:\n"
        "      - {field: temperature, name: 'CellTemp_{index}'}\n"
    )
    with pytest.raises(MappingError) as err:
        bind(load_mapping(wrong), fox_db, range(4))
    text = str(err.value)
    assert f"{wrong}:2: messages[0].message: no message 'AFE_CellVoltage' in the DBC" in text
    assert "did you mean 'AFE_CellVoltages'" in text
    assert f"{wrong}:8: messages[1].signals[0].name: cell 0: no signal 'CellTemp_0'" in text
    # foxBMS's DBC has 216 cell voltages (mux 0-53) and 180 temperatures (mux 0-29)
    with pytest.raises(
        MappingError, match=r"foxbms_afe.yaml:\d+: .*cell 180: no signal 'CellTemperature_180'"
    ):
        bind(load_mapping("foxbms"), fox_db, range(200))
    with pytest.raises(MappingError, match=r"cell 216: no signal 'CellVoltage_216'"):
        bind(load_mapping("foxbms"), fox_db, range(220))


def test_cli_refuses_an_overloaded_bus_and_a_bad_log_before_starting(
    scenario: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = f"t-{uuid.uuid4().hex}"
    base = ["can-bridge", "--interface", "virtual", "--channel", channel, "--dbc", str(FOX_DBC)]
    base += ["--mapping", "foxbms", "--scenario", str(scenario), "--until", "1"]
    log_file = scenario.parent / "refused.blf"
    assert main([*base, "--bitrate", "5000", "--overload", "refuse", "--log", str(log_file)]) == 2
    assert not log_file.exists()  # refused before anything was sent: no empty log left
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "4050 bit/s worst case, 81.0 % of the bus: does NOT fit (limit 70 %)" in errors[0]
    assert "refused" in errors[0]
    assert main([*base, "--log", "/nonexistent-dir/run.blf"]) == 2
    assert "--log /nonexistent-dir/run.blf" in capsys.readouterr().err
    assert main([*base, "--log", "run.txt"]) == 2
    assert ".log, .asc, .blf" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("signals", "expect"),
    [({1: "temperature"}, (0, 1)), ({1: "impedance"}, (0, 0)), ({}, (1, 1))],  # {}: --server, signal unknown
)
def test_invalid_flag_follows_the_faults_signal(
    fox_db: Any, signals: dict[int, str], expect: tuple[int, int]
) -> None:
    plans = bind(load_mapping("foxbms"), fox_db, range(4))
    enc = CanEncoder(plans, range(4), fault_signals=signals)
    assert enc.update(_states(1, 4))
    assert not enc.needs_events()
    assert len(enc.due()) == 2
    assert enc.update(_states(2, 4, flags=[0, int(MF), 0, 0]))
    assert enc.needs_events()  # cell 1's bit turned on: wait for the FAULT_EVENT that follows
    enc.event(
        p.FaultEvent(200_000, 1, 1_000_000, p.FaultKind.FROZEN, p.FaultPhase.START, np.array([1], np.uint16))
    )
    volts, temps = (fox_db.decode_message(m.arbitration_id, m.data, decode_choices=False) for m in enc.due())
    assert (volts["CellVoltage_001_invalidFlag"], temps["CellTemperature_001_invalidFlag"]) == expect
    assert volts["CellVoltage_000_invalidFlag"] == 0
    assert temps["CellTemperature_004_invalidFlag"] == 1  # no such cell in the stream


def test_sigint_leaves_a_readable_log_and_no_process(tmp_path: Path, scenario: Path) -> None:
    log_file = tmp_path / "run.blf"
    argv = [
        sys.executable,
        "-m",
        "hil_server.cli",
        "can-bridge",
        "--interface",
        "virtual",
        "--channel",
        "sig",
    ]
    argv += [
        "--dbc",
        str(FOX_DBC),
        "--mapping",
        "foxbms",
        "--scenario",
        str(scenario),
        "--log",
        str(log_file),
    ]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the bridge to run (an event, not a delay)
            if "Ctrl-C stops" in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    frames = list(can.LogReader(log_file))  # a complete BLF file, however many frames it holds
    assert all(m.arbitration_id in (0x270, 0x280) for m in frames)


FD_DBC = """VERSION ""
NS_ :
BS_:
BU_: BMS
BO_ 1024 PackCells: 64 Vector__XXX
 SG_ Cell_00_mV : 0|16@1+ (1,0) [0|65535] "mV" Vector__XXX
 SG_ Cell_01_mV : 16|16@1+ (1,0) [0|65535] "mV" Vector__XXX
 SG_ Cell_00_T : 32|8@1- (0.5,0) [-64|63.5] "degC" Vector__XXX
 SG_ Cell_01_T : 40|8@1- (0.5,0) [-64|63.5] "degC" Vector__XXX
 SG_ Cell_00_Bad : 48|1@1+ (1,0) [0|1] "" Vector__XXX
 SG_ Cell_01_Bad : 49|1@1+ (1,0) [0|1] "" Vector__XXX
BA_DEF_ BO_ "VFrameFormat" ENUM {formats};
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_ "VFrameFormat" BO_ 1024 14;
""".format(
    formats=",".join(f'"{n}"' for n in ["StandardCAN", "ExtendedCAN", *["reserved"] * 12, "StandardCAN_FD"])
)
FD_MAPPING = """messages:
  - message: PackCells
    period_ms: 200
    signals:
      - {field: voltage, name: "Cell_{index:02d}_mV", invalid_flag: "Cell_{index:02d}_Bad"}
      - {field: temperature, name: "Cell_{index:02d}_T"}
"""


def test_can_fd_message_of_another_dbc_with_two_fields_and_a_period(tmp_path: Path, scenario: Path) -> None:
    dbc, mapping = tmp_path / "pack.dbc", tmp_path / "pack.yaml"
    dbc.write_text(FD_DBC)
    mapping.write_text(FD_MAPPING)
    reference = _tcp_states(scenario)
    db: Any = cantools.database.load_file(dbc)
    channel = f"t-{uuid.uuid4().hex}"
    argv = ["can-bridge", "--interface", "virtual", "--channel", channel, "--dbc", str(dbc)]
    argv += ["--mapping", str(mapping), "--scenario", str(scenario), "--speed", "0", "--until", str(UNTIL_S)]
    argv += ["--cells", "0", "1", "--data-bitrate", "2000000", "--log", str(tmp_path / "fd.log")]
    with can.Bus(interface="virtual", channel=channel) as rx:
        assert main(argv) == 0
        live = _drain(rx)
    logged = list(can.LogReader(tmp_path / "fd.log"))
    assert len(live) == len(logged) == 40  # 8 s at one frame per 200 ms
    assert all(m.is_fd and len(m.data) == 64 for m in live)
    for msg in logged:
        ref = reference[round(msg.timestamp * 1e6)]
        dec = db.decode_message(msg.arbitration_id, msg.data, decode_choices=False)
        for cell in (0, 1):
            rec = ref.records[cell]
            assert abs(dec[f"Cell_{cell:02d}_mV"] - rec["voltage_uV"] / 1000) <= 0.5 + 1e-9
            assert abs(dec[f"Cell_{cell:02d}_T"] - rec["temperature_mdegC"] / 1000) <= 0.25 + 1e-9
            assert dec[f"Cell_{cell:02d}_Bad"] == 0  # cells 0 and 1 have no measurement fault
    assert [round(m.timestamp * 10) for m in logged] == list(range(1, 80, 2))  # every other 100 ms step


def test_mapping_cells_ranges_and_offset_choose_signals_and_mux_frames(tmp_path: Path, fox_db: Any) -> None:
    path = tmp_path / "part.yaml"
    path.write_text(
        "messages:\n"
        "  - message: AFE_CellVoltages\n"
        "    period_ms: 100\n"
        "    cells: [0-1, 3]\n"
        "    index_offset: 8\n"  # stream cells 0, 1, 3 -> foxBMS voltages 8, 9, 11: mux 2
        "    signals: [{field: voltage, name: 'CellVoltage_{index:03d}'}]\n"
    )
    (plan,) = bind(load_mapping(path), fox_db, range(6))
    (frame,) = plan.frames
    assert frame.mux_value == 2
    assert [(s.cell, s.signal, s.scale) for s in frame.slots] == [
        (0, "CellVoltage_008", 1000.0),
        (1, "CellVoltage_009", 1000.0),
        (3, "CellVoltage_011", 1000.0),
    ]
    assert frame.fill["CellVoltage_010"] == 0
    path.write_text(path.read_text().replace("[0-1, 3]", "[0-1, 9]"))
    with pytest.raises(MappingError, match=r"part.yaml:2: messages\[0\].cells: the stream has no cell 9"):
        bind(load_mapping(path), fox_db, range(6))
