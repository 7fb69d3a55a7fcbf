"""Conformance: the C reference client and the Python client on one live server decode the same values.

The C example prints every field of CELL_STATES and EIS_SPECTRUM (floats with 9 significant digits, exact for
float32); the test parses its output and compares it, value for value, with what the Python decoder saw for
the same step and spectrum. The compiled clients come from ``make -C firmware_stub examples`` (``make test``
builds them before pytest runs); ``hil_tcp_client_512`` is the same example with a 512-byte frame buffer,
which connects because a SERVER_HELLO is at most 512 bytes of payload (SPEC.md section 4).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

import protocol as p
from hil_server.client.client import HilClient
from hil_server.testing import start_server, until
from protocol import SessionState

ROOT = Path(__file__).resolve().parents[2]
EXE = ROOT / "firmware_stub" / "build" / "hil_tcp_client"
EXE_512 = ROOT / "firmware_stub" / "build" / "hil_tcp_client_512"
SCENARIO = ROOT / "scenarios" / "fault_showcase.yaml"
CELL_RE = re.compile(
    r"cell (\d+) (-?\d+) uV (-?\d+) uA (-?\d+) mdegC soc (\d+) soh (\d+) flags 0x([0-9a-f]+)"
)
POINT_RE = re.compile(r"(\S+) Hz (\S+) (\S+) ohm")


def _same_float(c_text: str, value: float) -> bool:
    parsed = float(c_text)
    return (math.isnan(parsed) and math.isnan(value)) or np.float32(parsed) == np.float32(value)


async def _c_client(exe: Path, port: int, *options: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(exe),
        "127.0.0.1",
        str(port),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.asyncio
async def test_c_client_decodes_the_live_stream_like_python() -> None:
    if not EXE.exists():
        message = f"{EXE} not built: run make -C firmware_stub examples (make test does)"
        if os.environ.get("EIS_HIL_CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = await start_server(SCENARIO, speed=0.0)
    python = await HilClient.connect("127.0.0.1", server.port, name="python")
    await python.subscribe()
    # Hold the stream until the C client has subscribed: at speed 0 the server would otherwise run ahead for
    # the Python client alone while the C process starts, and the two would share fewer steps.
    assert isinstance(await python.control(p.Control(p.ControlCommand.PAUSE)), p.Ack)
    while not python.frames.empty():  # frames from before the pause: the C client will never see them
        python.frames.get_nowait()
    proc = await _c_client(EXE, server.port, "--name", "c-client")
    # Read the C client's output all along: a full pipe would block it and it would miss the server's BYE.
    assert proc.stdout is not None
    assert proc.stderr is not None
    output = asyncio.create_task(proc.stdout.read())
    errors = asyncio.create_task(proc.stderr.read())
    states: dict[int, p.CellStates] = {}
    spectra: dict[tuple[int, int], p.EisSpectrum] = {}
    try:
        await until(lambda: sum(s.state is SessionState.STREAMING for s in server.sessions.values()) >= 2, 20)
        assert isinstance(await python.control(p.Control(p.ControlCommand.RESUME)), p.Ack)
        while len(states) < 700 or len(spectra) < 24:
            msg = (await python.next_frame(timeout=10)).message
            if isinstance(msg, p.CellStates):
                states[msg.step] = msg
            elif isinstance(msg, p.EisSpectrum):
                spectra[(msg.t_sim_us, msg.cell)] = msg
    finally:
        await python.close()
        await server.stop()
        out, err = await asyncio.wait_for(asyncio.gather(output, errors), 20)
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert any(line.startswith("BYE reason 26") for line in lines)

    compared_states = compared_points = 0
    for line in lines:
        if line.startswith("CELL_STATES"):
            fields = line.split(" | ")[0].split()
            step = int(fields[fields.index("step") + 1])
            if step not in states:
                continue
            records = states[step].records
            cells = CELL_RE.findall(line)
            assert len(cells) == records.size
            for (cell, uv, ua, mdeg, soc, soh, flags), rec in zip(cells, records, strict=True):
                assert (int(cell), int(uv), int(ua), int(mdeg), int(soc), int(soh), int(flags, 16)) == (
                    rec["cell"],
                    rec["voltage_uV"],
                    rec["current_uA"],
                    rec["temperature_mdegC"],
                    rec["soc_ppm"],
                    rec["soh_ppm"],
                    rec["flags"],
                ), line[:120]
            compared_states += 1
        elif line.startswith("EIS_SPECTRUM"):
            head = line.split(" | ")[0].split()
            key = (int(head[head.index("t_sim_us") + 1]), int(head[head.index("cell") + 1]))
            if key not in spectra:
                continue
            spectrum = spectra[key]
            assert int(head[head.index("id") + 1]) == spectrum.spectrum_id
            points = POINT_RE.findall(line)
            assert len(points) == spectrum.freq_hz.size
            for (f, re_, im), pf, pre, pim in zip(
                points, spectrum.freq_hz, spectrum.z_re_ohm, spectrum.z_im_ohm, strict=True
            ):
                assert _same_float(f, pf)
                assert _same_float(re_, pre)
                assert _same_float(im, pim)
                compared_points += 1
    assert compared_states >= 650, compared_states
    assert compared_points >= 200, compared_points


LONG_GRID = """\
name: a-scenario-name-of-the-longest-length-a-scenario-file-allows-64
seed: 5
step_rate_hz: 10
eis:
  interval_s: 1
  mode: instant
  frequencies: {min_hz: 0.01, max_hz: 10000, points_per_decade: 56}
cells:
  count: 24
  profile: zhang2020
  soc: 0.8
timeline:
  - constant_current: {current_a: 0.05, duration_s: 60}
"""
"""337 frequencies and a 64-character name: the whole hello is 1.5 kB; 24 cells: CELL_STATES of 600 bytes."""


@pytest.mark.asyncio
async def test_c_client_with_a_512_byte_buffer_connects_and_streams(tmp_path: Path) -> None:
    if not EXE_512.exists():
        message = f"{EXE_512} not built: run make -C firmware_stub examples (make test does)"
        if os.environ.get("EIS_HIL_CI"):
            pytest.fail(message)
        pytest.skip(message)
    scenario = tmp_path / "long_grid.yaml"
    scenario.write_text(LONG_GRID, encoding="utf-8")
    server = await start_server(scenario, speed=0.0)
    assert len(p.encode_payload(server.source.hello())) > 1024
    proc = await _c_client(EXE_512, server.port, "--name", "c-512", "--cells", "0,5,23", "--points")
    assert proc.stdout is not None
    assert proc.stderr is not None
    errors = asyncio.create_task(proc.stderr.read())
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while sum(x.startswith("CELL_STATES") for x in lines) < 50 or not any(
                x.startswith("EIS_POINT") for x in lines
            ):
                line = await proc.stdout.readline()
                assert line, f"the C client ended early: {lines[-5:]}"
                lines.append(line.decode())
    finally:
        await server.stop()
        rest, err = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), errors), 20)
        await asyncio.wait_for(proc.wait(), 20)
    lines += rest.decode().splitlines()
    assert proc.returncode == 0, err.decode()
    hello = lines[0]
    assert hello.startswith("SERVER_HELLO"), hello
    assert "cells 24" in hello, hello
    assert not [x for x in lines if x.startswith("decoder:")]  # nothing OVERSIZED, nothing bad
    states = [x for x in lines if x.startswith("CELL_STATES")]
    assert all(CELL_RE.findall(x)[i][0] == c for x in states for i, c in enumerate(("0", "5", "23")))
    assert all(" n 3 " in x for x in states)
    points = [x for x in lines if x.startswith("EIS_POINT")]
    assert all(" of 337 |" in x for x in points), points[:3]
    assert any(x.startswith("BYE reason 26") for x in lines)
