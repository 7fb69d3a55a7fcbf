#!/usr/bin/env python3
"""Server speed, each figure against a baseline measured in the same run (the machine is shared and noisy).

1. Throughput, as fast as clients read (speed 0), to 1 and to 16 clients: frames per second the server
   delivers, against a bare asyncio sender writing the same frame bytes to the same number of readers.
   Twice: (a) serving a recorded capture (``eis-hil replay``): the server's own path, sessions, filters,
   sequence numbers, queues and coalesced writes, with nothing to compute; (b) running a scenario, where
   every CELL_STATES frame costs one simulation step (cell model and PINN): the whole server, which is
   simulation-bound.
2. Paced stream: a 1 kHz cell-state stream to 16 clients for --paced-s seconds: lateness of the sends
   against their deadlines (p50, p99, max) and the drift of simulated time against wall time at the end.
   Then the same to 16 byte-counting readers (as in 1), with the process CPU time per step: the server's
   own lateness, without 16 Python decoders sharing its process (on a loaded machine those alone can
   make the stream fall behind).
3. Process start to the first spectrum frame on a client (``eis-hil serve`` in a subprocess).

    python tools/bench_server.py [--paced-s 60] [--throughput-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import protocol as p
from hil_server.cli._logging import configure_logging
from hil_server.client.client import HilClient
from hil_server.testing import start_server

ROOT = Path(__file__).resolve().parent.parent
US06 = ROOT / "scenarios" / "us06_25c.yaml"

PACED_SCENARIO = """\
name: bench_1khz
seed: 1
step_rate_hz: 1000
eis: {mode: instant, frequencies: {min_hz: 0.1, max_hz: 10000, points_per_decade: 5}}
cells: {count: 1, profile: zhang2020, soc: 0.9}
ambient: {temp_c: 25}
timeline:
  - constant_current: {current_a: 0.02, duration_s: 100000}
"""


class Counter(asyncio.Protocol):
    """A reader that only counts bytes: the client's cost must not be what is measured."""

    def __init__(self) -> None:
        self.bytes = 0

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)


def _capture(path: Path, frames: int = 20_000) -> Path:
    """A capture of ``frames`` one-cell CELL_STATES, one every 100 µs, for the replay throughput."""
    from hil_server.capture.meta import hello_meta
    from hil_server.capture.writer import CaptureWriter

    enc = p.FrameEncoder()
    hello = p.ServerHello(cell_count=1, step_period_us=100, scenario_id="bench", freq_hz=np.ones(1))
    with CaptureWriter(path, hello_meta(hello)) as w:
        w.write(enc.encode(hello), t_us=0)
        for i in range(frames):
            w.write(enc.encode(_states(i)), t_us=100 * (i + 1))
    return path


def _states(step: int) -> p.CellStates:
    return p.CellStates.from_columns(
        step * 100,
        0,
        step,
        cell=[0],
        voltage_uV=4_000_000,
        current_uA=0,
        temperature_mdegC=25_000,
        soc_ppm=900_000,
        soh_ppm=1_000_000,
    )


async def _server_throughput(n_clients: int, seconds: float, capture: Path | None = None) -> float:
    config: dict[str, Any] = {"speed": 0.0, "peer_timeout_s": 3600.0}
    if capture is None:
        server = await start_server(US06, **config)
    else:
        from hil_server.stream.replay_source import ReplaySource
        from hil_server.transport.tcp import HilServer, ServerConfig

        server = HilServer(ReplaySource(capture, loop=0), config=ServerConfig(port=0, **config))
        await server.start()
    loop = asyncio.get_running_loop()
    transports = [await _raw_client(loop, server.port) for _ in range(n_clients)]
    await asyncio.sleep(0.5)
    sent0 = sum(s.frames_sent for s in server.sessions.values())
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    sent = sum(s.frames_sent for s in server.sessions.values()) - sent0
    elapsed = time.perf_counter() - t0
    for t in transports:
        t.close()
    await server.stop()
    return sent / elapsed


async def _drain(client: HilClient) -> None:
    while True:
        await client.next_frame()


async def _raw_client(loop: asyncio.AbstractEventLoop, port: int) -> asyncio.Transport:
    """CLIENT_HELLO and SUBSCRIBE (cell states) sent blind, then only bytes counted, as for the bare
    sender: decoding in the client would be measured instead of the server."""
    transport, _ = await loop.create_connection(Counter, "127.0.0.1", port)
    enc = p.FrameEncoder()
    hello = p.ClientHello(p.PROTOCOL_VERSION, p.PROTOCOL_VERSION, bytes(p.AUTH_RESPONSE_SIZE), "bench")
    subscribe = p.Subscribe(p.SubscribeMask.CELL_STATES, 1, 0, np.zeros(0, dtype=np.uint16))
    transport.write(enc.encode(hello) + enc.encode(subscribe))
    return transport


async def _bare_throughput(n_clients: int, seconds: float, frame: bytes, batch: int) -> float:
    """The same frame bytes written by a plain asyncio server, ``batch`` frames per write, with drain()."""
    payload = frame * batch
    sent = 0
    stop = asyncio.Event()

    handlers: list[asyncio.Task[None]] = []

    async def send(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        try:
            while not stop.is_set():
                writer.write(payload)
                await writer.drain()
                sent += batch
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await send(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transports = [(await loop.create_connection(Counter, "127.0.0.1", port))[0] for _ in range(n_clients)]
    await asyncio.sleep(0.5)
    sent0, t0 = sent, time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (sent - sent0) / (time.perf_counter() - t0)
    stop.set()
    await asyncio.gather(*handlers, return_exceptions=True)
    for t in transports:
        t.close()
    server.close()
    await server.wait_closed()
    return rate


async def throughput(seconds: float) -> None:
    sample = p.encode_frame(_states(0), seq=0)
    print("1. throughput, speed 0 (frames/s; baseline = bare asyncio sender of the same bytes, this run)")
    with tempfile.TemporaryDirectory() as tmp:
        capture = _capture(Path(tmp) / "bench.ehc")
        for n in (1, 16):
            bare1 = await _bare_throughput(n, seconds, sample, batch=1)
            bare64 = await _bare_throughput(n, seconds, sample, batch=64)
            replay = await _server_throughput(n, seconds, capture)
            live = await _server_throughput(n, seconds)
            pad = " " * 17
            print(
                f"   {n:2d} client(s): bare sender {bare1:9.0f} (a write per frame), {bare64:9.0f} "
                f"(64 frames per write)\n{pad}server replaying a capture {replay:9.0f}: "
                f"{replay / bare1:6.1%} of the 1st (target >= 50 %), {replay / bare64:6.1%} of the 2nd\n"
                f"{pad}server running a scenario  {live:9.0f}: {live / bare1:6.1%} of the 1st "
                "(simulation-bound)"
            )


async def paced(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "bench_1khz.yaml"
        scenario.write_text(PACED_SCENARIO)
        server = await start_server(scenario, speed=1.0, heartbeat_s=3600.0)  # lateness read directly below
        clients = [
            await HilClient.connect("127.0.0.1", server.port, name=f"c{i}", heartbeat_s=1.0)
            for i in range(16)
        ]
        for c in clients:
            await c.subscribe(mask=p.SubscribeMask.CELL_STATES)
        drains = [asyncio.create_task(_drain(c)) for c in clients]
        server.lateness_us.clear()
        wall0, sim0 = time.monotonic(), server.engine.time_s
        await asyncio.sleep(seconds)
        lat = np.array(server.lateness_us)
        end_ms = ((time.monotonic() - wall0) - (server.engine.time_s - sim0)) * 1e3
        drift_ms = float(np.median(lat[-1000:]) - np.median(lat[:1000])) / 1e3
        gaps = sum(c.gaps for c in clients)
        dropped = sum(s.frames_dropped for s in server.sessions.values())
        for t in drains:
            t.cancel()
        for c in clients:
            await c.close()
        await server.stop()
    print(f"2. paced 1 kHz cell states to 16 clients for {seconds:g} s: {lat.size} steps")
    print(
        f"   lateness p50 {np.percentile(lat, 50) / 1e3:.3f} ms, p99 {np.percentile(lat, 99) / 1e3:.3f} ms, "
        f"max {lat.max() / 1e3:.3f} ms (target p99 < 2 ms)\n"
        f"   drift: median lateness of the last 1000 steps minus the first 1000 {drift_ms:+.3f} ms "
        f"(target < 1 period = 1 ms; deadlines are absolute, so lateness does not accumulate); wall minus "
        f"simulated time "
        f"at the instant the run ended {end_ms:+.3f} ms (one sample: up to a period plus that step's "
        f"lateness); gaps {gaps}, dropped {dropped}"
    )


async def paced_counting(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "bench_1khz.yaml"
        scenario.write_text(PACED_SCENARIO)
        server = await start_server(scenario, speed=1.0, heartbeat_s=3600.0, peer_timeout_s=3600.0)
        loop = asyncio.get_running_loop()
        readers = [await _raw_client(loop, server.port) for _ in range(16)]
        await asyncio.sleep(0.5)
        server.lateness_us.clear()
        cpu0 = time.process_time()
        await asyncio.sleep(seconds)
        cpu_s = time.process_time() - cpu0
        lat = np.array(server.lateness_us)
        for r in readers:
            r.close()
        await server.stop()
    print(
        f"   the same to 16 byte-counting readers: {lat.size} steps, lateness p50 "
        f"{np.percentile(lat, 50) / 1e3:.3f} ms, p99 {np.percentile(lat, 99) / 1e3:.3f} ms, max "
        f"{lat.max() / 1e3:.3f} ms; process CPU {cpu_s / lat.size * 1e6:.0f} us per step (a 1 kHz stream "
        "needs < 1000 on a free core)"
    )


def start_to_first_spectrum(repeats: int = 3) -> None:
    times = []
    for _ in range(repeats):
        port = 7800 + int(time.time() * 1000) % 1000
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hil_server.cli", "serve", str(US06), "--port", str(port), "--speed", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            times.append(asyncio.run(_first_spectrum(port)) - t0)
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        f"3. process start to first spectrum frame on a client: median {statistics.median(times):.3f} s "
        f"of {repeats} (target < 1.5 s)"
    )


async def _first_spectrum(port: int) -> float:
    deadline = time.monotonic() + 30
    while True:
        try:
            client = await HilClient.connect("127.0.0.1", port, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.005)
    await client.subscribe(mask=p.SubscribeMask.EIS_SPECTRUM)
    await client.control(p.Control.request_spectrum(0))
    await client.next_message(p.EisSpectrum, timeout=10)
    done = time.monotonic()
    await client.close()
    return done


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--paced-s", type=float, default=60.0)
    parser.add_argument("--throughput-s", type=float, default=5.0)
    args = parser.parse_args()
    configure_logging(level="warning")
    asyncio.run(throughput(args.throughput_s))
    asyncio.run(paced(args.paced_s))
    asyncio.run(paced_counting(args.paced_s))
    start_to_first_spectrum()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
