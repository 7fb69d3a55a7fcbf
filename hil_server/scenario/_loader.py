"""Scenario file -> Scenario, collecting every error with file, line and key path."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from types import MappingProxyType
from typing import cast

import numpy as np
import yaml

from hil_server.model.profiles import NAME_RE
from protocol import FaultKind

from ._drive_cycles import BUNDLED, BUNDLED_DIR, DriveCycleError, load_drive_cycle
from ._errors import Issue, ScenarioError
from ._faults import KINDS_BY_NAME, PARAMS, SIGNAL_UNIT, STREAM_KINDS, UNIT_PARAM_PREFIX, kind_name
from ._model import (
    Ambient,
    CcCvCharge,
    Cells,
    CellScope,
    Condition,
    ConditionOp,
    ConditionQuantity,
    ConstantCurrent,
    ConstantPower,
    DriveCycle,
    DriveCycleSegment,
    DriveSignal,
    EisMode,
    EisRequest,
    EisSchedule,
    Fault,
    MeasuredEis,
    MeasuredSelect,
    Repeat,
    Rest,
    Scenario,
    Segment,
    Soh,
    Spread,
    Sweep,
    SweepParameter,
    Until,
)
from ._reader import Range, Reader, join, line_of, shown, suggest
from ._yaml import RefusedError, compose, read_limited

MAX_MEASURED_BYTES = 64 << 20
"""Largest measured-spectra CSV a scenario may name (about 800 000 points)."""
MAX_CELLS = 4096
MAX_EIS_POINTS = 337
"""The most points one EIS_SPECTRUM frame carries (protocol/SPEC.md)."""
MAX_EXPANDED_SEGMENTS = 1_000_000
"""Bound on segments after expanding repeat and sweep, so nested repeats cannot ask for 10^15 of them."""
MAX_SEED = 2**64 - 1

_DEFAULT_GRID = (1e-2, 1e4, 10)
_CONDITION_RE = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_CONDITION_BOUNDS: dict[str, Range] = {
    "voltage_v": Range(0, 10),
    "soc": Range(0, 1),
    "temp_c": Range(-100, 150),
}
TEMP_RANGE = Range(-60, 100)
CELL_TEMP_RANGE = Range(-40, 85)
SOC_RANGE = Range(0, 1)
SOH_RANGE = Range(0, 1.2, lo_open=True)
FREQ_RANGE = Range(1e-4, 1e6)
"""Frequencies in Hz an EIS grid may hold (``eis.frequencies``, ``eis.frequencies_hz``)."""
POS = Range(0, lo_open=True)
MAX_DURATION_S = 1e9
"""Longest time span a scenario may give (about 31 years): 1e308 s validated, then overflowed the step
count (duration x step rate) when the segment started: an internal error in serve and run."""
DURATION = Range(0, MAX_DURATION_S, lo_open=True)
NONNEG = Range(0)

_TOP_KEYS = ("name", "description", "seed", "step_rate_hz", "eis", "cells", "ambient", "timeline", "faults")
_LOAD_END = ("duration_s", "until", "label")
_SEGMENT_KEYS: dict[str, tuple[str, ...]] = {
    "rest": _LOAD_END,
    "constant_current": ("current_a", *_LOAD_END),
    "constant_power": ("power_w", *_LOAD_END),
    "drive_cycle": ("cycle", "signal", "scale", "loops", *_LOAD_END),
    "cc_cv_charge": ("current_a", "voltage_v", "cutoff_current_a", *_LOAD_END),
    "ambient": ("temp_c", "rate_c_per_min", "label"),
    "soh": ("value", "fade_per_h", "label"),
    "eis": ("label",),
    "repeat": ("count", "segments", "label"),
    "sweep": ("parameter", "values", "range", "segments", "label"),
}
_SWEEP_BOUNDS: dict[str, Range] = {"ambient_temp_c": TEMP_RANGE, "soc": SOC_RANGE, "soh": SOH_RANGE}
_FAULT_KEYS = ("kind", "start_s", "start", "end_s", "duration_s", "cells", "severity", "seed")


def scenario_hash(path: str | os.PathLike[str]) -> bytes:
    """SHA-256 of the file's bytes: 32 bytes, the form SERVER_HELLO carries (``.hex()`` for people)."""
    return hashlib.sha256(Path(path).read_bytes()).digest()


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read, check and type a scenario file; ScenarioError lists every problem found."""
    scenario, errors = _load(Path(path))
    if errors or scenario is None:
        raise ScenarioError(errors)
    return scenario


def validate_files(paths: Iterable[str | os.PathLike[str]]) -> list[Issue]:
    """Every problem in every file, without running anything; an empty list means all are valid."""
    issues: list[Issue] = []
    for path in paths:
        issues.extend(_load(Path(path))[1])
    return issues


def load_edited(
    path: str | os.PathLike[str], edit: Callable[[yaml.Node], None]
) -> tuple[Scenario | None, list[Issue]]:
    """Like ``load_scenario`` with ``edit`` applied to the file's node tree before it is read (the overrides
    of ``eis-hil sweep``); the scenario (None if invalid) and every problem, without raising."""
    return _load(Path(path), edit)


def _load(path: Path, edit: Callable[[yaml.Node], None] | None = None) -> tuple[Scenario | None, list[Issue]]:
    file = str(path)
    try:
        data = read_limited(path)
    except RefusedError as exc:
        return None, [Issue(file, exc.line, "", exc.message)]
    except OSError as exc:
        return None, [Issue(file, None, "", f"cannot read scenario: {exc.strerror or exc}")]
    try:
        root, loader = compose(data)
    except RefusedError as exc:
        return None, [Issue(file, exc.line, "", exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            problem = f"{exc.context}, {exc.problem}"
        if "'>'" in problem or "'<'" in problem:
            problem += ' (quote conditions: until: {voltage_v: "<= 3.0"})'
        return None, [
            Issue(file, None if mark is None else mark.line + 1, "", f"YAML syntax error: {problem}")
        ]
    except yaml.YAMLError as exc:
        return None, [Issue(file, None, "", f"YAML error: {exc}")]
    if root is None:
        return None, [Issue(file, None, "", "empty file: expected a mapping with name, cells and timeline")]
    if edit is not None:
        edit(root)
    builder = _Builder(Reader(file, loader), path.resolve().parent)
    scenario = builder.scenario(root, path, hashlib.sha256(data).digest())
    return scenario, builder.r.errors


class _Builder:
    def __init__(self, reader: Reader, base_dir: Path) -> None:
        self.r = reader
        self.base_dir = base_dir
        self.labels: dict[str, yaml.Node] = {}
        self.cell_count: int | None = None

    # -- header ---------------------------------------------------------------------------------------------

    def scenario(self, root: yaml.Node, path: Path, digest: bytes) -> Scenario | None:
        r = self.r
        m = r.mapping(root, "", _TOP_KEYS, required=("name", "cells", "timeline"))
        if m is None:
            return None
        name = self._name(m["name"], "name") if "name" in m else None
        description = r.string(m["description"], "description") if "description" in m else ""
        seed = r.integer(m["seed"], "seed", Range(0, MAX_SEED)) if "seed" in m else 0
        rate = (
            r.number(m["step_rate_hz"], "step_rate_hz", Range(0, 10000, lo_open=True))
            if "step_rate_hz" in m
            else 10.0
        )
        ambient = self._ambient(m["ambient"]) if "ambient" in m else 25.0
        eis = self._eis(m.get("eis"))
        cells = self._cells(m["cells"], ambient) if "cells" in m else None
        self.cell_count = cells.count if cells else None
        timeline = self._segments(m["timeline"], "timeline", top=True) if "timeline" in m else None
        faults = self._faults(m["faults"], seed or 0) if "faults" in m else ()
        if timeline is not None:
            total = _expanded(timeline)
            if total > MAX_EXPANDED_SEGMENTS:
                r.error(
                    m["timeline"],
                    "timeline",
                    f"expands to {total:.3g} segments (limit {MAX_EXPANDED_SEGMENTS})",
                )
        if (
            r.errors
            or name is None
            or description is None
            or seed is None
            or rate is None
            or ambient is None
            or eis is None
            or cells is None
            or timeline is None
            or faults is None
        ):
            return None
        return Scenario(
            name=name,
            description=description,
            seed=seed,
            step_rate_hz=rate,
            eis=eis,
            cells=cells,
            ambient_temp_c=ambient,
            timeline=timeline,
            faults=faults,
            source=path,
            sha256=digest,
        )

    def _name(self, node: yaml.Node, path: str) -> str | None:
        value = self.r.string(node, path, what="a name")
        if value is not None and not NAME_RE.match(value):
            self.r.error(
                node, path, f"expected a name of letters, digits, '_', '.', '-' (at most 64), got {value!r}"
            )
            return None
        return value

    def _ambient(self, node: yaml.Node) -> float | None:
        m = self.r.mapping(node, "ambient", ("temp_c",))
        if m is None:
            return None
        return self.r.number(m["temp_c"], "ambient.temp_c", TEMP_RANGE) if "temp_c" in m else 25.0

    def _eis(self, node: yaml.Node | None) -> EisSchedule | None:
        r = self.r
        keys = (
            "interval_s",
            "mode",
            "frequencies",
            "frequencies_hz",
            "periods_per_point",
            "settle_s",
            "measured",
        )
        m: dict[str, yaml.Node] | None = {} if node is None else r.mapping(node, "eis", keys)
        if m is None:
            return None
        interval: float | None = 60.0
        if "interval_s" in m:
            raw = r.scalar(m["interval_s"], "eis.interval_s")
            interval = None if raw is None else r.number(m["interval_s"], "eis.interval_s", DURATION)
            if raw is not None and interval is None:
                return None
        mode = r.choice(m["mode"], "eis.mode", ("instant", "sweep")) if "mode" in m else "instant"
        periods = (
            r.number(m["periods_per_point"], "eis.periods_per_point", Range(1, 1000))
            if "periods_per_point" in m
            else 1.0
        )
        settle = r.number(m["settle_s"], "eis.settle_s", Range(0, 3600)) if "settle_s" in m else 0.0
        freqs = self._frequencies(node, m)
        measured = self._measured(m["measured"]) if "measured" in m else None
        if mode is None or periods is None or settle is None or freqs is None:
            return None
        if "measured" in m and measured is None:
            return None
        return EisSchedule(
            interval_s=interval,
            mode=cast(EisMode, mode),
            frequencies_hz=freqs,
            periods_per_point=periods,
            settle_s=settle,
            measured=measured,
        )

    def _measured(self, node: yaml.Node) -> MeasuredEis | None:
        r = self.r
        m = r.mapping(node, "eis.measured", ("file", "select"), required=("file",))
        if m is None:
            return None
        ref = r.string(m["file"], "eis.measured.file", what="a .csv path relative to the scenario")
        select: str | None = "nearest"
        if "select" in m:
            select = r.choice(m["select"], "eis.measured.select", ("nearest", "sequence"))
        if ref is None or select is None:
            return None
        file = self._beside(m["file"], "eis.measured.file", ref, "measured spectra")
        if file is None:
            return None
        from hil_server.eis_data import EisDataError, read_spectra_file

        try:
            size = file.stat().st_size if file.is_file() else 0
            if size > MAX_MEASURED_BYTES:
                r.error(
                    m["file"], "eis.measured.file", f"{file}: {size} bytes, more than {MAX_MEASURED_BYTES}"
                )
                return None
            spectra = tuple(read_spectra_file(file, source="measured"))
        except (UnicodeDecodeError, csv.Error) as exc:
            r.error(m["file"], "eis.measured.file", f"{file}: not a UTF-8 CSV file ({exc})")
            return None
        except EisDataError as exc:
            if exc.line is None:
                r.error(m["file"], "eis.measured.file", str(exc))
            else:  # inside the CSV: name that file and its line, keep the scenario's key path
                detail = str(exc).removeprefix(f"{exc.path}:{exc.line}: ")
                r.errors.append(Issue(str(exc.path), exc.line, "eis.measured.file", detail))
            return None
        for spectrum in spectra:
            negative = spectrum.z.real < 0
            if negative.any():  # no passive cell has it: a sign or column mix-up, not something to stream
                k = int(negative.argmax())
                r.error(
                    m["file"],
                    "eis.measured.file",
                    f"{file}: {spectrum.origin or spectrum.cell_id}: Re(Z) < 0 at {spectrum.freq_hz[k]:g} Hz "
                    f"({spectrum.z.real[k]:g} ohm) and {int(negative.sum()) - 1} more point(s): not the "
                    "impedance of a cell (columns swapped, or a sign?)",
                )
                return None
        return MeasuredEis(file, cast(MeasuredSelect, select), spectra)

    def _beside(self, node: yaml.Node, path: str, ref: str, what: str) -> Path | None:
        """A file the scenario names: relative to its directory and inside it (no absolute paths, no
        escaping with ``..`` or symlinks), so a scenario cannot read files the user did not put beside it."""
        rel = Path(ref)
        if rel.is_absolute():
            self.r.error(
                node,
                path,
                f"expected a path relative to the scenario's directory, got the absolute path {ref!r}",
            )
            return None
        resolved = (self.base_dir / rel).resolve()
        if not resolved.is_relative_to(self.base_dir):
            self.r.error(
                node, path, f"{what} path {ref!r} leaves the scenario's directory ({self.base_dir}): refused"
            )
            return None
        return resolved

    def _frequencies(self, eis_node: yaml.Node | None, m: dict[str, yaml.Node]) -> tuple[float, ...] | None:
        r = self.r
        band = FREQ_RANGE
        if "frequencies" in m and "frequencies_hz" in m:
            r.error(
                m["frequencies_hz"],
                "eis.frequencies_hz",
                "give either frequencies (a range) or frequencies_hz (a list), not both",
            )
            return None
        if "frequencies_hz" in m:
            values: list[float] = []
            for p, item in r.sequence(m["frequencies_hz"], "eis.frequencies_hz"):
                f = r.number(item, p, band)
                if f is not None:
                    if f in values:
                        r.error(item, p, f"frequency {f:g} Hz listed twice")
                    values.append(f)
            if (
                not values
                and isinstance(m["frequencies_hz"], yaml.SequenceNode)
                and not m["frequencies_hz"].value
            ):
                r.error(m["frequencies_hz"], "eis.frequencies_hz", "expected at least one frequency")
            if len(values) > MAX_EIS_POINTS:
                r.error(
                    m["frequencies_hz"],
                    "eis.frequencies_hz",
                    f"at most {MAX_EIS_POINTS} points fit in one spectrum frame, got {len(values)}",
                )
                return None
            # an explicit list keeps the author's order: some benches sweep low to high
            return tuple(values) if values else None
        lo, hi, ppd = _DEFAULT_GRID
        if "frequencies" in m:
            # each key has its documented default (scenarios/README.md): give only what differs
            g = r.mapping(m["frequencies"], "eis.frequencies", ("min_hz", "max_hz", "points_per_decade"))
            if g is None:
                return None
            lo_ = r.number(g["min_hz"], "eis.frequencies.min_hz", band) if "min_hz" in g else lo
            hi_ = r.number(g["max_hz"], "eis.frequencies.max_hz", band) if "max_hz" in g else hi
            ppd_ = (
                r.integer(g["points_per_decade"], "eis.frequencies.points_per_decade", Range(1, 100))
                if "points_per_decade" in g
                else ppd
            )
            if lo_ is None or hi_ is None or ppd_ is None:
                return None
            if lo_ >= hi_:
                r.error(
                    g.get("min_hz", m["frequencies"]),
                    "eis.frequencies.min_hz",
                    f"expected min_hz < max_hz ({hi_:g}), got {lo_:g}",
                )
                return None
            lo, hi, ppd = lo_, hi_, ppd_
        n = math.ceil(math.log10(hi / lo) * ppd - 1e-9) + 1
        if n > MAX_EIS_POINTS:
            r.error(
                m.get("frequencies", eis_node),
                "eis.frequencies",
                f"{n} points; at most {MAX_EIS_POINTS} fit in one spectrum frame",
            )
            return None
        grid = np.logspace(math.log10(hi), math.log10(lo), n)
        return tuple(float(f) for f in grid)

    def _cells(self, node: yaml.Node, ambient: float | None) -> Cells | None:
        r = self.r
        keys = ("count", "profile", "capacity_ah", "soc", "soh", "temp_c", "spread")
        m = r.mapping(node, "cells", keys, required=("profile",))
        if m is None:
            return None
        count = r.integer(m["count"], "cells.count", Range(1, MAX_CELLS)) if "count" in m else 1
        profile = self._name(m["profile"], "cells.profile") if "profile" in m else None
        capacity = (
            r.number(m["capacity_ah"], "cells.capacity_ah", Range(0, 10000, lo_open=True))
            if "capacity_ah" in m
            else None
        )
        soc = r.number(m["soc"], "cells.soc", SOC_RANGE) if "soc" in m else 1.0
        soh = r.number(m["soh"], "cells.soh", SOH_RANGE) if "soh" in m else 1.0
        temp = r.number(m["temp_c"], "cells.temp_c", CELL_TEMP_RANGE) if "temp_c" in m else ambient
        spread = self._spread(m["spread"]) if "spread" in m else Spread(0.0, 0.0, 0.0)
        if count is None or profile is None or soc is None or soh is None or temp is None or spread is None:
            return None
        if "capacity_ah" in m and capacity is None:
            return None
        return Cells(count, profile, capacity, soc, soh, temp, spread)

    def _spread(self, node: yaml.Node) -> Spread | None:
        keys = ("capacity_rel_std", "resistance_rel_std", "soc_std")
        m = self.r.mapping(node, "cells.spread", keys)
        if m is None:
            return None
        vals = [self.r.number(m[k], f"cells.spread.{k}", Range(0, 0.5)) if k in m else 0.0 for k in keys]
        if any(v is None for v in vals):
            return None
        a, b, c = (cast(float, v) for v in vals)
        return Spread(a, b, c)

    # -- timeline -------------------------------------------------------------------------------------------

    def _segments(self, node: yaml.Node, path: str, *, top: bool = False) -> tuple[Segment, ...] | None:
        out: list[Segment] = []
        ok = True
        for p, item in self.r.sequence(node, path):
            seg = self._segment(item, p)
            if seg is None:
                ok = False
            else:
                out.append(seg)
        if isinstance(node, yaml.SequenceNode) and not node.value:
            self.r.error(node, path, "expected at least one segment")
            return None
        if not isinstance(node, yaml.SequenceNode):
            return None
        return tuple(out) if ok else None

    def _segment(self, node: yaml.Node, path: str) -> Segment | None:
        r = self.r
        if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
            kinds = ", ".join(_SEGMENT_KINDS_ORDER)
            got = f"{len(node.value)} keys" if isinstance(node, yaml.MappingNode) else shown(node)
            r.error(node, path, f"expected a segment: a mapping with exactly one of {kinds}; got {got}")
            return None
        key_node, body = node.value[0]
        kind = r.string(key_node, path, what="a segment kind")
        if kind is None:
            return None
        if kind not in _SEGMENT_KEYS:
            r.error(
                key_node,
                join(path, kind),
                f"unknown segment kind '{kind}'{suggest(kind, _SEGMENT_KEYS)}; "
                f"expected one of {', '.join(_SEGMENT_KINDS_ORDER)}",
            )
            return None
        p = join(path, kind)
        if kind == "eis" and isinstance(body, yaml.ScalarNode) and body.tag == "tag:yaml.org,2002:null":
            return EisRequest(line=line_of(node) or 0, label=None)
        m = r.mapping(body, p, _SEGMENT_KEYS[kind])
        if m is None:
            return None
        line = line_of(key_node) or 0
        label = self._label(m["label"], join(p, "label")) if "label" in m else None
        if "label" in m and label is None:
            return None
        n_err = len(r.errors)
        seg = _SEGMENT_BUILDERS[kind](self, m, p, body, line, label)
        return seg if len(r.errors) == n_err else None

    def _label(self, node: yaml.Node, path: str) -> str | None:
        label = self._name(node, path)
        if label is None:
            return None
        if label in self.labels:
            self.r.error(node, path, f"label '{label}' already used on line {line_of(self.labels[label])}")
            return None
        self.labels[label] = node
        return label

    def _ending(
        self, m: dict[str, yaml.Node], path: str, body: yaml.Node, *, needed: bool
    ) -> tuple[float | None, Until | None]:
        duration = (
            self.r.number(m["duration_s"], join(path, "duration_s"), DURATION) if "duration_s" in m else None
        )
        until = self._until(m["until"], join(path, "until")) if "until" in m else None
        if needed and "duration_s" not in m and "until" not in m:
            self.r.error(body, path, "needs duration_s or until (or both) to know when it ends")
        return duration, until

    def _until(self, node: yaml.Node, path: str) -> Until | None:
        r = self.r
        m = r.mapping(node, path, (*_CONDITION_BOUNDS, "cells"))
        if m is None:
            return None
        conditions: list[Condition] = []
        for quantity, bounds in _CONDITION_BOUNDS.items():
            if quantity not in m:
                continue
            p = join(path, quantity)
            text = r.scalar(m[quantity], p)
            match = _CONDITION_RE.match(text) if isinstance(text, str) else None
            if match is None:
                r.error(
                    m[quantity],
                    p,
                    'expected a condition like "<= 3.0" (quoted; operator <, <=, > or >= then a number), '
                    f"got {shown(m[quantity])}",
                )
                continue
            threshold = float(match.group(2))
            if not bounds.contains(threshold):
                r.error(m[quantity], p, f"threshold must be {bounds.describe()}, got {threshold:g}")
                continue
            conditions.append(
                Condition(cast(ConditionQuantity, quantity), cast(ConditionOp, match.group(1)), threshold)
            )
        if not any(q in m for q in _CONDITION_BOUNDS):
            r.error(node, path, f"expected at least one condition ({', '.join(_CONDITION_BOUNDS)})")
            return None
        scope = r.choice(m["cells"], join(path, "cells"), ("any", "all", "mean")) if "cells" in m else "any"
        if scope is None or len(conditions) != sum(q in m for q in _CONDITION_BOUNDS):
            return None
        return Until(tuple(conditions), cast(CellScope, scope))

    def _rest(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        duration, until = self._ending(m, p, body, needed=True)
        return Rest(line=line, label=label, duration_s=duration, until=until)

    def _constant_current(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        current = self._required_number(m, p, body, "current_a", Range(-1000, 1000))
        if current == 0:
            self.r.error(
                m["current_a"], join(p, "current_a"), "expected a non-zero current (use rest for 0 A)"
            )
        duration, until = self._ending(m, p, body, needed=True)
        if current is None:
            return None
        return ConstantCurrent(line=line, label=label, duration_s=duration, until=until, current_a=current)

    def _constant_power(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        power = self._required_number(m, p, body, "power_w", Range(-1e6, 1e6))
        if power == 0:
            self.r.error(m["power_w"], join(p, "power_w"), "expected a non-zero power (use rest for 0 W)")
        duration, until = self._ending(m, p, body, needed=True)
        if power is None:
            return None
        return ConstantPower(line=line, label=label, duration_s=duration, until=until, power_w=power)

    def _cc_cv_charge(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        current = self._required_number(m, p, body, "current_a", Range(0, 1000, lo_open=True))
        voltage = self._required_number(m, p, body, "voltage_v", Range(0, 10, lo_open=True))
        cutoff = self._required_number(m, p, body, "cutoff_current_a", Range(0, 1000, lo_open=True))
        if current is not None and cutoff is not None and cutoff >= current:
            self.r.error(
                m["cutoff_current_a"],
                join(p, "cutoff_current_a"),
                f"expected a cut-off below the charge current ({current:g} A), got {cutoff:g}",
            )
        duration, until = self._ending(m, p, body, needed=False)
        if current is None or voltage is None or cutoff is None:
            return None
        return CcCvCharge(
            line=line,
            label=label,
            duration_s=duration,
            until=until,
            current_a=current,
            voltage_v=voltage,
            cutoff_current_a=cutoff,
        )

    def _drive_cycle(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        r = self.r
        scale = r.number(m["scale"], join(p, "scale"), POS) if "scale" in m else 1.0
        loops = r.integer(m["loops"], join(p, "loops"), Range(1, 100_000)) if "loops" in m else 1
        signal = r.choice(m["signal"], join(p, "signal"), ("current", "power")) if "signal" in m else None
        duration, until = self._ending(m, p, body, needed=False)
        cycle: DriveCycle | None = None
        if "cycle" not in m:
            r.error(body, join(p, "cycle"), "missing required key")
        elif "signal" not in m or signal is not None:
            cycle = self._cycle(
                m["cycle"], join(p, "cycle"), cast(DriveSignal | None, signal), m.get("signal")
            )
        if cycle is None or scale is None or loops is None:
            return None
        return DriveCycleSegment(
            line=line, label=label, duration_s=duration, until=until, cycle=cycle, scale=scale, loops=loops
        )

    def _cycle(
        self, node: yaml.Node, path: str, signal: DriveSignal | None, signal_node: yaml.Node | None
    ) -> DriveCycle | None:
        r = self.r
        ref = r.string(node, path, what=f"a bundled cycle ({', '.join(BUNDLED)}) or a .csv path")
        if ref is None:
            return None
        if ref in BUNDLED:
            spec = BUNDLED[ref]
            if signal is not None and signal != spec.signal:
                r.error(
                    signal_node,
                    path.rsplit(".", 1)[0] + ".signal",
                    f"bundled cycle {ref} is a {spec.signal} profile, got signal {signal!r}",
                )
                return None
            return self._read_cycle(node, path, BUNDLED_DIR / spec.file, ref, spec.signal, spec.to_si)
        if not ref.lower().endswith(".csv"):
            r.error(
                node,
                path,
                f"unknown drive cycle {ref!r}{suggest(ref, BUNDLED)}; expected one of {', '.join(BUNDLED)} "
                "or a path to a .csv file relative to the scenario",
            )
            return None
        if signal is None:
            r.error(
                node,
                path.rsplit(".", 1)[0],
                "missing required key 'signal' (current or power) for a drive cycle from a file",
            )
            return None
        resolved = self._beside(node, path, ref, "drive cycle")
        if resolved is None:
            return None
        return self._read_cycle(node, path, resolved, ref, signal, 1.0)

    def _read_cycle(
        self, node: yaml.Node, path: str, file: Path, name: str, signal: DriveSignal, to_si: float
    ) -> DriveCycle | None:
        try:
            return load_drive_cycle(file, name, signal, to_si)
        except DriveCycleError as exc:
            if exc.line is None:
                self.r.error(node, path, exc.message)
            else:
                # the problem is inside the CSV: name that file and its line, keep the scenario's key path
                self.r.errors.append(Issue(str(exc.file), exc.line, path, exc.message))
            return None

    def _ambient_segment(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        temp = self._required_number(m, p, body, "temp_c", TEMP_RANGE)
        rate = (
            self.r.number(m["rate_c_per_min"], join(p, "rate_c_per_min"), Range(0, 100, lo_open=True))
            if "rate_c_per_min" in m
            else None
        )
        if temp is None:
            return None
        return Ambient(line=line, label=label, temp_c=temp, rate_c_per_min=rate)

    def _soh(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        value = self.r.number(m["value"], join(p, "value"), SOH_RANGE) if "value" in m else None
        fade = (
            self.r.number(m["fade_per_h"], join(p, "fade_per_h"), Range(0, 1)) if "fade_per_h" in m else None
        )
        if "value" not in m and "fade_per_h" not in m:
            self.r.error(body, p, "expected value (set SOH) and/or fade_per_h (aging rate)")
        return Soh(line=line, label=label, value=value, fade_per_h=fade)

    def _eis_segment(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        return EisRequest(line=line, label=label)

    def _repeat(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        count = self._required_int(m, p, body, "count", Range(1, 1_000_000))
        segments = self._segments(m["segments"], join(p, "segments")) if "segments" in m else None
        if "segments" not in m:
            self.r.error(body, join(p, "segments"), "missing required key")
        if count is None or segments is None:
            return None
        return Repeat(line=line, label=label, count=count, segments=segments)

    def _sweep(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, line: int, label: str | None
    ) -> Segment | None:
        r = self.r
        parameter = (
            r.choice(m["parameter"], join(p, "parameter"), tuple(_SWEEP_BOUNDS)) if "parameter" in m else None
        )
        if "parameter" not in m:
            r.error(body, join(p, "parameter"), "missing required key")
        bounds = _SWEEP_BOUNDS.get(parameter or "", Range())
        values: list[float] | None = None
        if ("values" in m) == ("range" in m):
            r.error(body, p, "expected exactly one of values (a list) or range (start, stop, step)")
        elif "values" in m:
            values = []
            for ip, item in r.sequence(m["values"], join(p, "values")):
                v = r.number(item, ip, bounds)
                if v is not None:
                    values.append(v)
            if isinstance(m["values"], yaml.SequenceNode) and not m["values"].value:
                r.error(m["values"], join(p, "values"), "expected at least one value")
        else:
            values = self._range(m["range"], join(p, "range"), bounds)
        segments = self._segments(m["segments"], join(p, "segments")) if "segments" in m else None
        if "segments" not in m:
            r.error(body, join(p, "segments"), "missing required key")
        if parameter is None or values is None or segments is None:
            return None
        return Sweep(
            line=line,
            label=label,
            parameter=cast(SweepParameter, parameter),
            values=tuple(values),
            segments=segments,
        )

    def _range(self, node: yaml.Node, path: str, bounds: Range) -> list[float] | None:
        r = self.r
        m = r.mapping(node, path, ("start", "stop", "step"), required=("start", "stop", "step"))
        if m is None or len(m) < 3:
            return None
        start = r.number(m["start"], join(path, "start"), bounds)
        stop = r.number(m["stop"], join(path, "stop"), bounds)
        step = r.number(m["step"], join(path, "step"))
        if start is None or stop is None or step is None:
            return None
        if step == 0 or (stop - start) * step < 0:
            r.error(
                m["step"],
                join(path, "step"),
                f"expected a step that goes from {start:g} towards {stop:g}, got {step:g}",
            )
            return None
        n = math.floor((stop - start) / step + 1e-9) + 1
        if n > 10_000:
            r.error(m["step"], join(path, "step"), f"{n} values; at most 10000")
            return None
        # computed from the index, not accumulated, so 0.1 steps do not drift past stop
        return [round(start + i * step, 12) for i in range(n)]

    def _required_number(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, key: str, bounds: Range
    ) -> float | None:
        if key not in m:
            self.r.error(body, join(p, key), "missing required key")
            return None
        return self.r.number(m[key], join(p, key), bounds)

    def _required_int(
        self, m: dict[str, yaml.Node], p: str, body: yaml.Node, key: str, bounds: Range
    ) -> int | None:
        if key not in m:
            self.r.error(body, join(p, key), "missing required key")
            return None
        return self.r.integer(m[key], join(p, key), bounds)

    # -- faults ---------------------------------------------------------------------------------------------

    def _faults(self, node: yaml.Node, scenario_seed: int) -> tuple[Fault, ...] | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return ()
        out: list[Fault] = []
        ok = True
        for index, (p, item) in enumerate(self.r.sequence(node, "faults")):
            fault = self._fault(item, p, index, scenario_seed)
            if fault is None:
                ok = False
            else:
                out.append(fault)
        if not isinstance(node, yaml.SequenceNode):
            return None
        return tuple(out) if ok else None

    def _fault(self, node: yaml.Node, path: str, index: int, scenario_seed: int) -> Fault | None:
        r = self.r
        if not isinstance(node, yaml.MappingNode):
            r.error(node, path, f"expected a fault (a mapping with kind, start_s, ...), got {shown(node)}")
            return None
        # the kind decides which further keys are allowed, so read it first
        kind: FaultKind | None = None
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == "kind":
                name = r.string(value_node, join(path, "kind"), what="a fault kind")
                if name is not None:
                    kind = KINDS_BY_NAME.get(name)
                    if kind is None:
                        r.error(
                            value_node,
                            join(path, "kind"),
                            f"unknown fault kind {name!r}{suggest(name, KINDS_BY_NAME)}; "
                            f"expected one of {', '.join(KINDS_BY_NAME)}",
                        )
                        return None
                break
        params = PARAMS[kind] if kind is not None else {}
        allowed = set(_FAULT_KEYS) | set(params)
        if kind in UNIT_PARAM_PREFIX:
            allowed |= {f"{UNIT_PARAM_PREFIX[kind]}_{u}" for u in SIGNAL_UNIT.values()}
        if kind in STREAM_KINDS:
            allowed.discard("cells")
        n_err = len(r.errors)
        m = r.mapping(node, path, allowed if kind is not None else _FAULT_KEYS, required=("kind",))
        if m is None or kind is None:
            return None
        start_s: float | None = None
        start_segment: str | None = None
        offset = 0.0
        if ("start_s" in m) == ("start" in m):
            r.error(
                node,
                path,
                "expected exactly one of start_s (absolute) or start (segment: LABEL, offset_s: N)",
            )
        elif "start_s" in m:
            start_s = r.number(m["start_s"], join(path, "start_s"), NONNEG)
        else:
            sm = r.mapping(m["start"], join(path, "start"), ("segment", "offset_s"), required=("segment",))
            if sm is not None and "segment" in sm:
                start_segment = r.string(sm["segment"], join(path, "start.segment"), what="a segment label")
                if start_segment is not None and start_segment not in self.labels:
                    known = ", ".join(sorted(self.labels)) or "none defined"
                    r.error(
                        sm["segment"],
                        join(path, "start.segment"),
                        f"no segment has label {start_segment!r}{suggest(start_segment, self.labels)} "
                        f"(labels: {known})",
                    )
                offset = (
                    (r.number(sm["offset_s"], join(path, "start.offset_s"), NONNEG) or 0.0)
                    if "offset_s" in sm
                    else 0.0
                )
        end_s = duration = None
        if "end_s" in m and "duration_s" in m:
            r.error(m["duration_s"], join(path, "duration_s"), "give end_s or duration_s, not both")
        elif "end_s" in m:
            end_s = r.number(m["end_s"], join(path, "end_s"), NONNEG)
            if end_s is not None and start_s is not None and end_s <= start_s:
                r.error(
                    m["end_s"],
                    join(path, "end_s"),
                    f"expected end_s after start_s ({start_s:g}), got {end_s:g}",
                )
        elif "duration_s" in m:
            duration = r.number(m["duration_s"], join(path, "duration_s"), DURATION)
        cells = self._fault_cells(m.get("cells"), join(path, "cells")) if kind not in STREAM_KINDS else None
        severity = r.number(m["severity"], join(path, "severity"), Range(0, 1)) if "severity" in m else 1.0
        seed = (
            r.integer(m["seed"], join(path, "seed"), Range(0, MAX_SEED))
            if "seed" in m
            else _derived_seed(scenario_seed, index)
        )
        values = self._fault_params(kind, m, path, node)
        if len(r.errors) != n_err or severity is None or seed is None or values is None:
            return None
        return Fault(
            line=line_of(node) or 0,
            kind=kind,
            start_s=start_s,
            start_segment=start_segment,
            start_offset_s=offset,
            end_s=end_s,
            duration_s=duration,
            cells=cells,
            severity=severity,
            seed=seed,
            params=MappingProxyType(values),
        )

    def _fault_cells(self, node: yaml.Node | None, path: str) -> tuple[int, ...] | None:
        r = self.r
        count = self.cell_count
        if node is None or (isinstance(node, yaml.ScalarNode) and node.value == "all"):
            return tuple(range(count)) if count else ()
        if not isinstance(node, yaml.SequenceNode):
            r.error(node, path, f'expected "all" or a list of cell indices, got {shown(node)}')
            return None
        out: list[int] = []
        hi = (count or MAX_CELLS) - 1
        for p, item in r.sequence(node, path):
            i = r.scalar(item, p)
            if isinstance(i, bool) or not isinstance(i, int):
                r.error(item, p, f"expected a cell index (an integer), got {shown(item)}")
            elif not 0 <= i <= hi:
                r.error(
                    item,
                    p,
                    f"cell index {i} out of range: cells are numbered 0..{hi} (cells.count = {count})",
                )
            elif i in out:
                r.error(item, p, f"cell {i} listed twice")
            else:
                out.append(i)
        if not node.value:
            r.error(node, path, "expected at least one cell")
        return tuple(out)

    def _fault_params(
        self, kind: FaultKind, m: dict[str, yaml.Node], path: str, node: yaml.Node
    ) -> dict[str, float | int | str] | None:
        r = self.r
        values: dict[str, float | int | str] = {}
        for key, spec in PARAMS[kind].items():
            p = join(path, key)
            if key not in m:
                if spec.default is None:
                    r.error(node, p, f"missing required key for a {kind_name(kind)} fault")
                else:
                    values[key] = spec.default
                continue
            got: float | int | str | None
            if spec.choices is not None:
                got = r.choice(m[key], p, spec.choices)
            elif spec.integer:
                got = r.integer(m[key], p, spec.bounds or Range())
            else:
                got = r.number(m[key], p, spec.bounds or Range())
            if got is not None:
                values[key] = got
        prefix = UNIT_PARAM_PREFIX.get(kind)
        if prefix is not None:
            signal = str(values.get("signal", "impedance"))
            want = f"{prefix}_{SIGNAL_UNIT[signal]}"
            given = [k for k in m if k.startswith(prefix + "_")]
            for k in given:
                if k != want:
                    r.error(m[k], join(path, k), f"a {signal} signal takes {want}, not {k}")
            if want in m:
                v = r.number(m[want], join(path, want), POS if prefix == "lsb" else Range())
                if v is not None:
                    values[want] = v
            elif not given:
                r.error(
                    node,
                    join(path, want),
                    f"missing required key for a {kind_name(kind)} fault on the {signal} signal",
                )
        if kind == FaultKind.DROPPED_POINTS and "signal" in m:
            r.error(m["signal"], join(path, "signal"), "dropped_points acts on spectra only")
        return values


_SEGMENT_KINDS_ORDER = tuple(_SEGMENT_KEYS)
_SEGMENT_BUILDERS = {
    "rest": _Builder._rest,
    "constant_current": _Builder._constant_current,
    "constant_power": _Builder._constant_power,
    "drive_cycle": _Builder._drive_cycle,
    "cc_cv_charge": _Builder._cc_cv_charge,
    "ambient": _Builder._ambient_segment,
    "soh": _Builder._soh,
    "eis": _Builder._eis_segment,
    "repeat": _Builder._repeat,
    "sweep": _Builder._sweep,
}


def _expanded(segments: tuple[Segment, ...]) -> float:
    total = 0.0
    for seg in segments:
        if isinstance(seg, Repeat):
            total += seg.count * _expanded(seg.segments)
        elif isinstance(seg, Sweep):
            total += len(seg.values) * _expanded(seg.segments)
        else:
            total += 1
    return total


def _derived_seed(scenario_seed: int, index: int) -> int:
    """A fault's seed when the file gives none: independent per fault, fixed by the scenario seed."""
    state = np.random.SeedSequence([scenario_seed, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])
