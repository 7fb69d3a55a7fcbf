"""``eis-hil view`` and ``eis-hil serve --view`` as a user runs them: real processes, real ports, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from hil_server.app import start_server
from hil_server.cli import main
from tests.view.conftest import line_with, spawn_cli

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "scenarios" / "fault_showcase.yaml"


def _port_of(url_line: str) -> int:
    url = next(word for word in url_line.split() if word.startswith("http://"))
    return int(url.rstrip("/").rsplit(":", 1)[1])


async def _hello(port: int) -> dict[str, Any]:
    async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        hello: dict[str, Any] = json.loads(await ws.recv())
        update = json.loads(await ws.recv())
        assert update["type"] == "update"
        return hello


@pytest.mark.asyncio
async def test_serve_with_view_then_ctrl_c() -> None:
    argv = ("serve", str(FAULTS), "--port", "0", "--speed", "10", "--view", "0", "--allow-control")
    proc = await spawn_cli(*argv)
    try:
        line = await line_with(proc, "eis-hil view: http://127.0.0.1:")
        assert "(controls on)" in line
        hello = await _hello(_port_of(line))
        assert (hello["scenario"], hello["cell_count"], hello["controls"]) == ("fault_showcase", 12, True)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


@pytest.mark.asyncio
async def test_view_of_a_server_with_a_secret_ends_with_it() -> None:
    server = await start_server(FAULTS, speed=10, secret=b"bench key")
    try:
        argv = ("view", "127.0.0.1", str(server.port), "--listen", "127.0.0.1:0", "--secret-env", "HIL_KEY")
        proc = await spawn_cli(*argv, env={"HIL_KEY": "bench key"})
        line = await line_with(proc, "eis-hil view: http://127.0.0.1:")
        assert "(controls off)" in line
        assert f"stream 127.0.0.1:{server.port}: scenario fault_showcase, 12 cell(s)" in line
        hello = await _hello(_port_of(line))
        assert hello["controls"] is False
        assert hello["endpoint"] == f"127.0.0.1:{server.port}"
        async with connect(f"ws://127.0.0.1:{_port_of(line)}/ws") as page:
            await page.recv()
            await server.stop()
            last = [json.loads(message) async for message in page][-1]  # until the view closes it
        # the page is told the stream ended, and why, before the view goes
        assert (last["ended"], last["bye"]) == (True, "SHUTDOWN: server shutting down")
    finally:
        await server.stop()
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert "eis-hil view: the server closed the stream: server shutting down" in out.decode()


@pytest.mark.asyncio
async def test_view_with_a_wrong_secret_says_so_in_one_line() -> None:
    server = await start_server(FAULTS, speed=1, secret=b"bench key")
    port = server.port
    try:
        argv = ("view", "127.0.0.1", str(port), "--listen", "127.0.0.1:0", "--secret-env", "HIL_KEY")
        proc = await spawn_cli(*argv, env={"HIL_KEY": "not the key"})
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await server.stop()
    assert proc.returncode == 2
    assert out == b""
    said = [line for line in err.decode().splitlines() if line.startswith("eis-hil view:")]
    assert said == [f"eis-hil view: 127.0.0.1:{port}: connection closed: authentication failed"]
    assert "Traceback" not in err.decode()


def test_view_cannot_connect(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert main(["view", "127.0.0.1", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"eis-hil view: 127.0.0.1:{port}: connection refused (is an eis-hil server listening on that port?)"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["view", "127.0.0.1", "7700", "--listen", "70000"], "expected [ADDR:]PORT with PORT in 0..65535"),
        (["view", "127.0.0.1", "7700", "--listen", "host:"], "expected [ADDR:]PORT"),
        (["view", "127.0.0.1", "0"], "'0' is not a port (1..65535)"),
        (["serve", str(FAULTS), "--view", "x"], "expected [ADDR:]PORT"),
        (["serve", str(FAULTS), "--view", "::1"], "an IPv6 address goes in brackets, e.g. [::1]:8700"),
    ],
)
def test_bad_options_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_allow_control_without_view_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(FAULTS), "--port", "0", "--allow-control"]) == 2
    captured = capsys.readouterr()
    assert "--allow-control is for the page of --view: give --view [ADDR:]PORT too" in captured.err
    assert "eis-hil serving" not in captured.out


def test_serve_view_on_a_taken_port_is_said_before_the_server_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "session.eiscap"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        code = main(["serve", str(FAULTS), "--port", "0", "--view", str(taken), "--record", str(record)])
    assert code == 2
    captured = capsys.readouterr()
    assert f"--view 127.0.0.1:{taken}: address already in use" in captured.out + captured.err
    assert "Traceback" not in captured.err
    assert "eis-hil serving" not in captured.out
    assert not record.exists()  # nothing was started, so nothing was recorded


@pytest.mark.asyncio
async def test_view_on_a_taken_port_names_it() -> None:
    server = await start_server(FAULTS, speed=1)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            taken = s.getsockname()[1]
            proc = await spawn_cli("view", "127.0.0.1", str(server.port), "--listen", str(taken))
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await server.stop()
    assert proc.returncode == 2
    last = err.decode().splitlines()[-1]
    assert last == f"eis-hil view: --listen 127.0.0.1:{taken}: address already in use"
