"""Soak: ``eis-hil serve`` for N minutes, a paced 1 kHz fault scenario, 16 well-behaved clients, misbehavers.

    python tools/soak.py --minutes 30 [--clients 16] [--rate-hz 1000] [--json report.json]

- The scenario is ``scenarios/fault_showcase.yaml`` (12 cells, physics, measurement and spectrum faults) with
  its step rate raised to ``--rate-hz`` (no bundled scenario steps at 1 kHz) and its transport faults
  (drop_frames, corrupt_crc) removed: those damage the stream on purpose, and this soak counts every lost or
  damaged frame as a failure. It is written into a temporary directory next to a copy of nothing else (the
  drive cycle is the bundled US06).
- Well-behaved clients (in ``--workers`` subprocesses, so decoding 16 streams does not starve one core): each
  subscribes to everything, checks the CRC of every frame (the decoder) and the continuity of ``seq``, sends
  heartbeats, and keeps the lateness figures and ``frames_dropped`` of the server's heartbeats.
- Misbehaving clients: a never-reader (subscribed, tiny receive window; reconnects after the server drops
  it), slowloris (connects, says nothing), churn (connect, hello, subscribe, leave, 10 per second), a garbage
  sender (random bytes) and a control flooder (fault injections and spectrum requests far above the rate
  limit).
- The server's RSS is read from ``/proc/PID/status`` every second.

Report: memory (start, max, end, slope in MB/min over the run after the first 10 %), lateness (median p50,
max p99 and max of the server's per-heartbeat figures), frames received, lost (seq gaps) and dropped by the
server for each well-behaved client, CRC errors, misbehaver counters, errors. Exit status 1 when a
well-behaved client lost a frame or saw a bad one, or the server died or did not exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import protocol as p

ROOT = Path(__file__).resolve().parent.parent
BASE_SCENARIO = ROOT / "scenarios" / "fault_showcase.yaml"
TRANSPORT_FAULTS = ("drop_frames", "corrupt_crc", "delay_frames", "duplicate_frames", "reorder_frames")


def soak_scenario(directory: Path, rate_hz: float) -> Path:
    """The fault showcase at ``rate_hz`` steps per second, without the faults that damage frames on
    purpose."""
    text = BASE_SCENARIO.read_text()
    text, n = re.subn(r"(?m)^step_rate_hz: .*$", f"step_rate_hz: {rate_hz:g}", text)
    if n != 1:
        raise SystemExit(f"{BASE_SCENARIO}: expected one step_rate_hz line, found {n}")
    lines = [
        line
        for line in text.splitlines()
        if not any(f"kind: {kind}" in line for kind in TRANSPORT_FAULTS) and "# transport" not in line
    ]
    text = "\n".join(lines).replace("name: fault_showcase", "name: soak_fault_showcase") + "\n"
    path = directory / "soak_fault_showcase.yaml"
    path.write_text(text)
    return path


# -- well-behaved clients (worker processes) ---------------------------------------------------------------


@dataclass
class ClientStats:
    name: str
    frames: int = 0
    lost: int = 0
    """Frames missing from the seq sequence."""
    out_of_order: int = 0
    bad_frames: int = 0
    server_dropped: int = 0
    """frames_dropped of the server's last heartbeat to this client."""
    lateness_p50_us: list[int] = field(default_factory=list)
    lateness_p99_us: list[int] = field(default_factory=list)
    lateness_max_us: list[int] = field(default_factory=list)
    lateness_at: list[float] = field(default_factory=list)
    """Wall clock (time.time()) at which each heartbeat's lateness figures arrived."""
    bye: str = ""
    error: str = ""


async def good_client(port: int, name: str, stop: asyncio.Event) -> ClientStats:
    stats = ClientStats(name)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    encoder = p.FrameEncoder()
    decoder = p.FrameDecoder()
    last_seq: int | None = None

    async def heartbeats() -> None:
        while True:
            await asyncio.sleep(0.5)
            writer.write(encoder.encode(p.Heartbeat(rx_bad_frames=stats.bad_frames)))

    hb = asyncio.create_task(heartbeats())
    try:
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(1 << 16), 0.5)
            except TimeoutError:
                continue
            if not data:
                break
            decoder.feed(data)
            for item in decoder.events():
                if isinstance(item, p.RemoteProtocolError):
                    stats.bad_frames += 1
                    continue
                stats.frames += 1
                if last_seq is not None:
                    step = (item.seq - last_seq) & 0xFFFFFFFF
                    if step == 0 or step > 0x7FFFFFFF:
                        stats.out_of_order += 1
                    else:
                        stats.lost += step - 1
                last_seq = item.seq
                msg = item.message
                if isinstance(msg, p.ServerHello):  # nothing may be sent before it (SPEC.md 3.1)
                    writer.write(encoder.encode(p.ClientHello(client_name=name)))
                    writer.write(encoder.encode(p.Subscribe()))
                elif isinstance(msg, p.Heartbeat):
                    stats.server_dropped = msg.frames_dropped
                    stats.lateness_p50_us.append(msg.lateness_p50_us)
                    stats.lateness_p99_us.append(msg.lateness_p99_us)
                    stats.lateness_max_us.append(msg.lateness_max_us)
                    stats.lateness_at.append(time.time())
                elif isinstance(msg, p.Bye):
                    stats.bye = f"{p.ErrorCode(msg.reason).name}: {msg.message}"
                elif isinstance(msg, p.Nak | p.Error):
                    stats.error = f"{type(msg).__name__}: {msg}"
    except (ConnectionError, OSError) as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
    finally:
        hb.cancel()
        writer.close()
    return stats


async def worker(port: int, names: list[str], out: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    results = await asyncio.gather(*(good_client(port, n, stop) for n in names))
    out.write_text(json.dumps([asdict(r) for r in results]))


# -- misbehaving clients (main process) ---------------------------------------------------------------------


@dataclass
class Misbehavers:
    never_reader_connections: int = 0
    slowloris_connections: int = 0
    churn_connections: int = 0
    garbage_bytes: int = 0
    controls_sent: int = 0
    controls_rate_limited: int = 0
    controls_acked: int = 0
    errors: list[str] = field(default_factory=list)


async def _open(port: int, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _hello(writer: asyncio.StreamWriter, enc: p.FrameEncoder, name: str, mask: int | None) -> None:
    writer.write(enc.encode(p.ClientHello(client_name=name)))
    if mask is not None:
        writer.write(enc.encode(p.Subscribe(msg_mask=mask)))


async def never_reader(port: int, m: Misbehavers, stop: asyncio.Event) -> None:
    while not stop.is_set():
        _, writer = await _open(port, rcvbuf=4096)
        m.never_reader_connections += 1
        enc = p.FrameEncoder()
        await _hello(writer, enc, "never-reads", p.SubscribeMask.ALL)
        with contextlib.suppress(ConnectionError, OSError):
            while not stop.is_set() and not writer.is_closing():
                writer.write(enc.encode(p.Heartbeat()))  # alive, so only the stuck rule can drop it
                await asyncio.sleep(0.5)
                if writer.transport.get_write_buffer_size() > 1 << 16:
                    break
        writer.transport.abort()
        await asyncio.sleep(1.0)


async def slowloris(port: int, m: Misbehavers, stop: asyncio.Event) -> None:
    while not stop.is_set():
        reader, writer = await _open(port)
        m.slowloris_connections += 1
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            while not stop.is_set():
                data: bytes = await asyncio.wait_for(reader.read(1 << 16), 30)
                if not data:
                    break
        writer.close()


async def churn(port: int, m: Misbehavers, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(ConnectionError, OSError):
            reader, writer = await _open(port)
            m.churn_connections += 1
            await _hello(writer, p.FrameEncoder(), "churn", p.SubscribeMask.CELL_STATES)
            await reader.read(1 << 12)
            if m.churn_connections % 2:
                writer.transport.abort()  # every other one leaves with a reset
            else:
                writer.close()
        await asyncio.sleep(0.1)


async def garbage(port: int, m: Misbehavers, stop: asyncio.Event) -> None:
    rng = np.random.default_rng(0)
    reader, writer = await _open(port)
    await _hello(writer, p.FrameEncoder(), "garbage", None)
    drain = asyncio.create_task(_discard(reader))
    with contextlib.suppress(ConnectionError, OSError):
        while not stop.is_set():
            chunk = rng.bytes(1024)
            writer.write(chunk)
            m.garbage_bytes += len(chunk)
            await asyncio.sleep(0.01)
    drain.cancel()
    writer.close()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


async def control_flooder(port: int, m: Misbehavers, stop: asyncio.Event) -> None:
    reader, writer = await _open(port)
    enc = p.FrameEncoder()
    await _hello(writer, enc, "flooder", 0)
    decoder = p.FrameDecoder()

    async def replies() -> None:
        while data := await reader.read(1 << 16):
            decoder.feed(data)
            for item in decoder.events():
                if isinstance(item, p.Frame) and isinstance(item.message, p.Nak):
                    if item.message.code == p.ErrorCode.RATE_LIMITED:
                        m.controls_rate_limited += 1
                elif isinstance(item, p.Frame) and isinstance(item.message, p.Ack):
                    m.controls_acked += 1

    task = asyncio.create_task(replies())
    kinds = [p.FaultKind.NOISE, p.FaultKind.OUTLIERS, p.FaultKind.GAIN, p.FaultKind.CONTACT_RESISTANCE]
    commands = [
        lambda i: p.Control.inject_fault(kinds[i % 4], cell=i % 12, severity_ppm=200_000, duration_ms=2000),
        lambda i: p.Control.request_spectrum(cell=i % 12),
        lambda i: p.Control.set_ambient_temperature(20_000 + (i % 10) * 1000),
        lambda i: p.Control(p.ControlCommand.SET_AMBIENT_TEMPERATURE, aux=1),
    ]
    i = 0
    with contextlib.suppress(ConnectionError, OSError):
        while not stop.is_set():
            writer.write(b"".join(enc.encode(commands[(i + k) % 4](i + k)) for k in range(20)))
            writer.write(enc.encode(p.Heartbeat()))
            m.controls_sent += 20
            i += 20
            await asyncio.sleep(0.1)  # 200 commands/s against a limit of 50
    task.cancel()
    writer.close()


# -- the run -----------------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def _server_command(scenario: Path) -> list[str]:
    script = Path(sys.executable).with_name("eis-hil")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "hil_server.cli"]
    return [*prefix, "--log-level", "warning", "serve", str(scenario), "--port", "0", "--max-clients", "64"]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="eis-hil-soak-"))
    scenario = soak_scenario(tmp, args.rate_hz)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp / "server.log"
    log_file = log_path.open("w")
    server = subprocess.Popen(
        _server_command(scenario), stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=tmp
    )
    assert server.stdout is not None
    banner = await asyncio.to_thread(server.stdout.readline)
    match = re.search(r" on [^:]+:(\d+) ", banner)
    if not match:
        server.kill()
        raise SystemExit(f"server did not start: {banner!r}\n{log_path.read_text()[-2000:]}")
    port = int(match.group(1))
    seconds = args.minutes * 60
    started = time.monotonic()
    started_wall = time.time()
    names = [f"bms-{i:02d}" for i in range(args.clients)]
    per_worker = [names[i :: args.workers] for i in range(args.workers)]
    outs = [tmp / f"worker-{i}.json" for i in range(args.workers)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", "--port", str(port), "--out", str(out), *group],
            env={**env, "PYTHONPATH": str(ROOT)},
        )
        for group, out in zip(per_worker, outs, strict=True)
        if group
    ]
    stop = asyncio.Event()
    m = Misbehavers()
    tasks = []
    if not args.no_misbehavers:
        for coro in (never_reader, slowloris, churn, garbage, control_flooder):
            tasks.append(asyncio.create_task(coro(port, m, stop)))
    rss: list[tuple[float, int]] = []
    server_alive = True
    while (elapsed := time.monotonic() - started) < seconds:
        if server.poll() is not None:
            server_alive = False
            m.errors.append(f"server exited with {server.returncode} after {elapsed:.0f} s")
            break
        kb = rss_kb(server.pid)
        if kb is not None:
            rss.append((elapsed, kb))
        if args.progress and len(rss) % 60 == 0:
            sys.stderr.write(f"soak: {elapsed / 60:.1f} min, server RSS {kb} kB\n")
        await asyncio.sleep(1.0)
    stop.set()
    for t in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(t, 5)
        if not t.done():
            t.cancel()
        elif not t.cancelled() and t.exception() is not None:
            m.errors.append(f"misbehaver failed: {t.exception()!r}")
    exit_code: int | None = None
    if server_alive:
        server.send_signal(signal.SIGTERM)
        try:
            exit_code = await asyncio.to_thread(server.wait, 15)
        except subprocess.TimeoutExpired:
            server.kill()
            m.errors.append("server did not exit within 15 s of SIGTERM")
    for w in workers:
        try:
            await asyncio.to_thread(w.wait, 20)
        except subprocess.TimeoutExpired:
            w.send_signal(signal.SIGTERM)
            await asyncio.to_thread(w.wait, 10)
    clients: list[dict[str, Any]] = []
    for out in outs:
        if out.exists():
            clients.extend(json.loads(out.read_text()))
        else:
            m.errors.append(f"{out}: worker wrote no results")
    log_file.close()
    report = summarise(clients, rss, m, server_alive, exit_code, seconds, args, started_wall)
    report["server_log"] = str(log_path)
    if not args.keep:
        report["server_log_tail"] = log_path.read_text()[-2000:]
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def summarise(
    clients: list[dict[str, Any]],
    rss: list[tuple[float, int]],
    m: Misbehavers,
    server_alive: bool,
    exit_code: int | None,
    seconds: float,
    args: argparse.Namespace,
    started_wall: float = 0.0,
) -> dict[str, Any]:
    t = np.array([s for s, _ in rss], dtype=float)
    mb = np.array([kb for _, kb in rss], dtype=float) / 1024
    tail = t >= 0.1 * seconds
    slope = float(np.polyfit(t[tail] / 60, mb[tail], 1)[0]) if tail.sum() >= 3 else float("nan")
    p50 = [v for c in clients for v in c["lateness_p50_us"]]
    p99 = [v for c in clients for v in c["lateness_p99_us"]]
    mx = [v for c in clients for v in c["lateness_max_us"]]
    windows = _lateness_windows(clients, started_wall)
    lost = sum(c["lost"] + c["out_of_order"] for c in clients)
    bad = sum(c["bad_frames"] for c in clients)
    dropped = sum(c["server_dropped"] for c in clients)
    ok = (
        server_alive
        and exit_code == 0
        and len(clients) == args.clients
        and lost == 0
        and bad == 0
        and dropped == 0
        and all(c["frames"] > 0 and not c["error"] for c in clients)
    )
    return {
        "ok": ok,
        "minutes": args.minutes,
        "rate_hz": args.rate_hz,
        "good_clients": len(clients),
        "server_alive": server_alive,
        "server_exit_code": exit_code,
        "rss_mb": {
            "start": float(mb[0]) if mb.size else None,
            "max": float(mb.max()) if mb.size else None,
            "end": float(mb[-1]) if mb.size else None,
            "slope_mb_per_min": slope,
            "samples": [
                [round(s, 1), round(v, 1)]
                for s, v in zip(t[:: max(1, len(t) // 60)], mb[:: max(1, len(t) // 60)], strict=True)
            ],
        },
        "lateness_us": {
            "p50_median": statistics.median(p50) if p50 else None,
            "p99_max": max(p99) if p99 else None,
            "max": max(mx) if mx else None,
            **windows,
        },
        "frames_received": sum(c["frames"] for c in clients),
        "frames_lost": lost,
        "frames_dropped_by_server": dropped,
        "crc_errors": bad,
        "clients": clients if args.json else [],
        "misbehavers": asdict(m),
    }


SPIKE_US = 10_000
"""A heartbeat window whose worst lateness exceeds this is listed, with when it happened."""


def _lateness_windows(clients: list[dict[str, Any]], started_wall: float) -> dict[str, Any]:
    """Per heartbeat window (1 s) of one client (every client gets the same server figures): the spread of
    the windows' p99 and the windows with a spike, with when they happened (minutes into the soak)."""
    c = max(clients, key=lambda c: len(c["lateness_at"]), default=None)
    if c is None or not c["lateness_at"]:
        return {}
    p99 = np.array(c["lateness_p99_us"], dtype=float)
    mx = np.array(c["lateness_max_us"], dtype=float)
    minute = (np.array(c["lateness_at"]) - started_wall) / 60
    spikes = np.flatnonzero(mx > SPIKE_US)
    worst = spikes[np.argsort(mx[spikes])[::-1][:10]]
    return {
        "windows": int(p99.size),
        "window_p99_median": float(np.median(p99)),
        "window_p99_p99": float(np.percentile(p99, 99)),
        "windows_over_spike": int(spikes.size),
        "spikes": [{"minute": round(float(minute[i]), 2), "max_us": int(mx[i])} for i in sorted(worst)],
    }


def print_report(r: dict[str, Any]) -> None:
    rss = r["rss_mb"]
    lat = r["lateness_us"]
    mis = r["misbehavers"]
    lines = [
        f"soak: {r['minutes']:g} min at {r['rate_hz']:g} Hz, {r['good_clients']} well-behaved clients",
        f"  server RSS MB: start {rss['start']:.1f}, max {rss['max']:.1f}, end {rss['end']:.1f}, "
        f"slope {rss['slope_mb_per_min']:+.3f} MB/min",
        f"  lateness us (server heartbeats): p50 {lat['p50_median']}, p99 {lat['p99_max']} (worst), "
        f"max {lat['max']}",
        f"  per 1-s window: p99 median {lat.get('window_p99_median', 0):.0f}, 99th percentile of the "
        f"windows' p99 {lat.get('window_p99_p99', 0):.0f}; windows with max > {SPIKE_US} us: "
        f"{lat.get('windows_over_spike')} of {lat.get('windows')}",
        *(f"    spike at minute {sp['minute']}: max {sp['max_us']} us" for sp in lat.get("spikes", [])),
        f"  frames received {r['frames_received']}, lost (seq gaps) {r['frames_lost']}, "
        f"dropped by the server {r['frames_dropped_by_server']}, bad frames {r['crc_errors']}",
        f"  misbehavers: never-reader connections {mis['never_reader_connections']}, slowloris "
        f"{mis['slowloris_connections']}, churn {mis['churn_connections']}, "
        f"garbage {mis['garbage_bytes']} B, "
        f"controls {mis['controls_sent']} ({mis['controls_acked']} acked, {mis['controls_rate_limited']} "
        "rate-limited)",
        f"  server: {'alive' if r['server_alive'] else 'DIED'}, exit code on SIGTERM {r['server_exit_code']}",
        *(f"  error: {e}" for e in mis["errors"]),
        f"  result: {'OK' if r['ok'] else 'FAILED'}",
    ]
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate-hz", type=float, default=1000.0)
    parser.add_argument("--workers", type=int, default=2, help="processes running the well-behaved clients")
    parser.add_argument("--no-misbehavers", action="store_true")
    parser.add_argument("--json", help="also write the whole report (per-client figures) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server log)")
    parser.add_argument("--progress", action="store_true", help="a line on stderr every minute")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args.port, args.names, Path(args.out)))
        return 0
    report = asyncio.run(run(args))
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
