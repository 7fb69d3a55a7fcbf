"""The mock BMS client (``eis-hil client``, ``tools/mock_bms.py``): against a live in-process server at
speed 0 through ``main([...])``, and the pure parts (control parsing, sequence tracking, table rendering)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

import protocol as p
from hil_server.cli import client as client_cli
from hil_server.cli.client import main
from hil_server.client.control_syntax import ControlSyntaxError, parse_control, parse_mask
from hil_server.client.monitor import MonitorState, frame_json, render_table, summary_text
from hil_server.client.seq import SeqTracker
from hil_server.testing import start_server
from hil_server.transport.tcp import HilServer

ROOT = Path(__file__).resolve().parents[2]
US06 = ROOT / "scenarios" / "us06_25c.yaml"
FAULTS = ROOT / "scenarios" / "fault_showcase.yaml"


@pytest_asyncio.fixture
async def us06() -> AsyncIterator[HilServer]:
    server = await start_server(US06, heartbeat_s=0.05)
    try:
        yield server
    finally:
        await server.stop()


async def run_main(*argv: str) -> int:
    """``main`` runs its own event loop: in a thread, while the server runs on the test's loop."""
    return await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 30)


def frame_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


# -- against a live server ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lines_count(us06: HilServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_main("127.0.0.1", str(us06.port), "--lines", "--count", "25", "--mask", "states")
    out = capsys.readouterr().out
    assert code == 0
    assert "connected to 127.0.0.1" in out
    assert "scenario us06_25c" in out
    assert "subscribed: 1 cell(s)" in out
    lines = frame_lines(out)
    assert len(lines) == 25
    assert all("CELL_STATES" in line or "HEARTBEAT" in line for line in lines)  # heartbeats: always sent
    steps = [int(line.split("step=")[1].split()[0]) for line in lines if "CELL_STATES" in line]
    assert len(steps) > 10
    assert steps == list(range(steps[0], steps[0] + len(steps)))
    assert "0 gaps (0 frames lost, 0 late, 0 duplicates), 0 bad frames" in out


@pytest.mark.asyncio
async def test_out_jsonl_has_every_frame_in_sequence(us06: HilServer, tmp_path: Path) -> None:
    target = tmp_path / "run.jsonl"
    code = await run_main("127.0.0.1", str(us06.port), "--out", str(target), "--count", "60")
    assert code == 0
    records = [json.loads(line) for line in target.read_text().splitlines()]
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(len(records)))  # SERVER_HELLO is seq 0; nothing missing, nothing repeated
    types = [r["type"] for r in records]
    assert types[:3] == ["SERVER_HELLO", "ACK", "ACK"]  # hello, then the replies to CLIENT_HELLO, SUBSCRIBE
    assert sum(t not in ("ACK", "NAK") for t in types) == 61  # the hello and --count frames
    states = [r for r in records if r["type"] == "CELL_STATES"]
    assert states
    assert 3.0e6 < states[0]["fields"]["records"][0]["voltage_uV"] < 4.3e6
    t_rx = [r["t_rx"] for r in records]
    assert t_rx == sorted(t_rx)
    assert t_rx[0] > 1.6e9  # Unix seconds


@pytest.mark.asyncio
async def test_control_pause_is_acked(us06: HilServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_main("127.0.0.1", str(us06.port), "--control", "pause", "--count", "0")
    out = capsys.readouterr().out
    assert code == 0
    assert "control pause: ACK result=0" in out
    assert us06.sim_state is p.SimState.PAUSED
    assert frame_lines(out) == []  # --count 0: send, report, exit


@pytest.mark.asyncio
async def test_nak_is_printed_and_exit_code_1(us06: HilServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_main("127.0.0.1", str(us06.port), "--control", "seek=-1", "seek=12.5", "--count", "0")
    out = capsys.readouterr().out
    assert code == 1
    assert "control seek=-1: NAK OUT_OF_RANGE: seek target must be >= 0" in out
    assert "control seek=12.5: ACK result=12500000" in out


@pytest.mark.asyncio
async def test_controls_then_stream_show_their_effect(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await start_server(FAULTS)
    target = tmp_path / "faults.jsonl"
    try:
        code = await run_main(
            "127.0.0.1",
            str(server.port),
            "--out",
            str(target),
            "--mask",
            "states,faults",
            "--count",
            "400",
            "--control",
            "load=0.02",
            "inject=contact_resistance:50%@3",
        )
    finally:
        await server.stop()
    out = capsys.readouterr().out
    assert code == 0
    assert "control load=0.02: ACK" in out
    assert "control inject=contact_resistance:50%@3: ACK result=" in out
    records = [json.loads(line) for line in target.read_text().splitlines()]
    fault = next(r for r in records if r["type"] == "FAULT_EVENT")
    assert fault["fields"]["cells"] == [3]
    assert fault["fields"]["severity_ppm"] == 500_000
    currents = [r["fields"]["records"][0]["current_uA"] for r in records if r["type"] == "CELL_STATES"]
    assert currents[-1] == 20_000
    # SPEC 2.3: replies take their place in the sequence; they must not overtake queued telemetry.
    assert [r["seq"] for r in records] == list(range(len(records)))


@pytest.mark.asyncio
async def test_strict_fails_on_lost_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fault_showcase drops 2 % of the frames from t = 300 s to 420 s (a transport fault)."""
    server = await start_server(FAULTS)
    try:
        argv = ["127.0.0.1", str(server.port), "--out", str(tmp_path / "x.jsonl"), "--mask", "states"]
        code = await run_main(*argv, "--count", "700", "--control", "seek=299", "--strict")
    finally:
        await server.stop()
    out = capsys.readouterr().out
    assert code == 1
    summary = out.split("summary: ")[1]
    gaps = int(summary.split(" gaps (")[0].split()[-1])
    lost = int(summary.split(" gaps (")[1].split()[0])
    assert 0 < gaps <= lost
    seqs = [json.loads(line)["seq"] for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert len(seqs) + lost == seqs[-1] + 1  # what the file lacks is what the summary calls lost


@pytest.mark.asyncio
async def test_heartbeats_feed_lateness_and_state(
    us06: HilServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_main("127.0.0.1", str(us06.port), "--lines", "--mask", "heartbeats", "--count", "3")
    out = capsys.readouterr().out
    assert code == 0
    lines = frame_lines(out)
    assert len(lines) == 3
    assert all("HEARTBEAT" in line for line in lines)
    assert "3 server heartbeats" in out
    assert "lateness p50 n/a" not in out


@pytest.mark.asyncio
async def test_sweep_mode_gets_points(us06: HilServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_main(
        "127.0.0.1", str(us06.port), "--lines", "--mask", "points", "--eis-mode", "sweep", "--count", "12"
    )
    lines = frame_lines(capsys.readouterr().out)
    assert code == 0
    assert len(lines) == 12
    points = [line for line in lines if "HEARTBEAT" not in line]  # heartbeats come whatever the mask
    assert points
    assert all("EIS_POINT" in line for line in points)
    indices = [int(line.split("point_index=")[1].split()[0]) for line in points]
    assert indices == list(range(len(points)))


@pytest.mark.asyncio
async def test_server_shutdown_is_a_clean_stop(us06: HilServer, capsys: pytest.CaptureFixture[str]) -> None:
    client = asyncio.create_task(run_main("127.0.0.1", str(us06.port), "--lines", "--mask", "heartbeats"))
    for _ in range(2000):  # until the client has subscribed (bounded; each wait is one loop turn)
        if any(s.mask for s in us06.sessions.values()):
            break
        await asyncio.sleep(0.005)
    await us06.stop()
    code = await client
    out = capsys.readouterr().out
    assert code == 0
    assert "BYE" in out
    assert "SHUTDOWN" in out
    assert "summary:" in out


@pytest.mark.asyncio
async def test_table_mode_redraws_and_ends_with_summary(
    us06: HilServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_main("127.0.0.1", str(us06.port), "--table", "--count", "200", "--control", "seek=30")
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("\x1b[2J\x1b[H")  # cleared once, then redrawn in place
    assert "control seek=30: ACK result=30000000\x1b[K" in out  # in the table's header
    assert "scenario us06_25c" in out
    assert "1 cells, 1 shown" in out
    assert "summary: " in out


@pytest.mark.asyncio
async def test_connection_refused_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = await run_main("127.0.0.1", str(port), "--lines", "--timeout", "2")
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in err


@pytest.mark.asyncio
async def test_authentication(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    server = await start_server(US06, secret=b"bench-secret")
    try:
        code = await run_main("127.0.0.1", str(server.port), "--lines", "--count", "1")
        err = capsys.readouterr().err
        assert code == 2
        assert "requires authentication" in err
        monkeypatch.setenv("HIL_SECRET", "wrong")
        code = await run_main("127.0.0.1", str(server.port), "--secret-env", "HIL_SECRET", "--count", "1")
        assert code == 2
        assert f"cannot connect to 127.0.0.1:{server.port}" in capsys.readouterr().err
        monkeypatch.setenv("HIL_SECRET", "bench-secret")
        code = await run_main("127.0.0.1", str(server.port), "--secret-env", "HIL_SECRET", "--count", "2")
        assert code == 0
        assert len(frame_lines(capsys.readouterr().out)) == 2
        code = await run_main("127.0.0.1", str(server.port), "--secret-env", "NO_SUCH_VARIABLE_HERE")
        assert code == 2
        assert "NO_SUCH_VARIABLE_HERE" in capsys.readouterr().err
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_subscribe_refused_exits_2(us06: HilServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_main("127.0.0.1", str(us06.port), "--cells", "7", "--count", "1")
    err = capsys.readouterr().err
    assert code == 2
    assert "subscribe refused: cells [7] do not exist" in err


# -- command line parsing --------------------------------------------------------------------------------


def test_bogus_control_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["127.0.0.1", "7700", "--control", "bogus=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --control: 'bogus=1': unknown command 'bogus'" in err
    assert "accepted forms: pause, resume" in err


C = p.ControlCommand


@pytest.mark.parametrize(
    ("text", "command", "fault_kind", "cell", "aux", "value"),
    [
        ("pause", C.PAUSE, 0, p.ALL_CELLS, 0, 0),
        ("RESUME", C.RESUME, 0, p.ALL_CELLS, 0, 0),
        ("stop", C.STOP, 0, p.ALL_CELLS, 0, 0),
        ("start", C.START, 0, p.ALL_CELLS, 0, 0),
        ("seek=120", C.SEEK, 0, p.ALL_CELLS, 0, 120_000_000),
        ("seek=-1", C.SEEK, 0, p.ALL_CELLS, 0, -1_000_000),  # the server's to refuse
        ("speed=2.5", C.SET_SPEED, 0, p.ALL_CELLS, 0, 2_500_000),
        ("speed=0", C.SET_SPEED, 0, p.ALL_CELLS, 0, 0),
        ("load=1.5", C.SET_LOAD_CURRENT, 0, p.ALL_CELLS, 0, 1_500_000),
        ("load=-0.25@4", C.SET_LOAD_CURRENT, 0, 4, 0, -250_000),
        ("load=off", C.SET_LOAD_CURRENT, 0, p.ALL_CELLS, 1, 0),
        ("load=off@2", C.SET_LOAD_CURRENT, 0, 2, 1, 0),
        ("ambient=-10.5", C.SET_AMBIENT_TEMPERATURE, 0, p.ALL_CELLS, 0, -10_500),
        ("ambient=off", C.SET_AMBIENT_TEMPERATURE, 0, p.ALL_CELLS, 1, 0),
        ("inject=contact_resistance:0.5", C.INJECT_FAULT, 0x01, p.ALL_CELLS, 0, 500_000),
        ("inject=NOISE:20%@3/2.5", C.INJECT_FAULT, 0x20, 3, 2500, 200_000),
        ("inject=0x41:1@all/10", C.INJECT_FAULT, 0x41, p.ALL_CELLS, 10_000, 1_000_000),
        ("inject=internal-short:0.1/60", C.INJECT_FAULT, 0x03, p.ALL_CELLS, 60_000, 100_000),
        ("clear=7", C.CLEAR_FAULT, 0, p.ALL_CELLS, 7, 0),
        ("clear=all", C.CLEAR_FAULT, 0, p.ALL_CELLS, 0, 0),
        ("spectrum", C.REQUEST_SPECTRUM, 0, p.ALL_CELLS, 0, 0),
        ("spectrum@11", C.REQUEST_SPECTRUM, 0, 11, 0, 0),
    ],
)
def test_parse_control(text: str, command: int, fault_kind: int, cell: int, aux: int, value: int) -> None:
    control = parse_control(text)
    assert (control.command, control.fault_kind, control.cell, control.aux, control.value) == (
        command,
        fault_kind,
        cell,
        aux,
        value,
    )
    p.encode_payload(control)  # every accepted form fits the wire


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("bogus=1", "unknown command 'bogus'"),
        ("pause=1", "pause takes no value"),
        ("seek", "seek needs a value"),
        ("seek=soon", "seek target (seconds) 'soon' is not a number"),
        ("seek=nan", "is not a finite number"),
        ("load=2@x", "cell 'x' is not a cell index"),
        ("load=2@70000", "cell 70000 is outside 0..65535"),
        ("load@2=1", "a cell goes after the value"),
        ("inject=noise", "inject needs KIND:SEVERITY"),
        ("inject=lightning:0.5", "fault kind 'lightning' is not one of contact_resistance"),
        ("inject=noise:0.5/-1", "does not fit the wire field"),
        ("clear=one", "fault id 'one' is not a whole number or 'all'"),
        ("spectrum=3", "spectrum takes no value"),
    ],
)
def test_parse_control_errors(text: str, problem: str) -> None:
    with pytest.raises(ControlSyntaxError) as exc:
        parse_control(text)
    assert problem in str(exc.value)
    assert "accepted forms:" in str(exc.value)


def test_parse_mask() -> None:
    assert parse_mask("states") == p.SubscribeMask.CELL_STATES
    assert parse_mask("states, faults") == p.SubscribeMask.CELL_STATES | p.SubscribeMask.FAULT_EVENT
    assert parse_mask("all") == p.SubscribeMask.ALL
    with pytest.raises(argparse.ArgumentTypeError, match="'volts' is not a stream"):
        parse_mask("states,volts")


def test_the_client_command_follows_the_registry_contract() -> None:
    parser = argparse.ArgumentParser()
    client_cli.add_arguments(parser)
    args = parser.parse_args(["localhost", "7700", "--control", "pause", "seek=3", "--count", "0"])
    assert [label for label, _ in args.control] == ["pause", "seek=3"]
    from hil_server.cli import build_parser

    assert build_parser().parse_args(["client", "h", "1"]).func is client_cli.run


def test_tool_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mock_bms.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "inject=KIND:SEVERITY" in result.stdout


# -- sequence tracking -----------------------------------------------------------------------------------


def test_seq_tracker() -> None:
    t = SeqTracker()
    for seq in (0, 1, 2, 5, 3, 6, 6, 1):
        t.see(seq)
    assert (t.gaps, t.lost, t.late, t.duplicates) == (1, 1, 1, 2)  # 4 never came; 3 late; 6 and 1 again
    wrap = SeqTracker()
    for seq in (2**32 - 2, 2**32 - 1, 0, 2):
        wrap.see(seq)
    assert (wrap.gaps, wrap.lost, wrap.late, wrap.duplicates) == (1, 1, 0, 0)
    big = SeqTracker()
    big.see(0)
    big.see(SeqTracker.MAX_MISSING + 11)
    assert big.lost == SeqTracker.MAX_MISSING + 10
    assert len(big.missing) == SeqTracker.MAX_MISSING


def test_frame_json_is_strict_json_with_nan() -> None:
    spectrum = p.EisSpectrum(
        t_sim_us=5,
        spectrum_id=1,
        sweep_duration_ms=0,
        cell=0,
        cell_flags=0,
        soc_ppm=0,
        soh_ppm=0,
        temperature_mdegC=0,
        current_uA=0,
        kk_residual=float("nan"),
        freq_hz=np.array([10.0, 1.0], dtype=np.float32),
        z_re_ohm=np.array([0.01, np.nan], dtype=np.float32),
        z_im_ohm=np.array([-0.001, np.inf], dtype=np.float32),
    )
    line = frame_json(p.Frame(spectrum, seq=7), 1.7e9)

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    record = json.loads(line, parse_constant=no_constants)
    assert record["seq"] == 7
    assert record["fields"]["kk_residual"] is None
    assert record["fields"]["z_re_ohm"][1] is None


# -- table rendering (pure) ------------------------------------------------------------------------------


def _states(n: int, t_sim_us: int = 60_000_000, flagged: dict[int, int] | None = None) -> p.Frame:
    records = np.zeros(n, dtype=p.CELL_STATE_DTYPE)
    records["cell"] = np.arange(n)
    records["voltage_uV"] = 3_600_000 + np.arange(n) * 1000
    records["current_uA"] = 1_250_000
    records["temperature_mdegC"] = 25_000 + np.arange(n) * 10
    records["soc_ppm"] = 800_000
    records["soh_ppm"] = 990_000
    for cell, flags in (flagged or {}).items():
        records["flags"][cell] = flags
    return p.Frame(p.CellStates(t_sim_us, 0, 600, records), seq=1)


def _spectrum(cell: int, t_sim_us: int) -> p.Frame:
    freqs = np.array([10_000.0, 100.0, 0.1], dtype=np.float32)
    return p.Frame(
        p.EisSpectrum(
            t_sim_us=t_sim_us,
            spectrum_id=3,
            sweep_duration_ms=0,
            cell=cell,
            cell_flags=0,
            soc_ppm=800_000,
            soh_ppm=990_000,
            temperature_mdegC=25_000,
            current_uA=0,
            kk_residual=0.0002,
            freq_hz=freqs,
            z_re_ohm=np.array([0.030, 0.040, 0.080], dtype=np.float32),
            z_im_ohm=np.array([0.0, -0.010, -0.060], dtype=np.float32),
        ),
        seq=2,
    )


def _heartbeat() -> p.Frame:
    return p.Frame(p.Heartbeat(60_000_000, 0, 100, 4, 0, 120, 900, 2500, 7, int(p.SimState.RUNNING)), seq=3)


def _header_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("cell "))


def test_table_with_a_few_cells() -> None:
    state = MonitorState(scenario="demo", endpoint="127.0.0.1:7700", cell_count=3, subscribed=3)
    state.update(_states(3, flagged={1: p.CellFlags.FAULT_ACTIVE | p.CellFlags.EXTRAPOLATED}))
    state.update(_spectrum(0, 50_000_000))
    state.update(_heartbeat())
    state.update(p.Frame(p.EisPoint(60_000_000, 4, 2, 4, 20, 0, 10.0, 0.05, -0.01), seq=4))
    state.update(p.Frame(p.FaultEvent(55_000_000, 9, 500_000, 1, 1, np.array([1], dtype=np.uint16)), seq=5))
    state.frames, state.gaps, state.lost = 42, 1, 3
    lines = render_table(state, width=120, height=40)
    text = "\n".join(lines)
    assert "scenario demo" in lines[0]
    assert "RUNNING" in lines[0]
    assert "t_sim 60.000 s" in lines[0]
    assert "frames 42  gaps 1 (lost 3 late 0 dup 0)" in lines[1]
    assert "drops 4" in lines[1]
    assert "lateness p50 0.12 p99 0.90 max 2.50 ms" in lines[1]
    assert "faults: #9 CONTACT_RESISTANCE cells [1]" in text
    rows = {int(line.split()[0]): line for line in lines if line[:4].strip().isdigit()}
    assert sorted(rows) == [0, 1, 2]
    assert rows[0].split()[1:6] == ["3.6000", "+1.250", "25.00", "80.0", "99.0"]
    # |Z| = 30 mOhm at 10 kHz, hypot(80, 60) = 100 mOhm at 0.1 Hz, KK 0.020 %, 10 s old
    assert "30@10k" in rows[0]
    assert "100@0.1" in rows[0]
    assert "0.020" in rows[0]
    assert rows[0].rstrip().endswith("10.0")
    assert " FX " in rows[1]
    assert "sweep 5/20" in rows[2]
    assert "3 cells, 3 shown" in text
    assert "flagged 1: 1(FX)" in text
    assert all(len(line) <= 120 for line in lines)
    narrow = render_table(state, width=79)  # an 80-column terminal: whole rows, age column included
    assert narrow[narrow.index(_header_line(narrow)) + 1].endswith(" 10.0")
    summary = summary_text(state, 2.0)
    assert "42 frames in 2.0 s (21/s), 1 gaps (3 frames lost" in summary
    assert "1 server heartbeats, lateness p50 0.12 ms (median), p99 0.90 ms max 2.50 ms" in summary


def test_table_with_96_cells_fits_and_summarises() -> None:
    state = MonitorState(scenario="pack_96s_spread", endpoint="127.0.0.1:7700", cell_count=96, subscribed=96)
    hot = p.CellFlags.TEMPERATURE_LIMIT
    state.update(_states(96, flagged={17: hot, 80: p.CellFlags.VOLTAGE_LOW_LIMIT}))
    for cell in range(96):
        state.update(_spectrum(cell, 59_000_000))
    lines = render_table(state, width=100, height=30)
    assert len(lines) <= 30
    assert all(len(line) <= 100 for line in lines)
    rows = [line for line in lines if line[:4].strip().isdigit()]
    assert 0 < len(rows) < 96
    assert [int(r.split()[0]) for r in rows] == list(range(len(rows)))  # the first cells that fit
    summary = next(line for line in lines if line.startswith("96 cells"))
    assert summary.startswith(
        f"96 cells, {len(rows)} shown: V 3.6000(#0)..3.6950(#95) T 25.0(#0)..25.9(#95) C"
    )
    assert "flagged 2: 17(T) 80(L)" in summary
    # Without a height limit every cell gets a row.
    assert sum(line[:4].strip().isdigit() for line in render_table(state, width=100)) == 96


def test_table_before_any_data() -> None:
    state = MonitorState(scenario="s", endpoint="h:1", cell_count=2)
    lines = render_table(state, width=60, height=10)
    assert all(len(line) <= 60 for line in lines)
    assert any("no cell states yet" in line for line in lines)
    assert "lateness n/a" in "\n".join(render_table(state, width=200))


def test_screen_redraws_at_most_4_times_a_second() -> None:
    now = [100.0]
    buffer = io.StringIO()
    screen = client_cli._Screen(buffer, clock=lambda: now[0])
    state = MonitorState(scenario="s", endpoint="h:1", cell_count=1)
    drawn = []
    for t in (100.0, 100.1, 100.24, 100.25, 100.3, 100.6):
        now[0] = t
        drawn.append(screen.draw(state))
    assert drawn == [True, False, False, True, False, True]
    assert screen.draw(state, force=True)  # the last picture on exit
    text = buffer.getvalue()
    assert text.count("\x1b[2J") == 1  # the screen is cleared once, then overwritten from the top
    assert text.count("\x1b[H") == 4
