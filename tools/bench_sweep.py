"""The figures of issue 18, as ratios measured in one run.

1. A 1000-cell pack at 10 steps/s with a 61-point spectrum per cell per step, on one core (this process
   pinned to one CPU, so the writer's background thread shares it): the engine alone, then ``eis-hil run``'s
   code path (engine + RunWriter into Parquet): simulated seconds per wall second, bytes per spectrum point.
2. A sweep of 8 tasks of about ``--task-wall-s`` each: 1 local worker, 2 local workers, Ray with 2 CPUs (start
   excluded and included), and whether the three datasets are byte-identical.

    .venv/bin/python tools/bench_sweep.py [--pack-s 20] [--task-wall-s 10] [--no-ray]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

PACK = """name: bench_pack1000
seed: 7
step_rate_hz: 10
eis: {interval_s: 0.1, mode: instant}
cells:
  count: 1000
  profile: rashid2023
  capacity_ah: 2.5
  soc: 0.95
  spread: {capacity_rel_std: 0.02, resistance_rel_std: 0.05, soc_std: 0.01}
timeline:
  - drive_cycle: {cycle: WLTC, scale: 0.0004, loops: 3}
"""

TASK = """name: bench_task
step_rate_hz: 10
eis: {interval_s: 1}
cells:
  count: 24
  profile: rashid2023
  capacity_ah: 2.5
  soc: 0.95
  spread: {capacity_rel_std: 0.02, resistance_rel_std: 0.05, soc_std: 0.01}
timeline:
  - drive_cycle: {cycle: WLTC, scale: 0.0004, loops: 20}
"""

SWEEP = """name: bench
seed: 1
max_s: {max_s}
scenarios: [task.yaml]
seeds: 4
overrides:
  - {{key: ambient.temp_c, name: ambient_c, values: [15, 35]}}
"""


def _pack(tmp: Path, seconds: float) -> None:
    import pyarrow.fs

    from hil_server.sim.output import RunWriter
    from hil_server.sim.run import build_engine

    path = tmp / "pack.yaml"
    path.write_text(PACK, encoding="utf-8")
    cpu = min(os.sched_getaffinity(0))
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        engine_x = run_x = 0.0
        engine_cpu = run_cpu = float("inf")
        for _ in range(2):  # alternated, best of two: a shared machine's load comes and goes
            engine, _, _ = build_engine(path)
            start, cpu0 = time.perf_counter(), time.process_time()
            while engine.time_s < seconds:
                engine.step()
            engine_x = max(engine_x, engine.time_s / (time.perf_counter() - start))
            engine_cpu = min(engine_cpu, (time.process_time() - cpu0) / engine.time_s)

            engine, scenario, _ = build_engine(path)
            out = tmp / "pack_out"
            start, cpu0 = time.perf_counter(), time.process_time()
            fs = pyarrow.fs.LocalFileSystem()
            writer = RunWriter(fs, str(out), "parquet", "rashid2023", scenario.eis.frequencies_hz)
            while engine.time_s < seconds:
                writer.add(engine.step())
            writer.close()
            run_x = max(run_x, engine.time_s / (time.perf_counter() - start))
            run_cpu = min(run_cpu, (time.process_time() - cpu0) / engine.time_s)
    finally:
        os.sched_setaffinity(0, everything)
    size = (out / "spectra.parquet").stat().st_size
    print(f"1000 cells, spectrum per cell per step, one core (CPU {cpu}), {seconds:g} s simulated:")
    print(f"  engine alone          {engine_x:7.2f} x real time")
    print(
        f"  eis-hil run (writer)  {run_x:7.2f} x real time   "
        f"(target >= 10; ratio to the engine {run_x / engine_x:.2f}, was 1.07 / 19.5 = 0.05)"
    )
    print(
        f"  CPU s per simulated s engine {engine_cpu:.3f}, run {run_cpu:.3f} (writer thread included): "
        f"run/engine cost {run_cpu / engine_cpu:.2f}; the wall figures above depend on the machine's load, "
        f"these do not. Engine at 19.5x (issue, idle machine) -> run at {19.5 * engine_cpu / run_cpu:.1f}x"
    )
    print(
        f"  spectra on disk       {size / writer.points:7.2f} bytes per spectrum point "
        f"({writer.points} points, {size / 1e6:.1f} MB; target <= 4, was 9.7)"
    )


def _hashes(out: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(out.rglob("*.parquet")):
        if "_staging" not in p.parts:
            digest.update(str(p.relative_to(out)).encode())
            digest.update(p.read_bytes())
    return digest.hexdigest()


def _sweep(tmp: Path, max_s: float, executor: str, workers: int) -> tuple[float, float, str, list[float]]:
    """(wall of the tasks, wall including the executor's start, hash of the dataset, task walls)."""
    from hil_server.model.store import BUNDLED_MODEL_DIR, read_metadata
    from hil_server.sweep.dataset import Dataset
    from hil_server.sweep.executors import Executor, LocalExecutor, RayExecutor
    from hil_server.sweep.spec import load_sweep
    from hil_server.sweep.tasks import expand

    (tmp / "sweep.yaml").write_text(SWEEP.format(max_s=max_s), encoding="utf-8")
    sweep = load_sweep(tmp / "sweep.yaml")
    tasks = expand(sweep, BUNDLED_MODEL_DIR, read_metadata(BUNDLED_MODEL_DIR).model_sha256)
    out = tmp / f"sweep_{executor}_{workers}"
    dataset = Dataset(str(out), {"sweep": sweep.name})
    dataset.prepare()
    started = time.perf_counter()
    ex: Executor = RayExecutor(workers, None) if executor == "ray" else LocalExecutor(workers)
    running = time.perf_counter()
    walls = []
    for event in ex.run([(t, dataset.staging(t)) for t in tasks]):
        if event is not None:
            task, result = event
            assert result["status"] == "ok", result
            dataset.commit(task, result)
            walls.append(float(result["wall_s"]))
    end = time.perf_counter()
    dataset.cleanup()
    return end - running, end - started, _hashes(out), walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack-s", type=float, default=20.0, help="simulated seconds of the 1000-cell case")
    parser.add_argument("--task-wall-s", type=float, default=10.0, help="wall seconds of one sweep task")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    parser.add_argument("--skip-pack", action="store_true", help="only the sweep part")
    parser.add_argument("--skip-sweep", action="store_true", help="only the 1000-cell part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if not args.skip_pack:
            _pack(tmp, args.pack_s)
        if args.skip_sweep:
            return
        (tmp / "task.yaml").write_text(TASK, encoding="utf-8")
        probe_s = 120.0
        (tmp / "probe").mkdir()
        (tmp / "probe" / "task.yaml").write_text(TASK, encoding="utf-8")
        _, _, _, walls = _sweep(tmp / "probe", probe_s, "local", 2)
        max_s = round(probe_s * args.task_wall_s / (sum(walls) / len(walls)) * 1.05)
        print(f"sweep: 8 tasks of {max_s} simulated s (24 cells, spectrum each second):")
        one, _, h1, walls = _sweep(tmp, max_s, "local", 1)
        print(f"  local, 1 worker       {one:7.1f} s   (tasks {min(walls):.1f}..{max(walls):.1f} s each)")
        two, _, h2, _ = _sweep(tmp, max_s, "local", 2)
        print(f"  local, 2 workers      {two:7.1f} s   speed-up {one / two:.2f} (target >= 1.8)")
        results: dict[str, Any] = {"1 worker": h1, "2 workers": h2}
        if not args.no_ray:
            ray_wall, ray_total, h3, _ = _sweep(tmp, max_s, "ray", 2)
            print(
                f"  Ray, 2 CPUs           {ray_wall:7.1f} s   ({ray_total:.1f} s with Ray's start): "
                f"{ray_wall / two:.2f} x local (target within 1.10), {ray_total / two:.2f} x with the start"
            )
            print(f"  Ray cost per task     {ray_wall * 2 / 8:7.2f} CPU s for {max_s} simulated s")
            results["Ray"] = h3
        same = len(set(results.values())) == 1
        print(f"  byte-identical datasets ({', '.join(results)}): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
