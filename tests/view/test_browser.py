"""The view in a real browser (headless chromium through Playwright): an in-process server, a test client that
sees the same stream as the view, and the page. Waits are for conditions in the page
(``wait_for_function``), never timed sleeps; only the load tests run for a set time, as a load test must."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import protocol as p
from hil_server.app import start_server
from hil_server.client.client import HilClient
from hil_server.transport.tcp import HilServer
from hil_server.view.server import ViewServer
from tests.view.conftest import Browser, line_with, spawn_cli

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "scenarios" / "fault_showcase.yaml"
PACK = ROOT / "scenarios" / "pack_96s_spread.yaml"
US06 = ROOT / "scenarios" / "us06_25c.yaml"
WAIT_MS = 15_000
LOAD_S = float(os.environ.get("EIS_HIL_VIEW_LOAD_S", "8"))
"""How long the 96-cell load test runs (the issue's 60 s: ``tools/bench_view.py``)."""


@contextlib.asynccontextmanager
async def served(
    scenario: Path,
    speed: float,
    allow_control: bool = False,
    secret: bytes | None = None,
) -> AsyncIterator[tuple[HilServer, HilClient, ViewServer]]:
    """A server at ``speed`` in this process, a test client subscribed to everything (it sees the stream the
    view sees) and a view listening on a free loopback port."""
    server = await start_server(scenario, speed=speed, heartbeat_s=0.2, secret=secret)
    client: HilClient | None = None
    view: ViewServer | None = None
    try:
        client = await HilClient.connect("127.0.0.1", server.port, name="test", secret=secret)
        await client.subscribe()
        view = await ViewServer.connect("127.0.0.1", server.port, allow_control=allow_control, secret=secret)
        await view.listen("127.0.0.1", 0)
        yield server, client, view
    finally:
        if view is not None:
            await view.stop()
        if client is not None:
            await client.close()
        await server.stop()


@contextlib.asynccontextmanager
async def served_apart(scenario: Path, speed: float) -> AsyncIterator[ViewServer]:
    """The server as a process of its own, as on a bench (the load tests: in one event loop with the view and
    Playwright it competes with them for one core), and a view of it in this process."""
    server = await spawn_cli(
        "--log-level", "warning", "serve", str(scenario), "--port", "0", "--speed", str(speed)
    )
    view: ViewServer | None = None
    try:
        line = await line_with(server, "eis-hil serving")
        port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        view = await ViewServer.connect("127.0.0.1", port)
        await view.listen("127.0.0.1", 0)
        yield view
    finally:
        if view is not None:
            await view.stop()
        server.send_signal(signal.SIGINT)
        await server.wait()


def sim_state(server: HilServer) -> p.SimState:
    return server.sim_state


def expect(locator: Any) -> Any:
    """Playwright's polling assertions (the page's CSP forbids the eval that ``wait_for_function`` needs)."""
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(locator)


async def drawn(page: Any) -> None:
    """The page has drawn its first update."""
    await expect(page.locator("#tsim")).not_to_have_text("-", timeout=WAIT_MS)


async def last_states_when_paused(
    client: HilClient, spectra: dict[int, p.EisSpectrum] | None = None
) -> p.CellStates:
    """Pause the stream and return the last CELL_STATES sent before it stopped: the frames up to the first
    heartbeat that says PAUSED (every tick before the pause was sent before that heartbeat). ``spectra``
    gets the latest EIS_SPECTRUM of each cell among those frames."""
    assert isinstance(await client.control(p.Control(p.ControlCommand.PAUSE)), p.Ack)
    last: p.CellStates | None = None
    while True:
        msg = (await client.next_frame(timeout=5)).message
        if isinstance(msg, p.CellStates):
            last = msg
        elif isinstance(msg, p.EisSpectrum) and spectra is not None:
            spectra[msg.cell] = msg
        elif isinstance(msg, p.Heartbeat) and msg.sim_state == p.SimState.PAUSED:
            assert last is not None
            return last


async def nyquist(page: Any) -> dict[str, Any]:
    """What the Nyquist plot drew: its scales, the latest spectrum's screen points, the decade markers."""
    result: dict[str, Any] = await page.evaluate(
        """() => {
          const svg = document.querySelector('#nyquist');
          const line = svg.querySelector('polyline.latest');
          return {
            scaleX: +svg.dataset.scaleX, scaleY: +svg.dataset.scaleY, spectra: +svg.dataset.spectra,
            points: line.getAttribute('points').trim().split(' ').map(p => p.split(',').map(Number)),
            decades: [...svg.querySelectorAll('circle.decade')].map(c => +c.dataset.freq),
            labels: [...svg.querySelectorAll('text.decade-label')].map(t => t.textContent),
            latest: window.eisView.spectra[window.eisView.spectra.length - 1],
            bode: [...document.querySelectorAll('#bode polyline')].map(l => l.getAttribute('class')),
          };
        }"""
    )
    return result


@pytest.mark.asyncio
async def test_the_page_shows_the_stream(browser: Browser) -> None:
    page = browser.page
    async with served(FAULTS, speed=10) as (_server, client, view):
        await page.goto(view.url)
        await expect(page.locator("#heatmap .cell")).to_have_count(12, timeout=WAIT_MS)
        assert await page.text_content("#cellcount") == "12 cells"
        assert await page.text_content("#scenario") == "scenario fault_showcase"

        # a fault injected by the test appears on the timeline and marks its cell
        reply = await client.control(
            p.Control.inject_fault(p.FaultKind.CONTACT_RESISTANCE, cell=3, severity_ppm=500_000)
        )
        assert isinstance(reply, p.Ack), reply
        row = page.locator(f"#timeline .fault.active[data-fault-id='{reply.result}']")
        await row.wait_for(timeout=WAIT_MS)
        assert f"#{reply.result} contact_resistance cells 3 50%" in (await row.text_content() or "")
        cell = page.locator("#heatmap .cell[data-cell='3']")
        await expect(cell).to_have_class(re.compile(r"\bfault\b"), timeout=WAIT_MS)

        # the detail of cell 3: a spectrum requested by the test, drawn as Nyquist and Bode
        await page.click("#heatmap .cell[data-cell='3']")
        assert isinstance(await client.control(p.Control.request_spectrum(3)), p.Ack)
        await page.locator("#nyquist polyline.latest").wait_for(state="attached", timeout=WAIT_MS)
        drawn = await nyquist(page)
        n_freq = len(drawn["latest"]["freq_hz"])
        assert len(drawn["points"]) == n_freq
        assert drawn["scaleX"] == pytest.approx(drawn["scaleY"], rel=1e-6)  # equal aspect
        minus_im = [-im for im in drawn["latest"]["z_im_ohm"]]
        top, bottom = minus_im.index(max(minus_im)), minus_im.index(min(minus_im))
        screen_y = [y for _, y in drawn["points"]]
        assert screen_y[top] == min(screen_y)  # -Im up: the arc's top is the highest point on screen
        assert screen_y[bottom] == max(screen_y)
        assert drawn["decades"] == [0.1, 1, 10, 100, 1000, 10000]  # the scenario's 0.1 Hz .. 10 kHz
        assert drawn["labels"] == ["100 mHz", "1 Hz", "10 Hz", "100 Hz", "1 kHz", "10 kHz"]
        assert drawn["bode"] == ["spectrum magnitude", "spectrum phase"]
        # a second spectrum: the first one stays, fading
        assert isinstance(await client.control(p.Control.request_spectrum(3)), p.Ack)
        previous = page.locator("#nyquist polyline.previous")
        await previous.wait_for(state="attached", timeout=WAIT_MS)
        assert float(await previous.get_attribute("opacity") or "1") < 1
        assert await page.locator("#bode polyline").count() == 4

        # a cell's value on the page is the stream's value at that step
        spectra: dict[int, p.EisSpectrum] = {}
        states = await last_states_when_paused(client, spectra)
        await expect(page.locator("#step")).to_have_text(str(states.step), timeout=WAIT_MS)
        # the latest spectrum's KK figure, and the cell's V/I/T/SOC over time
        kk = f"{float(spectra[3].kk_residual) * 100:.3f} %"
        await expect(page.locator("#detail-kk")).to_have_text(kk, timeout=WAIT_MS)
        await expect(page.locator("#history polyline.series")).to_have_count(4, timeout=WAIT_MS)
        record = states.records[states.records["cell"] == 3][0]
        assert await page.text_content("#detail-voltage") == f"{record['voltage_uV'] / 1e6:.4f} V"
        assert await page.text_content("#detail-temperature") == f"{record['temperature_mdegC'] / 1e3:.2f} C"
        assert await page.text_content("#detail-soc") == f"{record['soc_ppm'] / 1e4:.2f} %"
        heat = page.locator("#heatmap .cell[data-cell='3'] text.value")
        assert await heat.text_content() == f"{record['voltage_uV'] / 1e6:.3f}"
        await expect(page.locator("#simstate")).to_have_text("PAUSED", timeout=WAIT_MS)
        await page.select_option("#quantity", "temperature")
        await expect(heat).to_have_text(f"{record['temperature_mdegC'] / 1e3:.1f}", timeout=WAIT_MS)
        # every cell, as the mock BMS's table
        await page.click("#table-details summary")
        row = page.locator("#cells-table tbody tr").nth(3)
        volts = f"{record['voltage_uV'] / 1e6:.4f}"
        await expect(row.locator("td").nth(1)).to_have_text(volts, timeout=WAIT_MS)
        assert await page.locator("#cells-table tbody tr").count() == 12
        await page.select_option("#quantity", "voltage")

        # controls are off without --allow-control
        assert await page.locator("#pause").is_disabled()  # through the disabled fieldset
        assert await page.locator("#controls-off").is_visible()
        await browser.screenshot("detail")
    assert browser.errors == []


@pytest.mark.asyncio
async def test_pause_pressed_on_the_page_pauses_the_stream(browser: Browser) -> None:
    page = browser.page
    async with served(FAULTS, speed=10, allow_control=True) as (server, _client, view):
        await page.goto(view.url)
        await drawn(page)
        await page.fill("#inject-cell", "5")
        await page.select_option("#inject-kind", "contact_resistance")
        await page.click("#inject")
        await page.locator("#replies li.ack", has_text="inject").wait_for(timeout=WAIT_MS)
        await page.locator("#timeline .fault.active", has_text="contact_resistance cells 5").wait_for(
            timeout=WAIT_MS
        )

        await page.click("#pause")
        reply = page.locator("#replies li", has_text="pause")
        await expect(reply).to_have_text("pause: ACK result=0", timeout=WAIT_MS)
        assert sim_state(server) is p.SimState.PAUSED
        await expect(page.locator("#simstate")).to_have_text("PAUSED", timeout=WAIT_MS)

        await page.fill("#seek-s", "-5")
        await page.click("#seek")
        nak = page.locator("#replies li.nak")
        await nak.wait_for(timeout=WAIT_MS)
        assert await nak.text_content() == "seek=-5: NAK OUT_OF_RANGE: seek target must be >= 0"

        await page.click("#resume")
        await page.locator("#replies li.ack", has_text="resume").wait_for(timeout=WAIT_MS)
        assert sim_state(server) is p.SimState.RUNNING

        # a bench runs for hours: the page keeps the answers to its last 20 commands
        for _ in range(20):
            await page.click("#seek")
        await expect(page.locator("#replies li")).to_have_count(20, timeout=WAIT_MS)
        ids = [await li.get_attribute("data-id") for li in await page.locator("#replies li").all()]
        assert ids == [str(i) for i in range(24, 4, -1)]  # newest first; inject, pause, seek, resume gone
    assert browser.errors == []


def _lag_figures(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), max(samples)


@pytest.mark.asyncio
async def test_the_page_keeps_up_with_a_96_cell_pack_at_10x(
    browser: Browser, record_property: Callable[[str, object], None]
) -> None:
    """The issue's load: 96 cells, 10 steps/s, spectra every 30 s, at 10x real time (the page's lag behind the
    stream under one second: from the server's wall time of a state to the page drawing it, both clocks of
    this machine). ``LOAD_S`` seconds here; ``tools/bench_view.py`` runs the 60 s of the issue."""
    page = browser.page
    async with served_apart(PACK, speed=10) as view:
        await page.goto(view.url)
        await expect(page.locator("#heatmap .cell")).to_have_count(96, timeout=WAIT_MS)
        await page.click("#heatmap .cell[data-cell='40']")
        start = time.monotonic()
        await page.wait_for_timeout(LOAD_S * 1000)
        seconds = time.monotonic() - start
        since_drawn_ms = await page.evaluate("Date.now() - window.eisView.shown.at_ms")
        lag = await page.evaluate("window.eisView.lagSamples")
        renders = await page.evaluate("window.eisView.renders")
        decimated = await page.get_attribute("#decimation", "data-decimated")
        await page.locator("#nyquist polyline.latest").wait_for(state="attached", timeout=WAIT_MS)
        await browser.screenshot("pack")
    p50, worst = _lag_figures(lag)
    for name, value in {
        "seconds": seconds,
        "renders": renders,
        "lag_p50_ms": p50,
        "lag_max_ms": worst,
    }.items():
        record_property(name, round(value, 1))
    assert worst < 1000, f"the page fell {worst:.0f} ms behind the stream"
    assert since_drawn_ms < 1000  # still current at the end
    assert renders >= 3 * seconds  # about 10 a second; a page that stopped drawing would fail here
    assert decimated == "1"  # 100 state frames/s arrive: the page says it shows the latest of each batch
    assert browser.errors == []


@pytest.mark.asyncio
async def test_the_page_keeps_up_with_a_1khz_single_cell_stream(
    browser: Browser, record_property: Callable[[str, object], None]
) -> None:
    """``us06_25c`` (10 steps/s) at 100x: 1000 states/s."""
    page = browser.page
    async with served_apart(US06, speed=100) as view:
        await page.goto(view.url)
        await drawn(page)
        await page.wait_for_timeout(2000)
        lag = await page.evaluate("window.eisView.lagSamples")
        note = await page.text_content("#decimation") or ""
        rate = await page.evaluate("window.eisView.latest.decimation.states_per_s")
        stride = await page.evaluate("window.eisView.latest.decimation.history_stride")
    p50, worst = _lag_figures(lag)
    for name, value in {"lag_p50_ms": p50, "lag_max_ms": worst, "states_per_s": rate}.items():
        record_property(name, round(value, 1))
    assert worst < 1000
    assert rate > 200  # the stream needs decimating (about 1000/s when the machine is not loaded)
    assert stride >= 2  # 600 samples of history fill in 0.6 s at 1 kHz
    assert note.startswith("Decimated on the server:")
    assert browser.errors == []


# -- the HTTP side without a browser ---------------------------------------------------------------------


async def _http_get(port: int, path: str, host: str) -> bytes:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


@pytest.mark.asyncio
async def test_http_refusals_controls_off_and_no_secret() -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    secret = b"bench-secret-4711"
    async with served(US06, speed=1, secret=secret) as (_server, _client, view):
        port = view.port
        page = await _http_get(port, "/", f"127.0.0.1:{port}")
        assert page.startswith(b"HTTP/1.1 200")
        assert b"Content-Security-Policy: default-src 'none'" in page
        assert b"<title>eis-hil view</title>" in page
        assert (await _http_get(port, "/../server.py", f"localhost:{port}")).startswith(b"HTTP/1.1 404")
        # DNS rebinding: a loopback view answers to loopback names only
        assert (await _http_get(port, "/", f"evil.example:{port}")).startswith(b"HTTP/1.1 403")
        # another site's script in the same browser
        with pytest.raises(InvalidStatus):
            async with connect(f"ws://127.0.0.1:{port}/ws", origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        async with connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}") as ws:  # type: ignore[arg-type]
            sent = [await ws.recv()]
            hello = json.loads(sent[0])
            assert hello["type"] == "hello"
            assert hello["controls"] is False
            await ws.send(json.dumps({"type": "control", "id": 7, "text": "pause"}))
            while "replies" not in (update := json.loads(sent[-1])):
                sent.append(await ws.recv())
            assert not any(secret.decode() in str(message) for message in sent)
            assert update["replies"] == [
                {
                    "type": "reply",
                    "id": 7,
                    "text": "pause",
                    "ok": False,
                    "answer": "controls are off: start the view with --allow-control",
                }
            ]


@pytest.mark.asyncio
async def test_the_view_passes_on_only_the_commands_it_offers() -> None:
    from websockets.asyncio.client import connect

    async with (
        served(US06, speed=1, allow_control=True) as (server, _client, view),
        connect(f"ws://127.0.0.1:{view.port}/ws") as ws,
    ):
        assert json.loads(await ws.recv())["controls"] is True
        commands = ["stop", "speed=0", "seek=abc", "spectrum@0"]
        for ident, text in enumerate(commands):
            await ws.send(json.dumps({"type": "control", "id": ident, "text": text}))
        answers: dict[int, tuple[bool, str]] = {}
        while len(answers) < len(commands):
            for r in json.loads(await ws.recv()).get("replies", []):
                answers[r["id"]] = (r["ok"], r["answer"])
    assert answers == {
        0: (False, "'stop' is not offered by the view"),
        1: (False, "'speed=0' is not offered by the view"),
        2: (False, "seek target (seconds) 'abc' is not a number"),
        3: (True, "spectrum@0: ACK result=1"),
    }
    assert sim_state(server) is p.SimState.RUNNING


# -- strings from the stream are text, never markup -------------------------------------------------------

HTML = '<img src="x" class="injected">'


async def _hostile_server(reader: Any, writer: Any) -> None:
    """A server (or a replayed capture, or whatever answers on the port) whose strings are HTML: the
    hello's names, a NAK's message and the BYE's message."""
    import numpy as np

    enc, dec = p.FrameEncoder(), p.FrameDecoder()
    hello = p.ServerHello(
        cell_count=3, step_period_us=100_000, scenario_id=HTML, model_id=HTML, server_version=HTML
    )
    writer.write(enc.encode(hello))
    while data := await reader.read(65536):
        dec.feed(data)
        for frame in dec.events():
            if not isinstance(frame, p.Frame) or frame.seq is None:
                continue
            msg = frame.message
            if isinstance(msg, p.ClientHello):
                writer.write(enc.encode(p.Ack(frame.seq, 0, p.PROTOCOL_VERSION)))
            elif isinstance(msg, p.Subscribe):
                writer.write(enc.encode(p.Ack(frame.seq, 0, 3)))
                idx = np.arange(3)
                states = p.CellStates.from_columns(
                    0,
                    time.time_ns() // 1000,
                    1,
                    cell=idx,
                    voltage_uV=3_700_000 + idx,
                    current_uA=0,
                    temperature_mdegC=25_000,
                    soc_ppm=500_000,
                    soh_ppm=1_000_000,
                )
                writer.write(enc.encode(states))
            elif isinstance(msg, p.Control):
                writer.write(enc.encode(p.Nak(frame.seq, msg.command, p.ErrorCode.OUT_OF_RANGE, HTML)))
                writer.write(enc.encode(p.Bye(p.ErrorCode.SHUTDOWN, HTML)))
                await writer.drain()
                writer.close()
                return


@pytest.mark.asyncio
async def test_strings_from_the_stream_are_shown_as_text(browser: Browser) -> None:
    from hil_server.transport.loopback import open_pipe

    page = browser.page
    reader, writer = await open_pipe(_hostile_server)
    client = await HilClient.over(reader, writer, name="view")
    await client.subscribe()
    view = ViewServer(client, "hostile:7700", allow_control=True)
    await view.listen("127.0.0.1", 0)
    try:
        await page.goto(view.url)
        await expect(page.locator("#scenario")).to_have_text(f"scenario {HTML}", timeout=WAIT_MS)
        await expect(page.locator("#heatmap .cell")).to_have_count(3, timeout=WAIT_MS)
        await page.click("#pause")
        await expect(page.locator("#replies li.nak")).to_have_text(
            f"pause: NAK OUT_OF_RANGE: {HTML}", timeout=WAIT_MS
        )
        await expect(page.locator("#bye")).to_have_text(
            f"The stream ended: SHUTDOWN: {HTML}", timeout=WAIT_MS
        )
        assert HTML in (await page.text_content("#endpoint") or "")
        assert await page.locator("img, .injected").count() == 0  # text, not an element
    finally:
        await view.stop()
    assert browser.errors == []
