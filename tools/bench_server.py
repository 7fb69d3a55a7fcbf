#!/usr/bin/env python3
"""Server speed, each figure against a baseline measured in the same run (the machine is shared and noisy).

1. Throughput, as fast as clients read (speed 0), to 1 and to 16 clients: frames per second the server
   delivers, against a bare asyncio sender writing the same frame bytes to the same number of readers.
   Every CELL_STATES frame here costs one simulation step (cell model and PINN), so this measures the
   whole server, which is simulation-bound, not its transport alone.
2. Paced stream: a 1 kHz cell-state stream to 16 clients for --paced-s seconds: lateness of the sends
   against their deadlines (p50, p99, max) and the drift of simulated time against wall time at the end.
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

import numpy as np

import protocol as p
from hil_server._logging import configure_logging
from hil_server.client import HilClient
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


async def _server_throughput(n_clients: int, seconds: float) -> float:
    server = await start_server(US06, speed=0.0)
    clients = [await HilClient.connect("127.0.0.1", server.port, name=f"c{i}") for i in range(n_clients)]
    for c in clients:
        await c.subscribe(mask=p.SubscribeMask.CELL_STATES)
    drain = [asyncio.create_task(_drain(c)) for c in clients]
    await asyncio.sleep(0.5)
    sent0 = sum(s.frames_sent for s in server.sessions.values())
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    sent = sum(s.frames_sent for s in server.sessions.values()) - sent0
    elapsed = time.perf_counter() - t0
    for t in drain:
        t.cancel()
    for c in clients:
        await c.close()
    await server.stop()
    return sent / elapsed


async def _drain(client: HilClient) -> None:
    while True:
        await client.next_frame()


async def _bare_throughput(n_clients: int, seconds: float, frame: bytes) -> float:
    """The same frame bytes written by a plain asyncio server, one write per frame batch, with drain()."""
    batch = 8
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
    sample = p.encode_frame(
        p.CellStates.from_columns(
            0,
            0,
            0,
            cell=[0],
            voltage_uV=4_000_000,
            current_uA=0,
            temperature_mdegC=25_000,
            soc_ppm=900_000,
            soh_ppm=1_000_000,
        ),
        seq=0,
    )
    print("1. throughput, speed 0 (frames/s; baseline = bare asyncio sender of the same bytes, this run)")
    for n in (1, 16):
        ours = await _server_throughput(n, seconds)
        bare = await _bare_throughput(n, seconds, sample)
        print(
            f"   {n:2d} client(s): server {ours:10.0f} frames/s, bare sender {bare:10.0f} frames/s, "
            f"ratio {ours / bare:6.1%} (target >= 50 %)"
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
        drift_ms = ((time.monotonic() - wall0) - (server.engine.time_s - sim0)) * 1e3
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
        f"max {lat.max() / 1e3:.3f} ms (target p99 < 2 ms); wall minus simulated time at the end "
        f"{drift_ms:+.3f} ms (target < 1 period = 1 ms; deadlines are absolute, so this is the lateness of "
        f"that instant, not accumulated drift); gaps {gaps}, dropped {dropped}"
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
    start_to_first_spectrum()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
