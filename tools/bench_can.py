"""CAN bridge encoder speed: frames built per second against bare cantools encoding, and against the bus.

    .venv/bin/python tools/bench_can.py [--dbc ../shared/data/foxbms/foxbms.dbc] [--cells 160] [--steps 200]

Cases, measured interleaved step by step so load from other processes hits them alike:

- ``bare cantools``: ``Message.encode`` of the same frames' signal dictionaries, built beforehand (the floor);
- ``CanEncoder``: one step's CELL_STATES in, the step's frames out (values, units, invalid flags, clamping,
  cantools encode, python-can messages), with the shipped foxBMS mapping.

Prints frames per second for each, the ratio, and how many 500 kbit/s buses of worst-case 8-byte frames
(135 bits) the encoder could fill.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cantools
import numpy as np

import protocol as p
from hil_server.transport.can.bridge import CanEncoder
from hil_server.transport.can.mapping import bind, load_mapping

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dbc", default=str(ROOT.parent / "shared" / "data" / "foxbms" / "foxbms.dbc"))
    ap.add_argument("--cells", type=int, default=160)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    db = cantools.database.load_file(args.dbc)
    cells = range(args.cells)
    plans = bind(load_mapping("foxbms"), db, cells)
    rng = np.random.default_rng(0)
    states = [
        p.CellStates.from_columns(
            k * 100_000,
            0,
            k,
            cell=np.arange(args.cells),
            voltage_uV=rng.integers(3_000_000, 4_200_000, args.cells),
            current_uA=0,
            temperature_mdegC=rng.integers(-20_000, 60_000, args.cells),
            soc_ppm=500_000,
            soh_ppm=1_000_000,
        )
        for k in range(1, args.steps + 1)
    ]
    # the bare floor: the same signal dictionaries, built once
    bare = []
    for plan in plans:
        for frame in plan.frames:
            data = dict(frame.fill)
            for slot in frame.slots:
                data[slot.signal] = 3700.0 if slot.field == "voltage" else 25.0
                if slot.invalid_flag:
                    data[slot.invalid_flag] = 0
            bare.append((plan.message, data))
    encoder = CanEncoder(plans, cells)
    t_enc = t_bare = 0.0
    n_enc = n_bare = 0
    for st in states:
        t0 = time.perf_counter()
        encoder.update(st)
        n_enc += len(encoder.due())
        t1 = time.perf_counter()
        for message, data in bare:
            message.encode(data, scaling=True, strict=True)
        t2 = time.perf_counter()
        n_bare += len(bare)
        t_enc += t1 - t0
        t_bare += t2 - t1
    enc_rate, bare_rate = n_enc / t_enc, n_bare / t_bare
    bus_rate = 500_000 / 135
    print(f"{args.cells} cells, {len(bare)} frames per step, {args.steps} steps")
    print(f"bare cantools   {bare_rate:10.0f} frames/s")
    print(f"CanEncoder      {enc_rate:10.0f} frames/s  ({t_enc / args.steps * 1e3:.2f} ms per step)")
    print(f"ratio           {enc_rate / bare_rate:10.2f} of bare cantools")
    print(
        f"bus             {enc_rate / bus_rate:10.1f} x a saturated 500 kbit/s bus ({bus_rate:.0f} frames/s)"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
