"""``eis-hil run``: a scenario as fast as possible, without a network, into files.

Output directory (one per run; a seed sweep writes ``seed=<n>/`` partitions of one dataset):

    states.parquet    one row per step and cell: time_s, step, cell, reported voltage_v, current_a, temp_c,
                      soc, soh, flags, and the ground truth true_voltage_v ... true_soh
    spectra.parquet   one row per spectrum point, in the generic EIS CSV schema (spectrum_id, soc, temp_c,
                      soh, freq_hz, z_re_ohm, z_im_ohm, cell_id, source) plus time_s, cell, dropped and the
                      true impedance: feed it straight back to ``eis-hil calibrate`` or ``train --extra``
    faults.parquet    fault starts and ends: time_s, fault_id, kind, phase, cells, severity
    run.json          scenario, seed, model, simulated seconds, counts, wall time

``--csv`` writes ``.csv`` instead of ``.parquet``. Rows are written in batches, so memory stays bounded
however long the scenario runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from ..eis_data import GENERIC_CSV_COLUMNS
from ..model.profiles import resolve
from ..model.runtime import NumpyPinn
from ..model.store import BUNDLED_MODEL_DIR, ModelMetadata, read_metadata
from ..scenario import Scenario, load_scenario, scenario_hash
from .engine import Engine
from .output import StepOutput
from .profiles import OperatingRange
from .source import PinnCircuitSource

log = structlog.get_logger(__name__)

BATCH_STEPS = 2000
"""Steps buffered before a batch of rows is written."""
DEFAULT_MAX_S = 7 * 24 * 3600.0
"""A scenario that never finishes (a condition that never holds) stops here unless told otherwise."""


class TableWriter:
    """Appends column batches to one Parquet or CSV file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.rows = 0
        self._parquet: Any = None
        self._csv: Any = None
        self._handle: Any = None

    def write(self, columns: dict[str, npt.ArrayLike]) -> None:
        arrays = {k: np.asarray(v) for k, v in columns.items()}
        n = len(next(iter(arrays.values()))) if arrays else 0
        if n == 0:
            return
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({k: pa.array(v) for k, v in arrays.items()})
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self._parquet.write_table(table)
        else:
            if self._csv is None:
                self._handle = self.path.open("w", newline="", encoding="utf-8")
                self._csv = csv.writer(self._handle, lineterminator="\n")
                self._csv.writerow(list(arrays))
            cols = [a.tolist() for a in arrays.values()]
            self._csv.writerows(zip(*cols, strict=True))
        self.rows += n

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._handle is not None:
            self._handle.close()


def _state_columns(outputs: list[StepOutput]) -> dict[str, npt.ArrayLike]:
    n = outputs[0].reported.voltage_v.size
    cols: dict[str, npt.ArrayLike] = {
        "time_s": np.repeat([o.time_us / 1e6 for o in outputs], n),
        "step": np.repeat([o.step for o in outputs], n),
        "cell": np.tile(np.arange(n), len(outputs)),
    }
    for prefix, attr in (("", "reported"), ("true_", "true")):
        for name in ("voltage_v", "current_a", "temp_c", "soc", "soh"):
            cols[prefix + name] = np.concatenate([getattr(getattr(o, attr), name) for o in outputs])
    cols["flags"] = np.concatenate([o.reported.flags for o in outputs]).astype(np.int32)
    return cols


def _spectrum_columns(outputs: list[StepOutput], profile: str) -> dict[str, npt.ArrayLike]:
    parts: dict[str, list[npt.NDArray[Any]]] = {
        k: [] for k in (*GENERIC_CSV_COLUMNS, "time_s", "cell", "dropped", "true_z_re_ohm", "true_z_im_ohm")
    }
    for o in outputs:
        for sp in o.spectra:
            n_cells, n_f = sp.z_ohm.shape

            def per_cell(values: npt.ArrayLike, n_f: int = n_f) -> npt.NDArray[Any]:
                return np.repeat(np.asarray(values), n_f)

            # Spectrum ids are per cell on the wire; in a file they must be unique: cell * 2**32 + id.
            parts["spectrum_id"].append(per_cell(sp.cells.astype(np.int64) * 2**32 + sp.spectrum_ids))
            parts["soc"].append(per_cell(sp.soc))
            parts["temp_c"].append(per_cell(sp.temp_c))
            parts["soh"].append(per_cell(sp.soh))
            parts["freq_hz"].append(np.tile(sp.freq_hz, n_cells))
            parts["z_re_ohm"].append(sp.z_ohm.real.ravel())
            parts["z_im_ohm"].append(sp.z_ohm.imag.ravel())
            parts["cell_id"].append(per_cell([f"cell{c:03d}" for c in sp.cells]))
            parts["source"].append(np.full(n_cells * n_f, f"eis-hil:{profile}"))
            parts["time_s"].append(np.full(n_cells * n_f, sp.time_us / 1e6))
            parts["cell"].append(per_cell(sp.cells))
            parts["dropped"].append(sp.dropped.ravel())
            parts["true_z_re_ohm"].append(sp.z_true_ohm.real.ravel())
            parts["true_z_im_ohm"].append(sp.z_true_ohm.imag.ravel())
    if not parts["freq_hz"]:
        return {}
    return {k: np.concatenate(v) for k, v in parts.items()}


def _fault_columns(outputs: list[StepOutput]) -> dict[str, npt.ArrayLike]:
    events = [e for o in outputs for e in o.fault_events]
    if not events:
        return {}
    return {
        "time_s": np.array([e.time_us / 1e6 for e in events]),
        "fault_id": np.array([e.fault_id for e in events]),
        "kind": np.array([e.kind.name.lower() for e in events]),
        "phase": np.array([e.phase.name.lower() for e in events]),
        "cells": np.array([" ".join(str(c) for c in e.cells) for e in events]),
        "severity": np.array([e.severity for e in events]),
    }


def build_engine(
    scenario_path: Path, model_dir: Path = BUNDLED_MODEL_DIR, seed: int | None = None
) -> tuple[Engine, Scenario, ModelMetadata]:
    """The engine for a scenario file with the PINN (numpy runtime, no TensorFlow) as its circuit source."""
    scenario = load_scenario(scenario_path)
    meta = read_metadata(model_dir)
    runtime = NumpyPinn.load(model_dir)
    profile = resolve(scenario.cells.profile, meta)
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


def run_scenario(
    scenario_path: Path,
    out_dir: Path,
    *,
    model_dir: Path = BUNDLED_MODEL_DIR,
    seed: int | None = None,
    max_s: float = DEFAULT_MAX_S,
    fmt: str = "parquet",
    progress: Callable[[float, int], None] | None = None,
) -> dict[str, Any]:
    """Run one scenario to its end (or ``max_s`` simulated seconds) and write the files. Returns run.json."""
    started = time.monotonic()
    engine, scenario, meta = build_engine(scenario_path, model_dir, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if fmt == "parquet" else "csv"
    writers = {name: TableWriter(out_dir / f"{name}.{ext}", fmt) for name in ("states", "spectra", "faults")}
    batch: list[StepOutput] = []
    steps = 0
    try:
        while not engine.finished and engine.time_s < max_s:
            batch.append(engine.step())
            steps += 1
            if len(batch) >= BATCH_STEPS:
                _flush(batch, writers, scenario.cells.profile)
                batch = []
                if progress is not None:
                    progress(engine.time_s, steps)
        _flush(batch, writers, scenario.cells.profile)
    finally:
        for w in writers.values():
            w.close()
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
        "steps": steps,
        "rows": {name: w.rows for name, w in writers.items()},
        "format": fmt,
        "wall_s": round(time.monotonic() - started, 3),
    }
    (out_dir / "run.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if not engine.finished:
        log.warning("scenario stopped before its end", simulated_s=engine.time_s, max_s=max_s)
    return summary


def _flush(batch: list[StepOutput], writers: dict[str, TableWriter], profile: str) -> None:
    if not batch:
        return
    writers["states"].write(_state_columns(batch))
    writers["spectra"].write(_spectrum_columns(batch, profile))
    writers["faults"].write(_fault_columns(batch))


def _run_one(args: tuple[Path, Path, Path, int, float, str]) -> dict[str, Any]:
    scenario_path, out_dir, model_dir, seed, max_s, fmt = args
    return run_scenario(scenario_path, out_dir, model_dir=model_dir, seed=seed, max_s=max_s, fmt=fmt)


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
) -> list[dict[str, Any]]:
    """One scenario over several seeds, in parallel on all cores: a dataset partitioned as ``seed=<n>/``."""
    jobs = [(scenario_path, out_dir / f"seed={s}", model_dir, s, max_s, fmt) for s in seeds]
    n_workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        for done, result in enumerate(pool.map(_run_one, jobs), 1):
            results.append(result)
            if progress is not None:
                progress(done, len(jobs))
    (out_dir / "sweep.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def speed_text(simulated_s: float, wall_s: float) -> str:
    return f"{simulated_s / wall_s:.0f}x real time" if wall_s > 0 and math.isfinite(simulated_s) else "-"
