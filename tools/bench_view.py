"""The live view under the issue's load: does the page keep up, and what does the view cost the stream?

    python tools/bench_view.py [--seconds 60] [--scenario scenarios/pack_96s_spread.yaml] [--speed 10]
                               [--cell 40] [--runs baseline,beside,apart] [--json report.json]

Runs of ``eis-hil serve SCENARIO --speed N`` as a process, as on a bench, ``--seconds`` each:

- ``baseline``: the server with one client, a BMS (every cell, every kind of frame);
- ``beside``: the same and ``serve --view``, the view in the server's process and event loop;
- ``apart``: the same and ``eis-hil view`` as a second process.

With a view, the page is open in Debian's chromium (Playwright) with one cell's detail shown.

Figures: the page's lag (this browser's clock minus the server's wall time of the state it shows, one sample
per drawn update: both on this machine) p50, p99 and max; updates drawn per second; the frames the server
dropped for the view; and, from the BMS's heartbeats, the server's lateness (median of the heartbeats' p50,
worst p99 and max) with and without the view. Exit status 1 when the page's lag reached one second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import protocol as p  # noqa: E402
from hil_server.client.client import HilClient  # noqa: E402


async def _serve(
    scenario: Path, speed: float, view: bool
) -> tuple[asyncio.subprocess.Process, int, int | None]:
    argv = [sys.executable, "-m", "hil_server.cli", "--log-level", "warning", "serve", str(scenario)]
    argv += ["--port", "0", "--speed", str(speed)] + (["--view", "0"] if view else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    port = view_port = None
    while port is None or (view and view_port is None):
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line:
            raise SystemExit(f"the server ended before its banner: {' '.join(argv)}")
        if line.startswith("eis-hil serving"):
            port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        if line.startswith("eis-hil view:"):
            view_port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
    return proc, port, view_port


async def _bms(port: int, out: list[p.Heartbeat]) -> None:
    """A BMS: every cell, every kind of frame, read as they come; the server's heartbeats kept."""
    client = await HilClient.connect("127.0.0.1", port, name="bench-bms")
    try:
        await client.subscribe()
        while True:
            out.append(await client.next_message(p.Heartbeat))
    finally:
        await client.close()


def _lateness(beats: list[p.Heartbeat]) -> dict[str, float]:
    beats = beats[1:]  # the first covers the start-up
    if not beats:
        return {}
    return {
        "p50_median_ms": statistics.median(b.lateness_p50_us for b in beats) / 1e3,
        "p99_worst_ms": max(b.lateness_p99_us for b in beats) / 1e3,
        "max_ms": max(b.lateness_max_us for b in beats) / 1e3,
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _view_process(port: int) -> tuple[asyncio.subprocess.Process, int]:
    argv = [sys.executable, "-m", "hil_server.cli", "--log-level", "warning", "view", "127.0.0.1", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *argv, "--listen", "0", stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    if not line.startswith("eis-hil view:"):
        raise SystemExit(f"eis-hil view did not start: {line!r}")
    return proc, int(line.split()[2].rstrip("/").rsplit(":", 1)[1])


async def _run(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    proc, port, view_port = await _serve(args.scenario, args.speed, kind == "beside")
    procs = [proc]
    beats: list[p.Heartbeat] = []
    listener = asyncio.create_task(_bms(port, beats))
    result: dict[str, Any] = {}
    try:
        if kind == "apart":
            view_proc, view_port = await _view_process(port)
            procs.insert(0, view_proc)
        if view_port is None:
            await asyncio.sleep(args.seconds)
        else:
            result = await _page(args, view_port)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        for each in procs:
            each.send_signal(signal.SIGINT)
            await each.wait()
    result["server_lateness"] = _lateness(beats)
    return result


async def _page(args: argparse.Namespace, view_port: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    chromium = os.environ.get("EIS_HIL_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(f"http://127.0.0.1:{view_port}/")
        await page.locator(f"#heatmap .cell[data-cell='{args.cell}']").click(timeout=30_000)
        start = time.monotonic()
        await page.wait_for_timeout(args.seconds * 1000)
        seconds = time.monotonic() - start
        lag: list[float] = await page.evaluate("window.eisView.lagSamples")
        renders: int = await page.evaluate("window.eisView.renders")
        latest = await page.evaluate("window.eisView.latest")
        await browser.close()
    lag = lag[5:]  # the first updates carry the page's own start-up
    return {
        "seconds": round(seconds, 1),
        "renders_per_s": round(renders / seconds, 1),
        "lag_ms": {
            "p50": round(statistics.median(lag)),
            "p99": round(_quantile(lag, 0.99)),
            "max": round(max(lag)),
        },
        "view_frames_received": latest["health"]["frames"],
        "view_frames_dropped_by_server": latest["health"]["frames_dropped"],
        "view_sequence_gaps": latest["health"]["gaps"],
        "history_stride": latest["decimation"]["history_stride"],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"scenario": args.scenario.name, "speed": args.speed, "seconds": args.seconds}
    for kind in args.runs:
        report[kind] = await _run(args, kind)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "pack_96s_spread.yaml")
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--cell", type=int, default=40, help="the cell whose detail the page shows")
    parser.add_argument(
        "--runs",
        type=_runs,
        default=["baseline", "beside", "apart"],
        help="comma-separated: baseline (no view), beside (serve --view), apart (eis-hil view process)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    worst = 0
    for kind in ("beside", "apart"):
        if kind in report:
            lag = report[kind]["lag_ms"]
            worst = max(worst, lag["max"])
            print(
                f"{kind}: page lag p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms "
                f"over {report[kind]['seconds']} s at {args.speed:g}x"
            )
    return 0 if worst < 1000 else 1


def _runs(text: str) -> list[str]:
    runs = [r.strip() for r in text.split(",") if r.strip()]
    wrong = [r for r in runs if r not in ("baseline", "beside", "apart")]
    if wrong or not runs:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of baseline, beside, apart"
        )
    return runs


if __name__ == "__main__":
    sys.exit(main())
