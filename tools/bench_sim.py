"""Simulation speed: simulated seconds per wall second for one cell, and for a 96-cell pack with a spectrum
per cell per step (60 frequencies), both at 10 steps/s with FixedCircuitSource + circuit.impedance.

    .venv/bin/python tools/bench_sim.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hil_server.scenario import load_scenario
from hil_server.sim import Engine, FixedCircuitSource

ONE_CELL = """name: bench_1cell
step_rate_hz: 10
eis: {interval_s: 60, frequencies: {min_hz: 0.02, max_hz: 20000, points_per_decade: 6}}
cells: {count: 1, profile: zhang2020, soc: 1.0}
timeline:
  - drive_cycle: {cycle: US06, scale: 0.009, loops: 100}
"""

PACK = """name: bench_pack
step_rate_hz: 10
eis: {{interval_s: 0.1, frequencies_hz: [{freqs}]}}
cells:
  count: 96
  profile: rashid2023
  capacity_ah: 2.5
  soc: 0.95
  spread: {{capacity_rel_std: 0.02, resistance_rel_std: 0.05, soc_std: 0.01}}
timeline:
  - drive_cycle: {{cycle: WLTC, scale: 0.0004, loops: 10}}
"""


def _run(path: Path, seconds: float) -> tuple[float, int, int]:
    engine = Engine(load_scenario(path), FixedCircuitSource())
    steps = spectra = 0
    start = time.perf_counter()
    for out in engine.run(seconds):
        steps += 1
        spectra += sum(s.cells.size for s in out.spectra)
    wall = time.perf_counter() - start
    return engine.time_s / wall, steps, spectra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated seconds per case")
    args = parser.parse_args()
    freqs = ", ".join(f"{f:.6g}" for f in np.logspace(4, -2, 60))
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.yaml"
        one.write_text(ONE_CELL, encoding="utf-8")
        pack = Path(tmp) / "pack.yaml"
        pack.write_text(PACK.format(freqs=freqs), encoding="utf-8")
        speed, steps, _ = _run(one, args.seconds)
        print(f"1 cell, 10 steps/s: {speed:8.0f} x real time ({steps} steps; target >= 1000 x)")
        speed, steps, spectra = _run(pack, min(args.seconds, 120.0))
        print(
            f"96 cells, 10 steps/s, 60-pt EIS/step: {speed:8.1f} x real time "
            f"({steps} steps, {spectra} spectra; target > 1 x with margin)"
        )


if __name__ == "__main__":
    main()
