"""The sweep's output: one hive-partitioned Parquet dataset per table, and the manifest, through pyarrow's
filesystem layer (a local directory, or ``s3://bucket/prefix`` and the like where credentials exist).

    OUT/states/scenario=S/profile=P/[override=V/...]seed=N/part-0.parquet
    OUT/spectra/.../part-0.parquet
    OUT/faults/.../part-0.parquet
    OUT/frequencies/.../part-0.parquet   the EIS grid: freq_index (0-based position in the lists), freq_hz
    OUT/manifest.json      one entry per task attempted: coordinates, hashes, status, error, rows, wall time
    OUT/_staging/          tasks being written (globs over OUT/<table> never see it)

A task writes into ``_staging/<hash>/``; only when it has finished are its files moved into the partitions
and its entry added to the manifest, so a partition is either whole or absent and the manifest never lists
a task whose files are not in place.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..sim.output import filesystem
from .tasks import Task

log = structlog.get_logger(__name__)

TABLES = ("states", "spectra", "faults", "frequencies")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def _join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


@dataclass
class Dataset:
    uri: str
    header: dict[str, Any]
    """Sweep name, file and hash, model hash: the head of the manifest."""
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Manifest entries by task id."""

    def __post_init__(self) -> None:
        self.fs, self.base = filesystem(self.uri)

    def prepare(self) -> None:
        """Create the directory and check it is writable, before any work starts; read an earlier manifest."""
        import pyarrow.fs as pafs

        self.fs.create_dir(self.base, recursive=True)
        probe = f"{self.base}/_staging/.write-probe"
        self.fs.create_dir(f"{self.base}/_staging", recursive=True)
        with self.fs.open_output_stream(probe) as out:
            out.write(b"ok")
        self.fs.delete_file(probe)
        info = self.fs.get_file_info(f"{self.base}/{MANIFEST}")
        if info.type == pafs.FileType.File:
            with self.fs.open_input_stream(info.path) as handle:
                try:
                    old = json.loads(handle.read().decode("utf-8"))
                    self.entries = {e["id"]: e for e in old.get("tasks", [])}
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{self.uri}/{MANIFEST}: not a sweep manifest ({exc})") from None

    def staging(self, task: Task) -> str:
        return _join(self.uri, "_staging", task.sha256[:20])

    def finished(self, task: Task) -> bool:
        """Done before with the same inputs, and its files still in place."""
        import pyarrow.fs as pafs

        entry = self.entries.get(task.id)
        if entry is None or entry.get("status") != "ok" or entry.get("task_sha256") != task.sha256:
            return False
        infos = self.fs.get_file_info([self._part(table, task) for table in TABLES])
        return all(i.type == pafs.FileType.File for i in infos)

    def _part(self, table: str, task: Task) -> str:
        return f"{self.base}/{table}/{task.id}/part-0.parquet"

    def commit(self, task: Task, result: dict[str, Any]) -> None:
        """Move a finished task's files into its partitions (or drop a failed one's), then record it."""
        staging = filesystem(self.staging(task))[1]
        if result["status"] == "ok":
            for table in TABLES:
                self.fs.create_dir(f"{self.base}/{table}/{task.id}", recursive=True)
                self.fs.move(f"{staging}/{table}.parquet", self._part(table, task))
        else:
            self.remove_partitions(task)
        self.discard(task)
        self.record(task, result)

    def remove_partitions(self, task: Task) -> None:
        """A task that ran again and failed leaves no stale partition from an earlier success."""
        import pyarrow.fs as pafs

        for table in TABLES:
            if self.fs.get_file_info(self._part(table, task)).type == pafs.FileType.File:
                self.fs.delete_file(self._part(table, task))

    def discard(self, task: Task) -> None:
        import pyarrow.fs as pafs

        staging = filesystem(self.staging(task))[1]
        if self.fs.get_file_info(staging).type == pafs.FileType.Directory:
            self.fs.delete_dir(staging)

    def record(self, task: Task, result: dict[str, Any]) -> None:
        entry: dict[str, Any] = {
            "id": task.id,
            "index": task.index,
            **task.coordinates(),
            "scenario_file": task.scenario_file,
            "scenario_sha256": task.scenario_sha256,
            "model_sha256": task.model_sha256,
            "task_sha256": task.sha256,
            "status": result["status"],
            "rows": result.get("rows"),
            "spectrum_points": result.get("spectrum_points"),
            "simulated_s": result.get("simulated_s"),
            "finished": result.get("finished"),
            "wall_s": result.get("wall_s"),
            "error": result.get("error"),
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.entries[task.id] = entry
        self.write_manifest()

    def write_manifest(self) -> None:
        """Whole, then renamed over the old one (an object store writes an object whole anyway)."""
        body = {
            "version": MANIFEST_VERSION,
            **self.header,
            "tasks": sorted(self.entries.values(), key=lambda e: (e["index"], e["id"])),
        }
        data = (json.dumps(body, indent=1) + "\n").encode("utf-8")
        final = f"{self.base}/{MANIFEST}"
        tmp = f"{self.base}/.{MANIFEST}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, final)

    def cleanup(self) -> None:
        """Remove what unfinished tasks left in ``_staging``."""
        import pyarrow.fs as pafs

        staging = f"{self.base}/_staging"
        if self.fs.get_file_info(staging).type == pafs.FileType.Directory:
            self.fs.delete_dir(staging)
