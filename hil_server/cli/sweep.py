"""``eis-hil sweep SWEEP.yaml --out DIR``: every task of a sweep file into one partitioned Parquet dataset."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from hil_server.cli._common import StatusLine, add_model_arg, model_dir, write

log = structlog.get_logger(__name__)


class StopRequestedError(BaseException):
    """SIGINT or SIGTERM arrived: a BaseException, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="sweep YAML (scenarios/sweeps/README.md)")
    parser.add_argument("--out", required=True, help="output directory or URI (s3://bucket/prefix)")
    parser.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="where tasks run (default local)"
    )
    parser.add_argument("--workers", type=int, help="worker processes or local Ray CPUs (default: all cores)")
    parser.add_argument(
        "--address", help="Ray cluster to use (auto, ray://HOST:PORT); default: a local Ray (--executor ray)"
    )
    add_model_arg(parser)
    parser.add_argument("--dry-run", action="store_true", help="check the sweep and list its tasks, run none")
    parser.add_argument("--debug", action="store_true", help="tracebacks of failed tasks in the log")


def run(args: argparse.Namespace) -> int:
    from hil_server.model.profiles import resolve
    from hil_server.model.store import ModelLoadError, read_metadata
    from hil_server.sweep.spec import SweepError, check_profiles, load_sweep

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if not 1 <= workers <= 1024:
        log.error("sweep", error=f"--workers must be in 1..1024, got {workers}")
        return 2
    if args.address is not None and args.executor != "ray":
        log.error("sweep", error="--address needs --executor ray")
        return 2
    if args.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            log.error("sweep", error="--executor ray needs Ray: pip install 'eis-hil[sweep]'")
            return 2
    try:
        sweep = load_sweep(Path(args.file))
        meta = read_metadata(model_dir(args))
        issues = check_profiles(sweep, lambda name: resolve(name, meta))
        if issues:
            raise SweepError(issues)
    except SweepError as exc:
        for issue in exc.errors:
            sys.stderr.write(f"eis-hil sweep: {issue}\n")
        return 2
    except ModelLoadError as exc:
        log.error("sweep", error=str(exc))
        return 2
    from hil_server.sweep.dataset import Dataset
    from hil_server.sweep.tasks import expand

    tasks = expand(sweep, model_dir(args), meta.model_sha256)
    header = {
        "sweep": sweep.name,
        "sweep_file": str(sweep.file),
        "sweep_sha256": sweep.sha256,
        "model_sha256": meta.model_sha256,
        "partitioning": [c for c, _ in tasks[0].partition],
    }
    if args.dry_run:
        for task in tasks:
            write(f"{task.id}\n")
        write(f"{len(tasks)} tasks\n")
        return 0
    try:
        dataset = Dataset(args.out, header)
        dataset.prepare()
    except (OSError, ValueError) as exc:
        log.error("sweep", error=f"cannot write to {args.out}: {exc}")
        return 2
    todo = [t for t in tasks if not dataset.finished(t)]
    skipped = len(tasks) - len(todo)
    if skipped:
        log.info("resuming", finished_before=skipped, to_run=len(todo))
    with _stop_on_signals() as stop:
        try:
            failed = _execute(args, dataset, todo, workers, skipped, len(tasks), stop)
        except StopRequestedError as exc:
            dataset.cleanup()
            dataset.write_manifest()
            done = sum(e["status"] == "ok" for e in dataset.entries.values())
            log.warning("sweep stopped", signal=str(exc), tasks_finished=done, of=len(tasks))
            write(f"stopped by {exc}: {done} of {len(tasks)} tasks finished, rerun to resume\n")
            return 128 + exc.signum
    dataset.cleanup()
    dataset.write_manifest()
    write(
        f"{sweep.name}: {len(tasks) - failed} of {len(tasks)} tasks finished"
        f"{f' ({skipped} before)' if skipped else ''}, {failed} failed; dataset in {args.out}\n"
    )
    return 1 if failed else 0


class _StopFlag:
    """SIGINT and SIGTERM set it and the sweep loop checks it between events (at least once a second).
    Raising from the handler instead would unwind through whatever call is waiting: Ray's ``wait`` turns
    that into a SystemError."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self.handler)

    def check(self) -> None:
        if self.signum is not None:
            raise StopRequestedError(self.signum)


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    stop = _StopFlag()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop.install()
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _execute(
    args: argparse.Namespace,
    dataset: Any,
    todo: list[Any],
    workers: int,
    skipped: int,
    total: int,
    stop: _StopFlag,
) -> int:
    from hil_server.sweep.executors import Executor, LocalExecutor, RayExecutor

    executor: Executor = (
        RayExecutor(workers, args.address) if args.executor == "ray" else LocalExecutor(workers)
    )
    stop.install()  # again: starting Ray installs handlers of its own
    status = StatusLine()
    started = time.monotonic()
    done = failed = 0
    simulated = 0.0

    def progress() -> None:
        elapsed = time.monotonic() - started
        rate = simulated / elapsed if elapsed > 0 else 0.0
        left = len(todo) - done - failed
        eta = elapsed / (done + failed) * left if done + failed else None
        eta_text = "-" if eta is None else f"{eta:.0f} s"
        text = (
            f"sweep: {skipped + done}/{total} done, {failed} failed, {executor.running} running, "
            f"{rate:.0f} simulated s/s, ETA {eta_text}"
        )
        if not status.show(text):
            log.info(
                "sweep",
                done=skipped + done,
                of=total,
                failed=failed,
                running=executor.running,
                simulated_s_per_s=round(rate, 1),
                eta_s=None if eta is None else round(eta),
            )

    try:
        stop.check()
        for event in executor.run([(t, dataset.staging(t)) for t in todo]):
            if event is not None:
                task, result = event
                dataset.commit(task, result)  # a partition moves in, then its manifest entry follows
                if result["status"] == "ok":
                    done += 1
                    simulated += float(result["simulated_s"])
                else:
                    failed += 1
                    log.error("task failed", task=task.id, error=result.get("error"))
                    if args.debug and result.get("trace"):
                        sys.stderr.write(str(result["trace"]))
            progress()
            stop.check()
    except BaseException:
        executor.stop()
        raise
    finally:
        status.close()
    return failed
