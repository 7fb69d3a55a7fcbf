"""Where tasks run: ``local`` (worker processes on this machine) or ``ray`` (a Ray cluster, or a local one).

Both take (task, staging) jobs and yield (task, result) as tasks end, or None about once a second so the
caller can redraw its progress; ``stop`` ends every worker at once. A worker that dies (killed, out of
memory) fails its task with the reason, and the others go on.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import structlog

from .tasks import Task, run_task

log = structlog.get_logger(__name__)

Job = tuple[Task, str]
Event = tuple[Task, dict[str, Any]] | None


class Executor(Protocol):
    running: int

    def run(self, jobs: list[Job]) -> Iterator[Event]: ...

    def stop(self) -> None: ...


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this worker if the sweep process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker(conn: multiprocessing.connection.Connection) -> None:
    # Ctrl-C reaches the whole process group: the sweep process decides, the workers wait to be stopped
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    while (job := conn.recv()) is not None:
        conn.send(run_task(*job))


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.job: Job | None = None


class LocalExecutor:
    """Worker processes of this machine, one task at a time each; a dead worker is replaced."""

    def __init__(self, workers: int) -> None:
        self.n = workers
        # fork: the sweep process has no threads here, and a forked worker starts in milliseconds
        methods = multiprocessing.get_all_start_methods()
        self._ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._workers: list[_Worker] = []
        self.running = 0

    def run(self, jobs: list[Job]) -> Iterator[Event]:
        pending = deque(jobs)
        self._workers = [_Worker(self._ctx) for _ in range(min(self.n, len(jobs)))]
        while pending or any(w.job for w in self._workers):
            for w in self._workers:
                if w.job is None and pending:
                    w.job = pending.popleft()
                    w.conn.send(w.job)
            busy = [w for w in self._workers if w.job is not None]
            self.running = len(busy)
            waitables: list[Any] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            ready = multiprocessing.connection.wait(waitables, timeout=1.0)
            if not ready:
                yield None
            for w in busy:
                job = w.job
                assert job is not None
                if w.conn in ready or w.process.sentinel in ready:
                    result = self._collect(w, job)
                    if result is None:
                        continue
                    w.job = None
                    yield job[0], result
        self.running = 0
        self._close()

    def _collect(self, w: _Worker, job: Job) -> dict[str, Any] | None:
        try:
            if w.conn.poll():
                result: dict[str, Any] = w.conn.recv()
                return result
        except (EOFError, OSError):
            pass
        if w.process.is_alive():
            return None
        w.process.join()
        code = w.process.exitcode
        reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.warning("worker died", task=job[0].id, reason=reason)
        self._workers[self._workers.index(w)] = _Worker(self._ctx)
        return {"id": job[0].id, "status": "failed", "error": f"worker process died ({reason})"}

    def _close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
        self._workers = []

    def stop(self) -> None:
        """Every worker ends now (SIGTERM, then SIGKILL after 5 s); their tasks' files are discarded."""
        for w in self._workers:
            if w.process.is_alive():
                w.process.terminate()
        for w in self._workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
        self._workers = []
        self.running = 0


class RayExecutor:
    """Tasks as Ray remote functions (one CPU each, no retries: a failure is recorded, not hidden).

    ``address`` None starts a local Ray with ``workers`` CPUs; otherwise it connects to a cluster
    (``auto`` or ``ray://HOST:PORT``) whose workers must have eis-hil installed and the output reachable."""

    def __init__(self, workers: int, address: str | None) -> None:
        import ray

        self._ray = ray
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.cpus = int(ray.cluster_resources().get("CPU", workers))  # type: ignore[no-untyped-call]
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        self._refs: dict[Any, Task] = {}
        self.running = 0

    def run(self, jobs: list[Job]) -> Iterator[Event]:
        ray = self._ray
        self._refs = {self._remote.remote(task, staging): task for task, staging in jobs}
        while self._refs:
            self.running = min(len(self._refs), self.cpus)
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=1.0)
            if not ready:
                yield None
            for ref in ready:
                task = self._refs.pop(ref)
                try:
                    result: dict[str, Any] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    result = {"id": task.id, "status": "failed", "error": f"{type(exc).__name__}: {first}"}
                yield task, result
        self.running = 0
        self.shutdown()

    def stop(self) -> None:
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception as exc:
                log.debug("ray cancel", error=str(exc))
        self._refs = {}
        self.running = 0
        self.shutdown()

    def shutdown(self) -> None:
        if self._ray.is_initialized():
            self._ray.shutdown()
