#!/usr/bin/env python3
"""CPU time of the Wireshark dissector (tools/wireshark/eis_hil.lua) in tshark, against tshark's own TCP
dissection of the same file measured in the same run.

A synthetic capture of N CELL_STATES frames of 96 cells (2346 bytes each, every one split over two
1460-byte segments) is exported with ``eis-hil export --pcap`` and read by tshark twice: with the dissector
(every frame decoded, both CRCs checked, TCP reassembly) and without it (the baseline).

    python tools/bench_wireshark.py [--frames 1000]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import protocol as p
from hil_server.capture.format import DIR_RX
from hil_server.capture.pcap import export_pcap
from hil_server.capture.writer import CaptureWriter

LUA = Path(__file__).resolve().parent / "wireshark" / "eis_hil.lua"


def _child_cpu(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    tshark = shutil.which("tshark")
    if tshark is None:
        sys.stderr.write("bench_wireshark: tshark not installed (apt-get install tshark)\n")
        return 2
    records = np.zeros(96, dtype=p.CELL_STATE_DTYPE)
    records["cell"] = np.arange(96)
    records["voltage_uV"] = 3_700_000 + np.arange(96)
    records["soc_ppm"] = 500_000
    with tempfile.TemporaryDirectory() as tmp:
        capture, pcap = Path(tmp) / "bench.eiscap", Path(tmp) / "bench.pcapng"
        with CaptureWriter(capture, {"start_unix_us": 1_790_000_000_000_000}) as writer:
            for k in range(args.frames):
                msg = p.CellStates(t_sim_us=k * 100_000, t_wall_us=0, step=k, records=records)
                writer.write(p.encode_frame(msg, seq=k), direction=DIR_RX, t_us=k * 100_000)
        export_pcap(capture, pcap)
        base = _child_cpu([tshark, "-n", "-r", str(pcap)])
        lua = _child_cpu([tshark, "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap)])
    per_frame_ms = lua / args.frames * 1e3
    sys.stdout.write(
        f"{args.frames} CELL_STATES frames of 96 cells: tshark with the dissector {lua:.2f} s CPU "
        f"({per_frame_ms:.2f} ms per frame), without it {base:.2f} s: {lua / base:.1f}x; "
        f"a 10 Hz 96-cell stream decodes {100 / per_frame_ms:.0f}x faster than real time\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
