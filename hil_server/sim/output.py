"""What one engine step produces (plain frozen dataclasses holding numpy columns: read them, do not write),
and the writer that puts a run's steps into files (``RunWriter``)."""

from __future__ import annotations

import csv
import functools
import io
import json
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from protocol import FaultKind, FaultPhase

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U16 = npt.NDArray[np.uint16]
C128 = npt.NDArray[np.complex128]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class CellColumns:
    """One value per cell (index = cell number)."""

    voltage_v: F64
    current_a: F64
    temp_c: F64
    soc: F64
    soh: F64
    flags: U16
    """``protocol.CellFlags`` bits."""


@dataclass(frozen=True, eq=False)
class Spectrum:
    """Whole spectra of several cells measured together (instant mode, or a completed sweep)."""

    time_us: int
    """End of the measurement."""
    sweep_duration_us: int
    """0 for instant output."""
    cells: I64
    spectrum_ids: I64
    """Per-cell counters; the EIS_POINTs of a sweep carry the same id."""
    freq_hz: F64
    """(F,) in measurement order (high to low)."""
    z_ohm: C128
    """(n, F) as REPORTED (measurement and spectrum faults applied; NaN possible); standard sign."""
    z_true_ohm: C128
    """(n, F) the cell's real impedance at the operating point of each point (ground truth)."""
    dropped: Bool
    """(n, F) points the instrument lost: the transport leaves them out of the frame."""
    soc: F64
    soh: F64
    temp_c: F64
    current_a: F64
    """Operating point at the end of the measurement (per cell)."""
    flags: U16


@dataclass(frozen=True, eq=False)
class SweepPoints:
    """Points of one sweep that completed during this step (EIS_POINT frames), for several cells."""

    cells: I64
    spectrum_ids: I64
    n_points: int
    point_index: I64
    """(P,) positions in the sweep."""
    time_us: I64
    """(P,) when each point's measurement completed."""
    freq_hz: F64
    z_ohm: C128
    """(n, P) reported."""
    dropped: Bool
    flags: U16


@dataclass(frozen=True)
class FaultEvent:
    time_us: int
    fault_id: int
    kind: FaultKind
    phase: FaultPhase
    cells: tuple[int, ...]
    """Empty for stream faults."""
    severity: float


@dataclass(frozen=True)
class StreamFault:
    """An active spectrum/transport fault the transport carries out on the frames it sends.

    ``seed`` seeds the transport's own ``numpy.random.Generator`` for the per-frame draws, so a replay with
    the same scenario and seed damages the same frames (given the same frame sequence)."""

    fault_id: int
    kind: FaultKind
    params: Mapping[str, float | int | str]
    seed: int
    start_us: int
    end_us: int | None


@dataclass(frozen=True)
class SegmentEvent:
    time_us: int
    index: int
    """Running number of the leaf segment (after expanding repeat and sweep)."""
    kind: str
    phase: Literal["start", "end"]
    reason: str
    """start: ""; end: duration, until, cutoff_low, cutoff_high, temperature, cv_cutoff, cycles."""
    label: str | None


@dataclass(frozen=True, eq=False)
class StepOutput:
    step: int
    """Number of steps done; ``time_us`` = step / step_rate."""
    time_us: int
    true: CellColumns
    """Ground truth."""
    reported: CellColumns
    """What a sensor reports (measurement faults on voltage/current/temperature applied): stream this."""
    spectra: tuple[Spectrum, ...]
    points: tuple[SweepPoints, ...]
    fault_events: tuple[FaultEvent, ...]
    stream_faults: tuple[StreamFault, ...]
    """Every stream fault active during this step (not only those that started)."""
    segment_events: tuple[SegmentEvent, ...]
    ambient_c: float
    finished: bool
    """The timeline has ended; further steps rest the cells (and let running sweeps complete)."""


# -- files ------------------------------------------------------------------------------------------------
# What ``eis-hil run`` and ``eis-hil sweep`` write for one run. The Parquet schema is documented in
# scenarios/sweeps/README.md ("Output schema"); the CSV files keep the generic EIS CSV schema.

ROW_GROUP_POINTS = 1 << 20
"""Spectrum points buffered before a row group is written (and state rows, at most as many)."""
BATCH_STEPS = 2000
"""Steps buffered at most before a row group is written, however few rows they hold."""
SCHEMA_VERSION = "2"


@functools.cache
def _schemas() -> dict[str, Any]:
    import pyarrow as pa

    f32, f64, i32, i64 = pa.float32(), pa.float64(), pa.int32(), pa.int64()
    states = [("time_s", f64), ("step", i64), ("cell", i32)]
    for prefix in ("", "true_"):
        states += [(prefix + n, f32) for n in ("voltage_v", "current_a", "temp_c", "soc", "soh")]
    states.append(("flags", i32))
    # lists of non-null elements, the reported ones non-null too: fewer levels to encode per point
    points = pa.list_(pa.field("element", f32, nullable=False))
    spectra = [
        pa.field("time_s", f64, nullable=False),
        pa.field("cell", i32, nullable=False),
        pa.field("spectrum_id", i64, nullable=False),
        ("soc", f32),
        ("temp_c", f32),
        ("soh", f32),
        ("current_a", f32),
        ("flags", i32),
        pa.field("z_re_ohm", points, nullable=False),
        pa.field("z_im_ohm", points, nullable=False),
        ("true_z_re_ohm", points),
        ("true_z_im_ohm", points),
        ("dropped", pa.list_(pa.field("element", pa.bool_(), nullable=False))),
    ]
    faults = [
        ("time_s", f64),
        ("fault_id", i64),
        ("kind", pa.string()),
        ("phase", pa.string()),
        ("cells", pa.string()),
        ("severity", f64),
    ]
    return {"states": pa.schema(states), "spectra": pa.schema(spectra), "faults": pa.schema(faults)}


def _encodings(schema: Any) -> tuple[list[str], dict[str, str]]:
    """Dictionary columns and explicit encodings: floats byte-stream-split (their exponent and high mantissa
    bytes line up for zstd), steps and ids delta-coded, strings and flags dictionary-coded."""
    import pyarrow as pa

    dictionary: list[str] = []
    encoding: dict[str, str] = {}
    for field in schema:
        kind, name = field.type, field.name
        if pa.types.is_list(kind):
            kind, name = kind.value_type, f"{name}.list.element"
        if pa.types.is_string(kind) or name == "flags":
            dictionary.append(name)
        elif pa.types.is_floating(kind):
            encoding[name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_integer(kind):
            encoding[name] = "DELTA_BINARY_PACKED"
    return dictionary, encoding


class ParquetFile:
    """One Parquet file through a pyarrow filesystem, written by a background thread: ``write`` hands a table
    over (at most two wait) and returns while the previous one is still being encoded and compressed, which
    pyarrow does without the GIL. The file exists with its schema from the start, even if no row follows."""

    def __init__(self, fs: Any, path: str, schema: Any, metadata: dict[str, str] | None = None) -> None:
        import pyarrow.parquet as pq

        self.rows = 0
        self.path = path
        dictionary, encoding = _encodings(schema)
        self._writer = pq.ParquetWriter(
            path,
            schema.with_metadata(metadata or {}),
            filesystem=fs,
            compression="zstd",
            compression_level=1,
            use_dictionary=dictionary,
            column_encoding=encoding,
            write_statistics=["time_s", "cell"],
            data_page_size=1 << 20,
        )
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=f"parquet:{path}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table, row_group_size=table.num_rows)
                except BaseException as exc:
                    self._error = exc

    def write(self, table: Any) -> None:
        if self._error is not None:
            raise self._error
        if table.num_rows:
            self._queue.put(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        if self._error is not None:
            raise self._error


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI such as ``s3://bucket/prefix``."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        from pathlib import Path

        return pafs.LocalFileSystem(), Path(uri).resolve().as_posix()
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


class RunWriter:
    """The files of one run: states, spectra and faults, in Parquet (compact schema) or CSV (generic EIS
    CSV schema for spectra). Steps are buffered and written in large batches; memory stays bounded."""

    def __init__(
        self, fs: Any, directory: str, fmt: str, profile: str, grid_hz: Sequence[float] = ()
    ) -> None:
        self.fmt = fmt
        self.profile = profile
        self._batch: list[StepOutput] = []
        self.points = 0
        """Spectrum points so far (a Parquet row holds a spectrum, a CSV row one point)."""
        self._points = 0
        self._rows = 0
        self._closed = False
        fs.create_dir(directory, recursive=True)
        if fmt == "parquet":
            meta = {
                "eis_hil.schema": SCHEMA_VERSION,
                "eis_hil.source": f"eis-hil:{profile}",
                "eis_hil.freq_hz": json.dumps([float(f) for f in grid_hz]),
            }
            self._files: dict[str, ParquetFile | CsvFile] = {
                name: ParquetFile(fs, f"{directory}/{name}.parquet", schema, meta)
                for name, schema in _schemas().items()
            }
            grid = frequency_table(grid_hz)
            self._files["frequencies"] = ParquetFile(
                fs, f"{directory}/frequencies.parquet", grid.schema, meta
            )
            self._files["frequencies"].write(grid)
        else:
            self._files = {
                name: CsvFile(fs, f"{directory}/{name}.csv") for name in ("states", "spectra", "faults")
            }

    @property
    def rows(self) -> dict[str, int]:
        return {name: f.rows for name, f in self._files.items()}

    def add(self, out: StepOutput) -> None:
        self._batch.append(out)
        points = sum(s.z_ohm.size for s in out.spectra)
        self.points += points
        self._points += points
        self._rows += out.true.voltage_v.size
        if len(self._batch) >= BATCH_STEPS or max(self._points, self._rows) >= ROW_GROUP_POINTS:
            self.flush()

    def flush(self) -> None:
        batch, self._batch, self._points, self._rows = self._batch, [], 0, 0
        if not batch:
            return
        if self.fmt == "parquet":
            self._files["states"].write(_state_table(batch))
            self._files["spectra"].write(_spectrum_table([s for o in batch for s in o.spectra]))
            self._files["faults"].write(_fault_table(batch))
        else:
            self._files["states"].write(_state_columns(batch))
            self._files["spectra"].write(_generic_spectrum_columns(batch, self.profile))
            self._files["faults"].write(_fault_columns(batch))

    def close(self) -> dict[str, int]:
        """Write what is buffered and close every file; the row counts per table."""
        if not self._closed:
            self._closed = True
            try:
                self.flush()
            finally:
                errors = []
                for f in self._files.values():
                    try:
                        f.close()
                    except Exception as exc:
                        errors.append(exc)
                if errors:
                    raise errors[0]
        return self.rows


class CsvFile:
    """Appends column batches to one CSV file (the header with the first batch)."""

    def __init__(self, fs: Any, path: str) -> None:
        self.rows = 0
        self._fs = fs
        self._path = path
        self._handle: Any = None
        self._csv: Any = None

    def write(self, columns: Mapping[str, npt.ArrayLike]) -> None:
        arrays = {k: np.asarray(v) for k, v in columns.items()}
        n = len(next(iter(arrays.values()))) if arrays else 0
        if n == 0:
            return
        if self._csv is None:
            self._handle = io.TextIOWrapper(
                self._fs.open_output_stream(self._path, compression=None), encoding="utf-8", newline=""
            )
            self._csv = csv.writer(self._handle, lineterminator="\n")
            self._csv.writerow(list(arrays))
        self._csv.writerows(zip(*(a.tolist() for a in arrays.values()), strict=True))
        self.rows += n

    def close(self) -> None:
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


def _state_table(outputs: list[StepOutput]) -> Any:
    import pyarrow as pa

    schema = _schemas()["states"]
    cols = _state_columns(outputs)
    return pa.table([pa.array(np.asarray(cols[f.name]), type=f.type) for f in schema], schema=schema)


def _spectrum_table(spectra: list[Spectrum]) -> Any:
    """One row per spectrum, its points as lists in grid order (the grid is in the file's metadata and the
    frequencies table). Rows go by cell, then time: the values next to each other in a byte stream are then
    one cell's impedance at one frequency in successive spectra, nearly equal, which is what makes them
    compress to under 2 bytes a point (time order: about 3)."""
    import pyarrow as pa

    schema = _schemas()["spectra"]
    if not spectra:
        return schema.empty_table()
    n_f = spectra[0].freq_hz.size
    if any(sp.freq_hz.size != n_f for sp in spectra):  # one grid per scenario: never, but never misaligned
        raise ValueError("spectra of one run have different frequency grids")

    def rows(get: Callable[[Spectrum], npt.ArrayLike]) -> npt.NDArray[Any]:
        return np.concatenate([np.broadcast_to(np.asarray(get(sp)), (sp.cells.size,)) for sp in spectra])

    time_us = rows(lambda sp: sp.time_us)
    cell = rows(lambda sp: sp.cells)
    order = np.lexsort((time_us, cell))
    first = spectra[0].cells
    # the usual case (every cell measured together, one spectrum per time): a transpose, no gather
    grid = all(np.array_equal(sp.cells, first) for sp in spectra) and bool(np.all(np.diff(first) > 0))
    grid = grid and bool(np.all(np.diff([sp.time_us for sp in spectra]) > 0))

    def matrix(get: Callable[[Spectrum], npt.NDArray[Any]], dtype: Any = None) -> npt.NDArray[Any]:
        if grid:
            out = np.empty((first.size, len(spectra), n_f), dtype=dtype or get(spectra[0]).dtype)
            for t, sp in enumerate(spectra):
                out[:, t, :] = get(sp)
            return out.reshape(-1, n_f)
        gathered = np.concatenate([get(sp) for sp in spectra])[order]
        return gathered if dtype is None else gathered.astype(dtype)

    z_re = matrix(lambda sp: sp.z_ohm.real, np.float32)
    z_im = matrix(lambda sp: sp.z_ohm.imag, np.float32)
    same_truth = all(sp.z_true_ohm is sp.z_ohm for sp in spectra)
    true_re = z_re if same_truth else matrix(lambda sp: sp.z_true_ohm.real, np.float32)
    true_im = z_im if same_truth else matrix(lambda sp: sp.z_true_ohm.imag, np.float32)
    dropped = matrix(lambda sp: sp.dropped)
    offsets = pa.array(np.arange(0, z_re.size + 1, n_f, dtype=np.int32))
    by_name = {f.name: f.type for f in schema}

    def lists(name: str, values: npt.NDArray[Any], null_rows: npt.NDArray[np.bool_] | None) -> Any:
        flat = pa.array(np.ascontiguousarray(values).ravel())
        mask = None if null_rows is None else pa.array(null_rows)
        return pa.ListArray.from_arrays(offsets, flat, type=by_name[name], mask=mask)

    # the truth is stored only for spectra whose report differs from it (a fault or noise acted); compared
    # as float32, what the file holds
    untouched = (
        np.ones(len(z_re), dtype=np.bool_)
        if same_truth
        else np.all((true_re == z_re) & (true_im == z_im), axis=1)
    )
    columns = {
        "time_s": time_us[order] / 1e6,
        "cell": cell[order].astype(np.int32),
        "spectrum_id": rows(lambda sp: sp.cells.astype(np.int64) * 2**32 + sp.spectrum_ids)[order],
        "soc": rows(lambda sp: sp.soc)[order],
        "temp_c": rows(lambda sp: sp.temp_c)[order],
        "soh": rows(lambda sp: sp.soh)[order],
        "current_a": rows(lambda sp: sp.current_a)[order],
        "flags": rows(lambda sp: sp.flags)[order].astype(np.int32),
        "z_re_ohm": lists("z_re_ohm", z_re, None),
        "z_im_ohm": lists("z_im_ohm", z_im, None),
        "true_z_re_ohm": lists("true_z_re_ohm", true_re, untouched),
        "true_z_im_ohm": lists("true_z_im_ohm", true_im, untouched),
        "dropped": lists("dropped", dropped, np.asarray(~dropped.any(axis=1))),
    }
    return pa.table(
        [
            c if isinstance(c, pa.Array) else pa.array(c, type=f.type)
            for f, c in zip(schema, columns.values(), strict=True)
        ],
        schema=schema,
    )


def frequency_table(grid_hz: Sequence[float]) -> Any:
    """The grid of a run: element k of a spectrum's lists is at ``freq_hz`` of ``freq_index`` k (0-based)."""
    import pyarrow as pa

    return pa.table(
        {
            "freq_index": pa.array(np.arange(len(grid_hz), dtype=np.int32)),
            "freq_hz": pa.array(np.asarray(grid_hz, dtype=np.float64)),
        }
    )


def _generic_spectrum_columns(outputs: list[StepOutput], profile: str) -> dict[str, npt.ArrayLike]:
    """The generic EIS CSV schema (``eis-hil calibrate`` and ``train --extra`` read it) plus time_s, cell,
    dropped and the true impedance."""
    from ..eis_data import GENERIC_CSV_COLUMNS

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


def _fault_table(outputs: list[StepOutput]) -> Any:
    import pyarrow as pa

    schema = _schemas()["faults"]
    cols = _fault_columns(outputs)
    if not cols:
        return schema.empty_table()
    return pa.table({f.name: pa.array(np.asarray(cols[f.name]).tolist(), type=f.type) for f in schema})
