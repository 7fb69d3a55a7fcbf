"""The tasks of a sweep (one point of the product each) and running one of them, in any worker process.

A task carries everything it needs as plain data (paths, override values as written, seed), so the local
process pool and Ray run the same function on it; its result depends on the task alone, never on the worker
or the order, and its files are byte-identical wherever it runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.profiles import profiles_dir
from ..sim.output import SCHEMA_VERSION
from ..sim.run import DEFAULT_MAX_S
from .spec import KeyPath, Sweep, Value, load_with

SCENARIO_KEY: KeyPath = ("cells", "profile")


@dataclass(frozen=True)
class Task:
    index: int
    partition: tuple[tuple[str, str], ...]
    """(column, value) from scenario to seed: the hive partition ``scenario=.../profile=.../seed=...``."""
    scenario_file: str
    scenario_name: str
    scenario_sha256: str
    profile: str
    seed: int
    edits: tuple[tuple[KeyPath, Value], ...]
    """Profile and overrides, applied to the scenario's node tree."""
    sweep_file: str
    max_s: float
    model_dir: str
    model_sha256: str
    sha256: str
    """Of everything the result depends on: resume skips a task whose finished entry has the same."""

    @property
    def id(self) -> str:
        return "/".join(f"{k}={v}" for k, v in self.partition)

    def coordinates(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario_name,
            "profile": self.profile,
            "seed": self.seed,
            "overrides": {".".join(str(p) for p in path): v.python for path, v in self.edits[1:]},
        }


def _profile_sha256(name: str) -> str | None:
    path = profiles_dir() / f"{name}.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def expand(sweep: Sweep, model_dir: Path, model_sha256: str) -> list[Task]:
    """The cross product, in a fixed order: scenario, profile, overrides (in file order), seed."""
    tasks: list[Task] = []
    file = str(sweep.file)
    max_s = sweep.max_s if sweep.max_s is not None else DEFAULT_MAX_S
    for scenario_file in sweep.scenarios:
        scenario, _, _ = load_with(scenario_file, [])
        assert scenario is not None  # load_sweep checked every scenario
        digest = scenario.sha256.hex()
        own = Value("tag:yaml.org,2002:str", scenario.cells.profile, 0, scenario.cells.profile)
        for profile in sweep.profiles or (own,):
            for combo in itertools.product(*(o.values for o in sweep.overrides)):
                edits = (
                    (SCENARIO_KEY, profile),
                    *((o.path, v) for o, v in zip(sweep.overrides, combo, strict=True)),
                )
                for seed in sweep.seeds:
                    partition = (
                        ("scenario", scenario.name),
                        ("profile", str(profile.python)),
                        *((o.column, v.label) for o, v in zip(sweep.overrides, combo, strict=True)),
                        ("seed", str(seed)),
                    )
                    inputs = {
                        "scenario_sha256": digest,
                        "edits": [[list(p), v.tag, v.text] for p, v in edits],
                        "profile_sha256": _profile_sha256(str(profile.python)),
                        "seed": seed,
                        "max_s": max_s,
                        "model_sha256": model_sha256,
                        "schema": SCHEMA_VERSION,
                    }
                    tasks.append(
                        Task(
                            index=len(tasks),
                            partition=partition,
                            scenario_file=str(scenario_file),
                            scenario_name=scenario.name,
                            scenario_sha256=digest,
                            profile=str(profile.python),
                            seed=seed,
                            edits=edits,
                            sweep_file=file,
                            max_s=max_s,
                            model_dir=str(model_dir),
                            model_sha256=model_sha256,
                            sha256=hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(),
                        )
                    )
    return tasks


def run_task(task: Task, staging: str) -> dict[str, Any]:
    """Run one task into ``staging`` (a URI or path: a directory of states, spectra and faults .parquet).
    Never raises for a problem of the task itself: the result says ``failed`` and why."""
    from ..sim.output import RunWriter, filesystem
    from ..sim.run import build_engine

    started = time.monotonic()
    result: dict[str, Any] = {"id": task.id, "sha256": task.sha256}
    try:
        scenario, issues, misfit = load_with(
            Path(task.scenario_file), [(path, value.node(task.sweep_file)) for path, value in task.edits]
        )
        if misfit is not None or issues or scenario is None:
            raise ValueError("; ".join([*([misfit] if misfit else []), *(str(i) for i in issues)]))
        engine, scenario, _ = build_engine(
            Path(task.scenario_file), Path(task.model_dir), task.seed, scenario=scenario
        )
        fs, directory = filesystem(staging)
        writer = RunWriter(fs, directory, "parquet", scenario.cells.profile, scenario.eis.frequencies_hz)
        steps = 0
        try:
            while not engine.finished and engine.time_s < task.max_s:
                writer.add(engine.step())
                steps += 1
        finally:
            rows = writer.close()
        result.update(
            status="ok",
            rows=rows,
            spectrum_points=writer.points,
            simulated_s=engine.time_s,
            steps=steps,
            finished=engine.finished,
        )
    except Exception as exc:
        result.update(
            status="failed", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=6)
        )
    result["wall_s"] = round(time.monotonic() - started, 3)
    return result
