"""The mapping file of ``eis-hil can-bridge``: which stream fields go into which DBC signals.

A YAML file, validated like a scenario (every problem reported as ``file:line: key.path: message``)::

    messages:
      - message: AFE_CellVoltages          # a message of the DBC, by name
        period_ms: 100                     # sent every 100 ms of simulated time
        cells: [0-159]                     # stream cells carried (default: every cell of the stream)
        index_offset: 0                    # {index} = stream cell + index_offset
        signals:
          - field: voltage                 # voltage (V), temperature (degC), current (A), soc, soh (0..1)
            name: "CellVoltage_{index:03d}"
            # scale/offset: stream unit -> signal unit; default from the DBC's unit (V -> mV: 1000)
            invalid_flag: "CellVoltage_{index:03d}_invalidFlag"
            invalid_value: 1               # the flag's value that means invalid
            invalid_when: [measurement_fault]   # CellFlags of the stream that make the reading invalid

``load_mapping`` checks the file on its own; ``bind`` checks it against a DBC (cantools) and the stream's
cells, and returns the frames to build per period: one per multiplexer value the cells' signals sit under
(the DBC says which), or one per message when it is not multiplexed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import protocol as p
from hil_server.scenario._errors import Issue, sort_key
from hil_server.scenario._reader import Range, Reader, line_of, suggest
from hil_server.scenario._yaml import RefusedError, compose, read_limited

MAPPINGS_DIR = Path(__file__).resolve().parent / "mappings"
SHIPPED = {"foxbms": MAPPINGS_DIR / "foxbms_afe.yaml"}
"""Mappings that ship with eis-hil, by short name (``--mapping foxbms``)."""

FIELDS = {
    "voltage": ("voltage_uV", 1e-6, "V"),
    "temperature": ("temperature_mdegC", 1e-3, "degC"),
    "current": ("current_uA", 1e-6, "A"),
    "soc": ("soc_ppm", 1e-6, "1"),
    "soh": ("soh_ppm", 1e-6, "1"),
}
"""Stream field -> (CELL_STATES record column, factor to the field's unit, unit)."""

_UNIT_SCALE: dict[str, dict[str, float]] = {
    "V": {"v": 1.0, "mv": 1e3, "uv": 1e6, "µv": 1e6},
    "degC": {"degc": 1.0, "°c": 1.0, "c": 1.0, "deg c": 1.0, "ddegc": 10.0, "0.1degc": 10.0},
    "A": {"a": 1.0, "ma": 1e3},
    "1": {"": 1.0, "%": 100.0, "perc": 100.0, "ppm": 1e6},
}
"""DBC unit (lower case) -> factor from the stream field's unit; anything else needs ``scale`` in the file."""

FLAG_NAMES = {flag.name.lower(): int(flag) for flag in p.CellFlags if flag.name and flag.value}
_CELL_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


class MappingError(Exception):
    """A mapping file that cannot be used; ``errors`` lists every problem, each with file and line."""

    def __init__(self, errors: list[Issue]) -> None:
        self.errors = sorted(errors, key=sort_key)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "; ".join(str(e) for e in self.errors)


@dataclasses.dataclass(frozen=True)
class SignalSpec:
    field: str
    name: str
    invalid_flag: str | None
    invalid_value: int
    invalid_when: int
    """CellFlags bit mask."""
    scale: float | None
    offset: float
    line: int | None


@dataclasses.dataclass(frozen=True)
class MessageSpec:
    message: str
    period_ms: float
    cells: tuple[int, ...] | None
    index_offset: int
    signals: tuple[SignalSpec, ...]
    line: int | None


@dataclasses.dataclass(frozen=True)
class MappingSpec:
    file: str
    messages: tuple[MessageSpec, ...]


def resolve_mapping_path(text: str) -> Path:
    """A shipped mapping's short name or a path."""
    return SHIPPED.get(text, Path(text))


def load_mapping(path: str | Path) -> MappingSpec:
    """Read and check a mapping file; MappingError lists every problem with its line."""
    file = resolve_mapping_path(str(path))
    name = str(file)
    try:
        root, loader = compose(read_limited(file))
    except OSError as exc:
        raise MappingError([Issue(name, None, "", f"cannot read: {exc.strerror or exc}")]) from None
    except RefusedError as exc:
        raise MappingError([Issue(name, exc.line, "", exc.message)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError([Issue(name, line, "", f"not valid YAML: {problem}")]) from None
    r = Reader(name, loader)
    if root is None:
        raise MappingError([Issue(name, 1, "", "empty file: expected 'messages:'")])
    top = r.mapping(root, "", ("messages",), required=("messages",))
    messages: list[MessageSpec] = []
    if top is not None and "messages" in top:
        for path_, node in r.sequence(top["messages"], "messages"):
            msg = _message(r, node, path_)
            if msg is not None:
                messages.append(msg)
        if not messages and not r.errors:
            r.error(top["messages"], "messages", "expected at least one message")
    if r.errors:
        raise MappingError(r.errors)
    return MappingSpec(name, tuple(messages))


def _message(r: Reader, node: yaml.Node, path: str) -> MessageSpec | None:
    allowed = ("message", "period_ms", "cells", "index_offset", "signals")
    m = r.mapping(node, path, allowed, required=("message", "period_ms", "signals"))
    if m is None or any(k not in m for k in ("message", "period_ms", "signals")):
        return None
    name = r.string(m["message"], f"{path}.message", what="a DBC message name")
    period = r.number(m["period_ms"], f"{path}.period_ms", Range(1, 3_600_000))
    offset = 0
    if "index_offset" in m:
        offset = r.integer(m["index_offset"], f"{path}.index_offset", Range(-65535, 65535)) or 0
    cells = _cells(r, m["cells"], f"{path}.cells") if "cells" in m else None
    signals = [s for sp, sn in r.sequence(m["signals"], f"{path}.signals") if (s := _signal(r, sn, sp))]
    if name is None or period is None or not signals:
        return None
    return MessageSpec(name, period, cells, offset, tuple(signals), line_of(node))


def _cells(r: Reader, node: yaml.Node, path: str) -> tuple[int, ...] | None:
    out: list[int] = []
    for item_path, item in r.sequence(node, path):
        value = r.scalar(item, item_path)
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        match = _CELL_RANGE.match(text)
        if match is None:
            r.error(item, item_path, f"expected a cell index or a range like 0-95, got {value!r}")
            continue
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo or hi > 65534:
            r.error(item, item_path, f"expected a range first-last with first <= last <= 65534, got {text!r}")
            continue
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        r.error(node, path, "a cell is listed twice")
        return None
    return tuple(out) if out else None


def _signal(r: Reader, node: yaml.Node, path: str) -> SignalSpec | None:
    allowed = ("field", "name", "scale", "offset", "invalid_flag", "invalid_value", "invalid_when")
    m = r.mapping(node, path, allowed, required=("field", "name"))
    if m is None or "field" not in m or "name" not in m:
        return None
    field = r.choice(m["field"], f"{path}.field", tuple(FIELDS))
    name = _template(r, m["name"], f"{path}.name")
    flag = _template(r, m["invalid_flag"], f"{path}.invalid_flag") if "invalid_flag" in m else None
    scale = r.number(m["scale"], f"{path}.scale") if "scale" in m else None
    if scale == 0:
        r.error(m["scale"], f"{path}.scale", "expected a non-zero factor")
    offset = (r.number(m["offset"], f"{path}.offset") or 0.0) if "offset" in m else 0.0
    value = 1
    if "invalid_value" in m:
        value = r.integer(m["invalid_value"], f"{path}.invalid_value", Range(0, 1 << 32)) or 0
    when = FLAG_NAMES["measurement_fault"]
    if "invalid_when" in m:
        when = 0
        for fp, fn in r.sequence(m["invalid_when"], f"{path}.invalid_when"):
            flag_name = r.choice(fn, fp, tuple(FLAG_NAMES))
            when |= FLAG_NAMES.get(flag_name or "", 0)
    if ("invalid_value" in m or "invalid_when" in m) and "invalid_flag" not in m:
        r.error(node, f"{path}.invalid_flag", "invalid_value/invalid_when given without invalid_flag")
    if field is None or name is None:
        return None
    return SignalSpec(field, name, flag, value, when, scale, offset, line_of(node))


def _template(r: Reader, node: yaml.Node, path: str) -> str | None:
    text = r.string(node, path, what="a signal name, e.g. CellVoltage_{index:03d}")
    if text is None:
        return None
    try:
        text.format(index=0)
    except (KeyError, IndexError, ValueError) as exc:
        r.error(node, path, f"bad template {text!r}: only {{index}} (with a format spec) is allowed ({exc})")
        return None
    return text


# -- binding to a DBC and the stream's cells ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Slot:
    """One cell's value in one frame."""

    cell: int
    signal: str
    field: str
    scale: float
    offset: float
    invalid_flag: str | None
    invalid_value: int
    invalid_when: int
    minimum: float | None
    maximum: float | None
    resolution: float
    raw_offset: float


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """One CAN frame per period: a message, its multiplexer value (None if not multiplexed), the slots, and
    the values of every other signal it has (zero, or the nearest legal value; invalid flags set)."""

    message: Any
    """cantools.database.can.Message"""
    mux_signal: str | None
    mux_value: int | None
    slots: tuple[Slot, ...]
    fill: dict[str, float]


@dataclasses.dataclass(frozen=True)
class MessagePlan:
    message: Any
    period_s: float
    frames: tuple[FramePlan, ...]

    @property
    def name(self) -> str:
        return str(self.message.name)


def bind(spec: MappingSpec, db: Any, stream_cells: Sequence[int]) -> list[MessagePlan]:
    """The frames to send for a DBC (a cantools database) and the cells the stream carries. MappingError,
    with the mapping file's lines, for a message or signal the DBC lacks, a unit it cannot convert, or a
    stream cell the DBC has no signal for."""
    errors: list[Issue] = []
    plans: list[MessagePlan] = []
    available = set(stream_cells)
    for i, ms in enumerate(spec.messages):
        where = f"messages[{i}]"
        try:
            message = db.get_message_by_name(ms.message)
        except KeyError:
            names = sorted(str(m.name) for m in db.messages)
            errors.append(
                Issue(
                    spec.file,
                    ms.line,
                    f"{where}.message",
                    f"no message {ms.message!r} in the DBC{suggest(ms.message, names)}",
                )
            )
            continue
        by_name = {s.name: s for s in message.signals}
        mux_signal = next((s.name for s in message.signals if s.is_multiplexer), None)
        cells = [c for c in (ms.cells if ms.cells is not None else stream_cells)]
        missing = [c for c in cells if c not in available]
        if ms.cells is not None and missing:
            errors.append(
                Issue(
                    spec.file,
                    ms.line,
                    f"{where}.cells",
                    f"the stream has no cell {missing[0]} "
                    f"({len(missing)} of the listed cells are not streamed)",
                )
            )
            continue
        groups: dict[int | None, list[Slot]] = {}
        for j, ss in enumerate(ms.signals):
            spath = f"{where}.signals[{j}]"
            bad = False
            for cell in cells:
                index = cell + ms.index_offset
                name = ss.name.format(index=index)
                sig = by_name.get(name)
                if sig is None:
                    have = sum(1 for c in cells if ss.name.format(index=c + ms.index_offset) in by_name)
                    errors.append(
                        Issue(
                            spec.file,
                            ss.line,
                            f"{spath}.name",
                            f"cell {cell}: no signal {name!r} in "
                            f"{message.name} ({have} of the {len(cells)} cells have one; restrict the "
                            "cells with --cells or 'cells:')",
                        )
                    )
                    bad = True
                    break
                flag = ss.invalid_flag.format(index=index) if ss.invalid_flag else None
                if flag is not None and flag not in by_name:
                    errors.append(
                        Issue(
                            spec.file,
                            ss.line,
                            f"{spath}.invalid_flag",
                            f"no signal {flag!r} in {message.name}",
                        )
                    )
                    bad = True
                    break
                mux = _mux_value(sig)
                if flag is not None and _mux_value(by_name[flag]) != mux:
                    errors.append(
                        Issue(
                            spec.file,
                            ss.line,
                            f"{spath}.invalid_flag",
                            f"{flag!r} is not in the same multiplexed frame as {name!r}",
                        )
                    )
                    bad = True
                    break
                scale = ss.scale if ss.scale is not None else _unit_scale(ss.field, str(sig.unit or ""))
                if scale is None:
                    errors.append(
                        Issue(
                            spec.file,
                            ss.line,
                            f"{spath}.scale",
                            f"{name!r} is in {sig.unit!r}: cannot "
                            f"convert from {FIELDS[ss.field][2]} by itself; give 'scale' (and 'offset')",
                        )
                    )
                    bad = True
                    break
                groups.setdefault(mux, []).append(
                    Slot(
                        cell,
                        name,
                        ss.field,
                        scale,
                        ss.offset,
                        flag,
                        ss.invalid_value,
                        ss.invalid_when,
                        sig.minimum,
                        sig.maximum,
                        float(sig.scale),
                        float(sig.offset),
                    )
                )
            if bad:
                break
        else:
            frames = []
            for mux, slots in sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
                used = {s.signal for s in slots} | {s.invalid_flag for s in slots if s.invalid_flag}
                flags = [
                    (_template_regex(ss.invalid_flag), ss.invalid_value)
                    for ss in ms.signals
                    if ss.invalid_flag
                ]
                fill = _fill(message, mux_signal, mux, used, flags)
                frames.append(FramePlan(message, mux_signal, mux, tuple(slots), fill))
            plans.append(MessagePlan(message, ms.period_ms / 1000.0, tuple(frames)))
    if errors:
        raise MappingError(errors)
    return plans


def _mux_value(sig: Any) -> int | None:
    ids = sig.multiplexer_ids
    return int(ids[0]) if ids else None


def _unit_scale(field: str, unit: str) -> float | None:
    return _UNIT_SCALE[FIELDS[field][2]].get(unit.strip().lower())


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{index[^}]*\}", template)
    return re.compile("^" + r"-?\d+".join(re.escape(part) for part in parts) + "$")


def _fill(
    message: Any,
    mux_signal: str | None,
    mux: int | None,
    used: set[str],
    flags: list[tuple[re.Pattern[str], int]],
) -> dict[str, float]:
    """Every signal of this frame the mapping does not fill: an invalid flag of a cell the stream does not
    carry is set (no reading is not a valid reading of 0), anything else 0 or its nearest legal value."""
    fill: dict[str, float] = {}
    for sig in message.signals:
        if sig.name in used or sig.is_multiplexer:
            continue
        if sig.multiplexer_ids and (mux is None or mux not in sig.multiplexer_ids):
            continue
        flag_value = next((v for rx, v in flags if rx.match(sig.name)), None)
        if flag_value is not None:
            fill[sig.name] = float(flag_value)
            continue
        value = 0.0
        if sig.minimum is not None and value < sig.minimum:
            value = float(sig.minimum)
        if sig.maximum is not None and value > sig.maximum:
            value = float(sig.maximum)
        fill[sig.name] = value
    if mux_signal is not None and mux is not None:
        fill[mux_signal] = mux
    return fill
