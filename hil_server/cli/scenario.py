"""``eis-hil run`` and ``eis-hil validate``: scenarios without a network."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import structlog

from hil_server.cli._common import StatusLine, add_model_arg, model_dir, scenario_command, write

log = structlog.get_logger(__name__)


def cmd_run(args: argparse.Namespace) -> int:
    from hil_server.model.interrupt import StopOnSignal
    from hil_server.sim.run import DEFAULT_MAX_S, SweepStop, run_scenario, run_sweep, speed_text

    started = time.monotonic()
    fmt = "csv" if args.csv else "parquet"
    max_s = args.max_s if args.max_s is not None else DEFAULT_MAX_S

    # A status line redrawn in place on a terminal (stderr), a log line every 10 s otherwise.
    status = StatusLine()

    def progress(simulated_s: float, steps: int) -> None:
        speed = speed_text(simulated_s, time.monotonic() - started)
        of = f" of {max_s:g}" if args.max_s is not None else ""
        if not status.show(f"running: {simulated_s:.0f}{of} s simulated, {steps} steps, {speed}"):
            log.info("running", simulated_s=round(simulated_s, 1), steps=steps, speed=speed)

    def sweep_progress(done: int, total: int) -> None:
        wall_s = round(time.monotonic() - started, 1)
        if not status.show(f"sweep: {done} of {total} runs done, {wall_s} s"):
            log.info("sweep", runs_done=done, of=total, wall_s=wall_s)

    sweep_stop = SweepStop()
    # SIGINT/SIGTERM: every run (each worker of a sweep) ends after its current step with valid files
    guard = StopOnSignal(on_signal=sweep_stop.set)

    def compute() -> list[dict[str, Any]]:
        if args.seeds:
            return run_sweep(
                Path(args.file),
                Path(args.out),
                args.seeds,
                model_dir=model_dir(args),
                max_s=max_s,
                fmt=fmt,
                progress=sweep_progress,
                stop=sweep_stop,
            )
        return [
            run_scenario(
                Path(args.file),
                Path(args.out),
                model_dir=model_dir(args),
                seed=args.seed,
                max_s=max_s,
                fmt=fmt,
                progress=progress,
                stop=guard.requested,
            )
        ]

    def body() -> int:
        try:
            with guard:
                results = compute()
        finally:
            status.close()
        for r in results:
            write(
                f"{r['scenario_name']} seed {r['seed']}: {r['simulated_s']:.1f} s simulated "
                f"in {r['wall_s']:.1f} s "
                f"({speed_text(r['simulated_s'], r['wall_s'])}), {r['rows']['states']} state rows, "
                f"{r['spectrum_points']} spectrum points, {r['rows']['faults']} fault events"
                f"{_ending(r)}\n"
            )
        if guard.signal is not None:
            write(
                f"interrupted ({guard.signal.name}): the files in {args.out} hold every step simulated so "
                'far, run.json says "interrupted": true\n'
            )
            return 128 + int(guard.signal)
        write(f"written to {args.out}\n")
        return 0

    return scenario_command("run", body)


def _ending(run: dict[str, Any]) -> str:
    if run.get("interrupted"):
        return " (interrupted)"
    return "" if run["finished"] else " (stopped at --max-s)"


def cmd_validate(args: argparse.Namespace) -> int:
    from hil_server.scenario import ScenarioError, load_scenario, validate_files
    from hil_server.sim.run import scenario_limit_issues

    issues = validate_files(args.files)
    for file in sorted(set(args.files) - {issue.file for issue in issues}):
        try:  # the file itself is valid: are its values within the cell's limits?
            issues += scenario_limit_issues(load_scenario(file))
        except ScenarioError as exc:
            issues += exc.errors
    for issue in issues:
        write(f"{issue}\n")
    write(f"{len(args.files)} file(s) checked, {len(issues)} error(s)\n")
    return 1 if issues else 0


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    add_model_arg(run)
    run.add_argument("file", help="scenario YAML")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--seed", type=int, help="seed (default: the scenario's)")
    run.add_argument(
        "--seeds", type=int, nargs="+", help="a sweep: one run per seed, in parallel on all cores"
    )
    run.add_argument("--max-s", type=float, help="stop after this many simulated seconds (default 7 days)")
    run.add_argument("--csv", action="store_true", help="CSV files instead of Parquet")


def add_validate_arguments(val: argparse.ArgumentParser) -> None:
    val.add_argument("files", nargs="+", metavar="FILE")


GROUP = {"run": (add_run_arguments, cmd_run), "validate": (add_validate_arguments, cmd_validate)}
