"""Records kept from a damaged capture: bits flipped at random in a recorded session, read back with the
resynchronising reader (CAPTURE.md 6.2), against what a reader that stops at the first bad record keeps.

    .venv/bin/python tools/bench_capture_damage.py [--states 120] [--flips 1 50] [--seed 1]

One flip is placed at 10 % of the file (the issue's case); more flips are spread uniformly over the records.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

import protocol as p
from hil_server.capture.format import iter_records, open_capture
from hil_server.cli._logging import configure_logging
from hil_server.client.client import HilClient
from hil_server.testing import start_server

ROOT = Path(__file__).resolve().parents[1]


async def _record(path: Path, states: int) -> None:
    server = await start_server(ROOT / "scenarios" / "us06_25c.yaml", record=path)
    client = await HilClient.connect("127.0.0.1", server.port)
    await client.subscribe()
    for _ in range(states):
        await client.next_message(p.CellStates, timeout=10)
    await client.close()
    await server.stop()


def _read(path: Path) -> tuple[int, int]:
    """(records the resynchronising reader keeps, records before the first damaged span)."""
    capture = open_capture(path)
    offsets = []
    offset = capture.data_offset
    records = list(iter_records(capture))
    for record in records:
        offsets.append(offset)
        offset += 20 + len(record.frame)
    first_bad = capture.damage[0].offset if capture.damage else None
    before = sum(1 for o in offsets if first_bad is None or o < first_bad)
    return len(records), before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=120, help="CELL_STATES frames to record")
    parser.add_argument("--flips", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    configure_logging(level="error")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "session.eiscap"
        asyncio.run(_record(path, args.states))
        clean = path.read_bytes()
        capture = open_capture(path)
        total = sum(1 for _ in iter_records(capture))
        start = capture.data_offset
        print(f"capture: {len(clean)} bytes, {total} records")
        damaged = Path(tmp) / "damaged.eiscap"
        for flips in args.flips:
            data = bytearray(clean)
            if flips == 1:
                positions = [start + (len(clean) - start) // 10]
            else:
                positions = rng.integers(start, len(clean), flips).tolist()
            for pos in positions:
                data[pos] ^= 1 << int(rng.integers(0, 8))
            damaged.write_bytes(bytes(data))
            t0 = time.perf_counter()
            kept, before = _read(damaged)
            elapsed = time.perf_counter() - t0
            print(
                f"{flips} flip(s): {kept}/{total} records kept with resync, {before} when stopping at the "
                f"first bad record (read in {elapsed * 1e3:.0f} ms)"
            )


if __name__ == "__main__":
    main()
