"""``eis-hil run``: a scenario as fast as possible, without a network, into files.

Output directory (one per run; a seed sweep writes ``seed=<n>/`` partitions of one dataset):

    states.parquet    one row per step and cell: time_s, step, cell, reported voltage_v, current_a, temp_c,
                      soc, soh, flags, and the ground truth true_voltage_v ... true_soh
    spectra.parquet   one row per spectrum: time_s, cell, spectrum_id, soc, temp_c, soh, current_a, flags
                      and its points as float32 lists in grid order: z_re_ohm, z_im_ohm, true_z_re_ohm and
                      true_z_im_ohm (null where equal to the reported spectrum), dropped (null if none was);
                      the schema is in scenarios/sweeps/README.md
    frequencies.parquet  the grid once: freq_index (position in those lists), freq_hz
    faults.parquet    fault starts and ends: time_s, fault_id, kind, phase, cells, severity
    run.json          scenario, seed, model, simulated seconds, counts, wall time

``--csv`` writes ``.csv`` instead of ``.parquet``, spectra in the generic EIS CSV schema (spectrum_id, soc,
temp_c, soh, freq_hz, z_re_ohm, z_im_ohm, cell_id, source, plus time_s, cell, dropped and the true impedance):
feed it straight back to ``eis-hil calibrate`` or ``train --extra``. Rows are written in batches by
``sim.output.RunWriter``, so memory stays bounded however long the scenario runs.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from ..model.profiles import resolve
from ..model.runtime import NumpyPinn
from ..model.store import BUNDLED_MODEL_DIR, ModelLoadError, ModelMetadata, read_metadata
from ..scenario import Issue, Scenario, ScenarioError, load_scenario, scenario_hash
from .engine import Engine
from .limits import limit_issues
from .output import BATCH_STEPS, RunWriter, filesystem
from .profiles import PROFILES, OperatingRange
from .source import PinnCircuitSource

log = structlog.get_logger(__name__)

DEFAULT_MAX_S = 7 * 24 * 3600.0
"""A scenario that never finishes (a condition that never holds) stops here unless told otherwise."""


def build_engine(
    scenario_path: Path,
    model_dir: Path = BUNDLED_MODEL_DIR,
    seed: int | None = None,
    scenario: Scenario | None = None,
) -> tuple[Engine, Scenario, ModelMetadata]:
    """The engine for a scenario file (or the ``scenario`` already loaded from it) with the PINN (numpy
    runtime, no TensorFlow) as its circuit source."""
    scenario = scenario or load_scenario(scenario_path)
    meta = read_metadata(model_dir)
    profile = resolve(scenario.cells.profile, meta)
    if profile.base in PROFILES:  # else Engine says the profile has no cell constants
        issues = limit_issues(scenario, PROFILES[profile.base])
        if issues:
            raise ScenarioError(issues)
    runtime = NumpyPinn.load(model_dir)
    latents = (
        {profile.name: (profile.base, profile.latent, profile.aging)} if profile.latent is not None else None
    )
    ranges = {
        name: OperatingRange(tuple(r["soc"]), tuple(r["temp_c"]), tuple(r["soh"]))  # type: ignore[arg-type]
        for name, r in meta.input_ranges.items()
    }
    if profile.latent is not None:
        ranges[profile.name] = ranges[profile.base]
    source = PinnCircuitSource(runtime, input_ranges=ranges, latents=latents)
    return Engine(scenario, source, seed, base_profile=profile.base), scenario, meta


def scenario_limit_issues(scenario: Scenario, model_dir: Path = BUNDLED_MODEL_DIR) -> list[Issue]:
    """The values of ``scenario`` beyond its cell's limits (``limits.limit_issues``); a calibrated profile
    is checked against its base profile's cell. Empty when the profile is unknown (loading says so)."""
    try:
        base = resolve(scenario.cells.profile, read_metadata(model_dir)).base
    except ModelLoadError:
        return []
    return limit_issues(scenario, PROFILES[base]) if base in PROFILES else []


def run_scenario(
    scenario_path: Path,
    out_dir: Path,
    *,
    model_dir: Path = BUNDLED_MODEL_DIR,
    seed: int | None = None,
    max_s: float = DEFAULT_MAX_S,
    fmt: str = "parquet",
    progress: Callable[[float, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run one scenario to its end (or ``max_s`` simulated seconds, or until ``stop()``, asked after each
    step, is true) and write the files. Returns run.json, whose ``interrupted`` says whether ``stop`` ended
    it: the files then hold every step simulated so far, and are valid."""
    started = time.monotonic()
    engine, scenario, meta = build_engine(scenario_path, model_dir, seed)
    writer = RunWriter(
        *filesystem(str(out_dir)),
        fmt,
        scenario.cells.profile,
        scenario.eis.frequencies_hz,
    )
    log.info("run started", scenario=scenario.name, seed=engine.seed, out=str(out_dir))
    steps = 0
    interrupted = False
    try:
        while not engine.finished and engine.time_s < max_s:
            if stop is not None and stop():
                interrupted = True
                break
            writer.add(engine.step())
            steps += 1
            if progress is not None and steps % BATCH_STEPS == 0:
                progress(engine.time_s, steps)
    finally:
        rows = writer.close()
    summary = {
        "scenario": str(scenario_path),
        "scenario_name": scenario.name,
        "scenario_sha256": scenario_hash(scenario_path).hex(),
        "seed": engine.seed,
        "model_sha256": meta.model_sha256,
        "profile": scenario.cells.profile,
        "cells": scenario.cells.count,
        "simulated_s": engine.time_s,
        "finished": engine.finished,
        "interrupted": interrupted,
        "steps": steps,
        "rows": rows,
        "spectrum_points": writer.points,
        "format": fmt,
        "wall_s": round(time.monotonic() - started, 3),
    }
    (out_dir / "run.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if interrupted:
        log.warning("run interrupted: the files hold the steps so far", simulated_s=engine.time_s)
    elif not engine.finished:
        log.warning("scenario stopped before its end", simulated_s=engine.time_s, max_s=max_s)
    return summary


class _WorkerStop:
    """In a sweep's worker process: the sweep's stop event (a multiprocessing.Event the parent sets) and
    whether the worker itself was sent SIGTERM."""

    event: Any = None
    signalled = False

    @classmethod
    def requested(cls) -> bool:
        return cls.signalled or (cls.event is not None and cls.event.is_set())


def _on_term(_signum: int, _frame: object) -> None:
    _WorkerStop.signalled = True


def _worker_init(event: Any) -> None:
    """A sweep worker stops its run when the parent sets ``event`` (the parent got SIGINT or SIGTERM), or
    when it is sent SIGTERM itself; Ctrl-C on a terminal reaches the whole process group, and the parent
    alone decides (the worker ignores SIGINT)."""
    _WorkerStop.event = event
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)


def _run_one(args: tuple[Path, Path, Path, int, float, str]) -> dict[str, Any]:
    scenario_path, out_dir, model_dir, seed, max_s, fmt = args
    return run_scenario(
        scenario_path,
        out_dir,
        model_dir=model_dir,
        seed=seed,
        max_s=max_s,
        fmt=fmt,
        stop=_WorkerStop.requested,
    )


class SweepStop:
    """Stops a running ``run_sweep`` from the parent process (a signal handler may call ``set``): every
    worker ends its run after its current step, writes valid files marked ``interrupted``, and the runs not
    started yet are written empty, marked the same."""

    def __init__(self) -> None:
        self.event = multiprocessing.get_context().Event()

    def set(self) -> None:
        self.event.set()


def run_sweep(
    scenario_path: Path,
    out_dir: Path,
    seeds: list[int],
    *,
    model_dir: Path = BUNDLED_MODEL_DIR,
    max_s: float = DEFAULT_MAX_S,
    fmt: str = "parquet",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop: SweepStop | None = None,
) -> list[dict[str, Any]]:
    """One scenario over several seeds, in parallel on all cores: a dataset partitioned as ``seed=<n>/``.
    ``stop``: see SweepStop."""
    jobs = [(scenario_path, out_dir / f"seed={s}", model_dir, s, max_s, fmt) for s in seeds]
    n_workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    stop = stop or SweepStop()
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=n_workers, initializer=_worker_init, initargs=(stop.event,)) as pool:
        for done, result in enumerate(pool.map(_run_one, jobs), 1):
            results.append(result)
            if progress is not None:
                progress(done, len(jobs))
    (out_dir / "sweep.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def speed_text(simulated_s: float, wall_s: float) -> str:
    return f"{simulated_s / wall_s:.0f}x real time" if wall_s > 0 and math.isfinite(simulated_s) else "-"
