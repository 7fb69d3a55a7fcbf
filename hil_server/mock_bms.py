"""The mock BMS: ``eis-hil client`` and ``tools/mock_bms.py``.

    eis-hil client 127.0.0.1 7700                         # live table on a terminal, one line per frame else
    eis-hil client 127.0.0.1 7700 --out run.jsonl --seconds 60
    eis-hil client 127.0.0.1 7700 --control pause seek=120 resume --count 0

It connects, subscribes, and checks what arrives: every frame's CRCs (the decoder rejects bad ones and they
are counted), sequence continuity (gaps and the number of frames they hide), and the server's heartbeats
(lateness p50/p99/max of its sends, the frames it dropped for us, the simulation state). Three outputs:

- ``--table`` (default on a terminal): a table redrawn in place at most 4 times a second, one row per cell.
  The table is a pure function of a :class:`MonitorState` (:func:`render_table`), so it is tested without a
  terminal.
- ``--lines`` (default otherwise): one line per frame (``frame_text.describe``).
- ``--out FILE.jsonl``: every frame as a JSON line with its receive time (``t_rx``, Unix seconds).

``--control`` sends commands once connected (:func:`parse_control` lists the forms) and prints each ACK or
NAK. Exit codes: 0 clean stop (Ctrl-C, ``--count``, ``--seconds``, server BYE with SHUTDOWN or a normal
close), 1 a command was NAKed, the server ended the session for another reason, or ``--strict`` and a gap
was seen, 2 cannot connect, authenticate or subscribe, or the connection was lost without a BYE.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import structlog

import protocol as p

from ._cli_util import read_secret
from .client import ClientError, HilClient
from .frame_text import describe, describe_message

log = structlog.get_logger(__name__)

REDRAW_S = 0.25
"""The table is redrawn at most this often (4 Hz)."""

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_SEQ_MOD = 2**32


# -- command line: control commands, subscription mask ---------------------------------------------------

CONTROL_FORMS = (
    "pause, resume, stop, start, seek=SECONDS, speed=X (1 = real time, 0 = as fast as the slowest client), "
    "load=AMPS[@CELL] (positive = discharge), load=off[@CELL], ambient=DEGC, ambient=off, "
    "inject=KIND:SEVERITY[@CELL][/SECONDS] (KIND a fault kind name such as contact_resistance or its number, "
    "SEVERITY a fraction 0..1 or a percentage like 50%), clear=FAULT_ID (0 or all: every injected fault), "
    "spectrum[@CELL]"
)


class ControlSyntaxError(ValueError):
    """A ``--control`` argument that is not one of :data:`CONTROL_FORMS`."""

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"--control {text!r}: {problem}; accepted forms: {CONTROL_FORMS}")
        self.text = text
        self.problem = problem


def _number(text: str, what: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ControlSyntaxError(whole, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ControlSyntaxError(whole, f"{what} {text!r} is not a finite number")
    return value


def _scaled(text: str, what: str, whole: str, scale: float, lo: int, hi: int) -> int:
    value = round(_number(text, what, whole) * scale)
    if not lo <= value <= hi:
        raise ControlSyntaxError(
            whole, f"{what} {text!r} does not fit the wire field ({lo}..{hi} after scaling)"
        )
    return value


def _cell(text: str, whole: str) -> int:
    if text.lower() == "all":
        return p.ALL_CELLS
    try:
        cell = int(text)
    except ValueError:
        raise ControlSyntaxError(whole, f"cell {text!r} is not a cell index (0, 1, ...) or 'all'") from None
    if not 0 <= cell <= _U16_MAX:
        raise ControlSyntaxError(whole, f"cell {cell} is outside 0..{_U16_MAX}")
    return cell


def _fault_kind(text: str, whole: str) -> int:
    name = text.strip().upper().replace("-", "_")
    if name in p.FaultKind.__members__:
        return int(p.FaultKind[name])
    try:
        value = int(text, 0)
    except ValueError:
        known = ", ".join(k.name.lower() for k in p.FaultKind)
        raise ControlSyntaxError(whole, f"fault kind {text!r} is not one of {known} or a number") from None
    if not 0 <= value <= 0xFF:
        raise ControlSyntaxError(whole, f"fault kind {value} is outside 0..255")
    return value


def _severity_ppm(text: str, whole: str) -> int:
    if text.endswith("%"):
        return _scaled(text[:-1], "severity", whole, 1e4, _I64_MIN, _I64_MAX)
    return _scaled(text, "severity", whole, 1e6, _I64_MIN, _I64_MAX)


def parse_control(text: str) -> p.Control:
    """One ``--control`` argument as a CONTROL message. Only the syntax and what the wire fields can carry
    are checked here; whether a value makes sense (a negative seek, an unknown cell) is the server's to say,
    in its NAK."""
    head, eq, arg = text.strip().partition("=")
    name, at, cell_text = head.partition("@")
    name = name.lower()
    cmd = p.ControlCommand
    simple = {"pause": cmd.PAUSE, "resume": cmd.RESUME, "stop": cmd.STOP, "start": cmd.START}
    if name in simple:
        if eq or at:
            raise ControlSyntaxError(text, f"{name} takes no value and no cell")
        return p.Control(simple[name])
    if name == "spectrum":
        if eq:
            raise ControlSyntaxError(text, "spectrum takes no value, only an optional @CELL")
        return p.Control.request_spectrum(_cell(cell_text, text) if at else p.ALL_CELLS)
    if at:
        raise ControlSyntaxError(text, "a cell goes after the value (load=AMPS@CELL), not after the name")
    if name not in ("seek", "speed", "load", "ambient", "inject", "clear"):
        raise ControlSyntaxError(text, f"unknown command {name!r}")
    if not eq or not arg:
        raise ControlSyntaxError(text, f"{name} needs a value ({name}=...)")
    if name == "seek":
        return p.Control.seek(_scaled(arg, "seek target (seconds)", text, 1e6, _I64_MIN, _I64_MAX))
    if name == "speed":
        return p.Control.set_speed(_scaled(arg, "speed factor", text, 1e6, _I64_MIN, _I64_MAX))
    if name == "load":
        amps, at, cell_text = arg.partition("@")
        cell = _cell(cell_text, text) if at else p.ALL_CELLS
        if amps.lower() == "off":
            return p.Control(cmd.SET_LOAD_CURRENT, cell=cell, aux=1)
        return p.Control.set_load_current(_scaled(amps, "current (A)", text, 1e6, _I64_MIN, _I64_MAX), cell)
    if name == "ambient":
        if arg.lower() == "off":
            return p.Control(cmd.SET_AMBIENT_TEMPERATURE, aux=1)
        return p.Control.set_ambient_temperature(
            _scaled(arg, "ambient temperature (C)", text, 1e3, _I64_MIN, _I64_MAX)
        )
    if name == "clear":
        if arg.lower() == "all":
            return p.Control.clear_fault(0)
        try:
            fault_id = int(arg)
        except ValueError:
            raise ControlSyntaxError(text, f"fault id {arg!r} is not a whole number or 'all'") from None
        if not 0 <= fault_id <= _U32_MAX:
            raise ControlSyntaxError(text, f"fault id {fault_id} is outside 0..{_U32_MAX}")
        return p.Control.clear_fault(fault_id)
    # inject=KIND:SEVERITY[@CELL][/SECONDS]
    rest, slash, seconds = arg.partition("/")
    rest, at, cell_text = rest.partition("@")
    kind_text, colon, severity = rest.partition(":")
    if not colon or not kind_text or not severity:
        raise ControlSyntaxError(text, "inject needs KIND:SEVERITY")
    return p.Control.inject_fault(
        _fault_kind(kind_text, text),
        cell=_cell(cell_text, text) if at else p.ALL_CELLS,
        severity_ppm=_severity_ppm(severity, text),
        duration_ms=_scaled(seconds, "duration (seconds)", text, 1e3, 0, _U32_MAX) if slash else 0,
    )


MASK_NAMES: dict[str, p.SubscribeMask] = {
    "states": p.SubscribeMask.CELL_STATES,
    "spectra": p.SubscribeMask.EIS_SPECTRUM,
    "points": p.SubscribeMask.EIS_POINT,
    "faults": p.SubscribeMask.FAULT_EVENT,
    "heartbeats": p.SubscribeMask.HEARTBEAT,
    "all": p.SubscribeMask.ALL,
}


def parse_mask(text: str) -> int:
    """``states,spectra,...`` as a SUBSCRIBE mask."""
    mask = 0
    for raw in text.split(","):
        name = raw.strip().lower()
        if name not in MASK_NAMES:
            raise argparse.ArgumentTypeError(
                f"{raw.strip()!r} is not a stream; give a comma-separated list of {', '.join(MASK_NAMES)}"
            )
        mask |= MASK_NAMES[name]
    return mask


def _control_arg(text: str) -> p.Control:
    try:
        return parse_control(text)
    except ControlSyntaxError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {exc.problem}; accepted forms: {CONTROL_FORMS}"
        ) from None


EIS_MODES = {"default": p.EisMode.SCENARIO_DEFAULT, "instant": p.EisMode.INSTANT, "sweep": p.EisMode.SWEEP}


# -- what has been received: a state the table is drawn from -----------------------------------------------


@dataclasses.dataclass
class SpectrumSummary:
    """The last spectrum of a cell, reduced to what one table row shows."""

    t_sim_us: int
    spectrum_id: int
    n_points: int
    f_high_hz: float
    z_high_mohm: float
    """abs(Z) at the highest frequency."""
    f_low_hz: float
    z_low_mohm: float
    """abs(Z) at the lowest frequency."""
    kk_residual: float

    @classmethod
    def of(cls, msg: p.EisSpectrum) -> SpectrumSummary:
        if msg.freq_hz.size == 0:
            nan = float("nan")
            return cls(msg.t_sim_us, msg.spectrum_id, 0, nan, nan, nan, nan, float(msg.kk_residual))
        hi, lo = int(np.argmax(msg.freq_hz)), int(np.argmin(msg.freq_hz))
        mag = np.hypot(msg.z_re_ohm.astype(np.float64), msg.z_im_ohm.astype(np.float64)) * 1e3
        return cls(
            msg.t_sim_us,
            msg.spectrum_id,
            int(msg.freq_hz.size),
            float(msg.freq_hz[hi]),
            float(mag[hi]),
            float(msg.freq_hz[lo]),
            float(mag[lo]),
            float(msg.kk_residual),
        )


@dataclasses.dataclass
class MonitorState:
    """Everything the table shows, updated frame by frame (:meth:`update`); no I/O, no clock.

    The link counters that the client keeps (``frames``, ``gaps``, ``lost``, ``late``, ``duplicates``,
    ``bad_frames``) are copied in by the caller before drawing."""

    scenario: str
    endpoint: str
    cell_count: int
    subscribed: int = 0
    t_sim_us: int = 0
    step: int = 0
    sim_state: int | None = None
    frames: int = 0
    gaps: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    bad_frames: int = 0
    drops: int = 0
    queue_depth: int = 0
    heartbeats: int = 0
    lateness_us: tuple[int, int, int] | None = None
    """p50, p99, max of the server's last heartbeat."""
    worst_p99_us: int = 0
    worst_max_us: int = 0
    p50s_us: list[int] = dataclasses.field(default_factory=list)
    by_type: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    acks: int = 0
    naks: int = 0
    faults: dict[int, tuple[int, list[int]]] = dataclasses.field(default_factory=dict)
    """Active faults: fault id -> (kind, cells)."""
    spectra: dict[int, SpectrumSummary] = dataclasses.field(default_factory=dict)
    sweeps: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)
    """Sweeps in progress: cell -> (points received, points in the sweep)."""
    bye: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    """Lines for the table's header: the answers to ``--control`` commands."""

    def __post_init__(self) -> None:
        n = self.cell_count
        self.seen = np.zeros(n, dtype=bool)
        self.flags = np.zeros(n, dtype=np.int64)
        self.voltage_uV = np.zeros(n, dtype=np.int64)
        self.current_uA = np.zeros(n, dtype=np.int64)
        self.temperature_mdegC = np.zeros(n, dtype=np.int64)
        self.soc_ppm = np.zeros(n, dtype=np.int64)
        self.soh_ppm = np.zeros(n, dtype=np.int64)

    @classmethod
    def from_hello(cls, hello: p.ServerHello, endpoint: str) -> MonitorState:
        return cls(scenario=hello.scenario_id, endpoint=endpoint, cell_count=hello.cell_count)

    def update(self, frame: p.Frame) -> None:
        msg = frame.message
        self.by_type[p.MsgType(msg.MSG_TYPE).name] += 1
        match msg:
            case p.CellStates():
                self.t_sim_us, self.step = msg.t_sim_us, msg.step
                r = msg.records
                idx = r["cell"].astype(np.intp)
                ok = idx < self.cell_count  # a server that sends a cell it did not announce is not our crash
                idx = idx[ok]
                self.seen[idx] = True
                self.flags[idx] = r["flags"][ok]
                self.voltage_uV[idx] = r["voltage_uV"][ok]
                self.current_uA[idx] = r["current_uA"][ok]
                self.temperature_mdegC[idx] = r["temperature_mdegC"][ok]
                self.soc_ppm[idx] = r["soc_ppm"][ok]
                self.soh_ppm[idx] = r["soh_ppm"][ok]
            case p.EisSpectrum():
                self.spectra[msg.cell] = SpectrumSummary.of(msg)
                self.sweeps.pop(msg.cell, None)
            case p.EisPoint():
                self.sweeps[msg.cell] = (msg.point_index + 1, msg.n_points)
            case p.FaultEvent():
                if msg.phase == p.FaultPhase.START:
                    self.faults[msg.fault_id] = (msg.kind, [int(c) for c in msg.cells])
                else:
                    self.faults.pop(msg.fault_id, None)
            case p.Heartbeat():
                self.heartbeats += 1
                self.t_sim_us = msg.t_sim_us
                self.sim_state = msg.sim_state
                self.drops = msg.frames_dropped
                self.queue_depth = msg.queue_depth
                self.lateness_us = (msg.lateness_p50_us, msg.lateness_p99_us, msg.lateness_max_us)
                self.worst_p99_us = max(self.worst_p99_us, msg.lateness_p99_us)
                self.worst_max_us = max(self.worst_max_us, msg.lateness_max_us)
                self.p50s_us.append(msg.lateness_p50_us)
            case p.Ack():
                self.acks += 1
            case p.Nak():
                self.naks += 1
            case p.Bye():
                self.bye = describe(frame)
            case _:
                pass


# -- rendering --------------------------------------------------------------------------------------------

_FLAG_LETTERS = (
    (p.CellFlags.FAULT_ACTIVE, "F"),
    (p.CellFlags.MEASUREMENT_FAULT, "M"),
    (p.CellFlags.VOLTAGE_LOW_LIMIT, "L"),
    (p.CellFlags.VOLTAGE_HIGH_LIMIT, "H"),
    (p.CellFlags.CURRENT_LIMIT, "I"),
    (p.CellFlags.TEMPERATURE_LIMIT, "T"),
    (p.CellFlags.EXTRAPOLATED, "X"),
)
LEGEND = (
    "flags F fault, M measurement fault, L/H voltage low/high, I/T current/temperature limit, "
    "X extrapolated; |Z| in mOhm at the highest/lowest frequency in Hz; KK Lin-KK residual; "
    "age in simulated s"
)


def flag_letters(flags: int) -> str:
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit) or "-"


def _state_name(state: int | None) -> str:
    if state is None:
        return "?"
    try:
        return p.SimState(state).name
    except ValueError:
        return f"state {state}"


def _ms(us: int) -> str:
    return f"{us / 1e3:.2f}"


def lateness_text(state: MonitorState) -> str:
    if state.lateness_us is None:
        return "lateness n/a (no server heartbeat yet)"
    p50, p99, mx = state.lateness_us
    return (
        f"lateness p50 {_ms(p50)} p99 {_ms(p99)} max {_ms(mx)} ms "
        f"(worst p99 {_ms(state.worst_p99_us)} max {_ms(state.worst_max_us)})"
    )


def _freq(f: float) -> str:
    if not math.isfinite(f):
        return "?"
    if f >= 1e3:
        return f"{f / 1e3:.3g}k"
    return f"{f:.3g}"


def _num(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "nan"


def _mohm(value: float) -> str:
    """Three or four significant digits, never an exponent: 1522, 383.4, 12.35, 0.354."""
    if not math.isfinite(value):
        return "nan"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}" if abs(value) >= 1 else f"{value:.3f}"


_COLUMNS = (
    f"{'cell':>4} {'V':>7} {'I A':>7} {'T C':>6} {'SOC%':>5} {'SOH%':>5} {'flag':<4} "
    f"{'|Z|@f_hi':>10} {'|Z|@f_lo':>10} {'KK%':>5} {'age s':>6}"
)
"""One row: 79 characters (an 80-column terminal less the last column, which would wrap)."""


def _row(state: MonitorState, cell: int) -> str:
    if state.seen[cell]:
        main = (
            f"{cell:>4} {state.voltage_uV[cell] / 1e6:>7.4f} {state.current_uA[cell] / 1e6:>+7.3f} "
            f"{state.temperature_mdegC[cell] / 1e3:>6.2f} {state.soc_ppm[cell] / 1e4:>5.1f} "
            f"{state.soh_ppm[cell] / 1e4:>5.1f} {flag_letters(int(state.flags[cell])):<4}"
        )
    else:
        main = f"{cell:>4} {'-':>7} {'-':>7} {'-':>6} {'-':>5} {'-':>5} {'':<4}"
    s = state.spectra.get(cell)
    if s is None:
        eis = f" {'-':>10} {'-':>10} {'-':>5} {'-':>6}"
    else:
        hi = f"{_mohm(s.z_high_mohm)}@{_freq(s.f_high_hz)}"
        lo = f"{_mohm(s.z_low_mohm)}@{_freq(s.f_low_hz)}"
        kk = _num(s.kk_residual * 100, ".3f")
        age = max(0, state.t_sim_us - s.t_sim_us) / 1e6
        eis = f" {hi:>10} {lo:>10} {kk:>5} {age:>6.1f}"
    sweep = state.sweeps.get(cell)
    extra = f" sweep {sweep[0]}/{sweep[1]}" if sweep else ""
    return main + eis + extra


def summary_line(state: MonitorState, shown: int) -> str:
    """Min/max voltage and temperature over the cells seen, and which cells carry flags or faults."""
    seen = np.flatnonzero(state.seen)
    head = f"{state.cell_count} cells, {shown} shown"
    if seen.size == 0:
        return f"{head}; no cell states yet"
    v, t = state.voltage_uV[seen], state.temperature_mdegC[seen]
    vmin, vmax, tmin, tmax = (int(x) for x in (np.argmin(v), np.argmax(v), np.argmin(t), np.argmax(t)))
    text = (
        f"{head}: V {v[vmin] / 1e6:.4f}(#{seen[vmin]})..{v[vmax] / 1e6:.4f}(#{seen[vmax]}) "
        f"T {t[tmin] / 1e3:.1f}(#{seen[tmin]})..{t[tmax] / 1e3:.1f}(#{seen[tmax]}) C"
    )
    fault_cells = {c for _, cells in state.faults.values() for c in cells}
    flagged = sorted(set(int(c) for c in seen[state.flags[seen] != 0]) | fault_cells)
    if flagged:
        names = " ".join(
            f"{c}({flag_letters(int(state.flags[c])) if c < state.cell_count else '?'})" for c in flagged
        )
        text += f"; flagged {len(flagged)}: {names}"
    else:
        text += "; no cell flagged"
    return text


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(0, width - 3)] + "..."


def render_table(state: MonitorState, width: int = 120, height: int | None = None) -> list[str]:
    """The live table as lines, each at most ``width`` characters; at most ``height`` lines (the rows of the
    first cells that fit, then a summary line over all cells). A pure function of ``state``."""
    header = [
        f"eis-hil client  {state.endpoint}  scenario {state.scenario}  cells {state.subscribed}/"
        f"{state.cell_count}  t_sim {state.t_sim_us / 1e6:.3f} s  step {state.step}  "
        f"{_state_name(state.sim_state)}",
        f"frames {state.frames}  gaps {state.gaps} (lost {state.lost} late {state.late} "
        f"dup {state.duplicates})  bad {state.bad_frames}  "
        f"drops {state.drops}  queue {state.queue_depth}  {lateness_text(state)}",
    ]
    if state.faults:
        active = "  ".join(
            f"#{fid} {_fault_name(kind)}{f' cells {cells}' if cells else ''}"
            for fid, (kind, cells) in sorted(state.faults.items())
        )
        header.append(f"faults: {active}")
    header.extend(state.notes)
    if state.bye:
        header.append(f"server: {state.bye}")
    header.append(_COLUMNS)
    cells = state.cell_count
    room = cells if height is None else max(0, height - len(header) - 2)
    shown = min(cells, room)
    rows = [_row(state, c) for c in range(shown)]
    footer = [summary_line(state, shown), LEGEND]
    if height is not None and len(header) + shown + len(footer) > height:
        footer = footer[:1]
    lines = header + rows + footer
    if height is not None:
        lines = lines[:height]
    return [_fit(line, width) for line in lines]


def _fault_name(kind: int) -> str:
    try:
        return p.FaultKind(kind).name
    except ValueError:
        return f"kind 0x{kind:02x}"


def summary_text(state: MonitorState, seconds: float) -> str:
    rate = state.frames / seconds if seconds > 0 else 0.0
    p50 = f"{_ms(int(np.median(state.p50s_us)))} ms" if state.p50s_us else "n/a"
    types = ", ".join(f"{k} {v}" for k, v in sorted(state.by_type.items()))
    return (
        f"summary: {state.frames} frames in {seconds:.1f} s ({rate:.0f}/s), {state.gaps} gaps "
        f"({state.lost} frames lost, {state.late} late, {state.duplicates} duplicates), "
        f"{state.bad_frames} bad frames, {state.drops} dropped by the server, "
        f"{state.heartbeats} server heartbeats, lateness p50 {p50} (median), "
        f"p99 {_ms(state.worst_p99_us)} ms max {_ms(state.worst_max_us)} ms (worst heartbeat); "
        f"{types or 'nothing received'}\n"
    )


# -- the client -------------------------------------------------------------------------------------------


class SeqTracker:
    """Sequence continuity of one sender (SPEC 2.3): each frame's seq is the previous one's plus 1, modulo
    2**32. A forward jump is a gap; the seqs it skipped are *missing* until they arrive late (reordered) or
    for good (lost). A seq seen before, or behind and not missing, is a duplicate."""

    MAX_MISSING = 65536
    """Missing seqs remembered individually; older ones count as lost straight away."""

    def __init__(self) -> None:
        self.expected: int | None = None
        self.gaps = 0
        self.late = 0
        self.duplicates = 0
        self.missing: dict[int, None] = {}
        self.forgotten = 0

    @property
    def lost(self) -> int:
        """Frames skipped by a gap that have not arrived (yet)."""
        return self.forgotten + len(self.missing)

    def see(self, seq: int) -> None:
        if self.expected is None:
            self.expected = (seq + 1) % _SEQ_MOD
            return
        ahead = (seq - self.expected) % _SEQ_MOD
        if ahead == 0:
            self.expected = (seq + 1) % _SEQ_MOD
        elif ahead < _SEQ_MOD // 2:
            self.gaps += 1
            if ahead > self.MAX_MISSING:
                self.forgotten += ahead - self.MAX_MISSING
            for k in range(max(0, ahead - self.MAX_MISSING), ahead):
                self.missing[(self.expected + k) % _SEQ_MOD] = None
            while len(self.missing) > self.MAX_MISSING:
                del self.missing[next(iter(self.missing))]
                self.forgotten += 1
            self.expected = (seq + 1) % _SEQ_MOD
        elif seq in self.missing:
            del self.missing[seq]
            self.late += 1
        else:
            self.duplicates += 1


class MonitorClient(HilClient):
    """A HilClient that delivers every frame in order to the consumer, replies included (the base class hands
    ACK/NAK only to the request that awaits them), stamps each with its receive time, and tracks sequence
    continuity (:class:`SeqTracker`: gaps, frames lost, frames late, duplicates)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        super().__init__(reader, writer, name)
        self.rx_wall: collections.deque[float] = collections.deque()
        self.last_rx_wall = 0.0
        self.seq = SeqTracker()
        self.hello_frame: tuple[float, p.Frame] | None = None

    def _dispatch(self, frame: p.Frame) -> None:
        before = self.frames.qsize()
        super()._dispatch(frame)
        if self.frames.qsize() == before:  # a reply taken by the request that awaited it
            self.frames.put_nowait(frame)
        self.rx_wall.append(time.time())

    def take(self, item: p.Frame | None) -> p.Frame | None:
        """An item taken from ``frames`` by the caller: None at the end of the connection (the end marker is
        put back for the next caller); else the frame, with its receive time in ``last_rx_wall``."""
        if item is None:
            self.frames.put_nowait(None)
            return None
        self.last_rx_wall = self.rx_wall.popleft()
        # sequence accounting on what is consumed, not on what was read ahead: the summary then describes
        # exactly the frames shown or written (a --count run reads a few frames past its last)
        self.seq.see(item.seq)
        if self.hello_frame is None and isinstance(item.message, p.ServerHello):
            self.hello_frame = (self.last_rx_wall, item)
        return item

    async def next_frame(self, timeout: float | None = None) -> p.Frame:
        frame = await super().next_frame(timeout)  # raises ClientError at the end marker
        taken = self.take(frame)
        assert taken is not None
        return taken


def _json_safe(value: Any) -> Any:
    """Strict JSON: NaN and infinities (a measurement fault may send them) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return _json_safe(float(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def frame_json(frame: p.Frame, t_rx: float) -> str:
    return json.dumps(
        {
            "t_rx": round(t_rx, 6),
            "seq": frame.seq,
            "type": p.MsgType(frame.message.MSG_TYPE).name,
            "flags": frame.flags,
            "fields": _json_safe(frame.message.to_dict()),
        },
        allow_nan=False,
    )


def error_json(err: p.RemoteProtocolError, t_rx: float) -> str:
    return json.dumps(
        {
            "t_rx": round(t_rx, 6),
            "error": err.kind.name,
            "detail": err.detail,
            "seq": err.seq,
            "nbytes": err.nbytes,
        }
    )


def reply_text(label: str, reply: p.Ack | p.Nak) -> str:
    if isinstance(reply, p.Ack):
        return f"control {label}: ACK result={reply.result}\n"
    try:
        code = p.ErrorCode(reply.code).name
    except ValueError:
        code = f"code {reply.code}"
    return f"control {label}: NAK {code}: {reply.message}\n"


Mode = Literal["table", "lines", "out"]


class _Screen:
    """Redraws the table in place with ANSI codes, at most every ``REDRAW_S`` seconds of ``clock``."""

    def __init__(self, out: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.last = -math.inf
        self.started = False

    def draw(self, state: MonitorState, force: bool = False) -> bool:
        now = self.clock()
        if not force and now - self.last < REDRAW_S:
            return False
        self.last = now
        size = shutil.get_terminal_size()
        lines = render_table(state, size.columns - 1, size.lines - 1)
        prefix = "\x1b[2J\x1b[H" if not self.started else "\x1b[H"
        self.started = True
        self.out.write(prefix + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        self.out.flush()
        return True


@dataclasses.dataclass
class _Outcome:
    code: int = 0
    message: str = ""


async def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """The ``client`` command on the running loop. ``out``/``err``: default sys.stdout/sys.stderr at call."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        secret = read_secret(args)
    except (OSError, ValueError) as exc:
        err.write(f"eis-hil client: {exc}\n")
        return 2
    endpoint = f"{args.host}:{args.port}"
    try:
        client = await MonitorClient.connect(
            args.host, args.port, name=args.name, secret=secret, timeout=args.timeout
        )
    except (ClientError, OSError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {args.timeout:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            detail = "connection refused (is an eis-hil server listening on that port?)"
        err.write(f"eis-hil client: cannot connect to {endpoint}: {detail}\n")
        log.debug("connect failed", endpoint=endpoint, error=repr(exc))
        return 2
    assert isinstance(client, MonitorClient)
    assert client.hello is not None
    hello = client.hello
    state = MonitorState.from_hello(hello, endpoint)
    mode: Mode = (
        "out" if args.out else ("table" if args.table or (not args.lines and out.isatty()) else "lines")
    )
    screen = _Screen(out) if mode == "table" else None
    controls: list[tuple[str, p.Control]] = args.control or []
    streaming = not (controls and args.count == 0)
    started = time.monotonic()
    outcome = _Outcome()
    stop = asyncio.Event()
    signals = _install_signal_handlers(stop)
    jsonl: IO[str] | None = None
    try:
        if args.out:
            try:
                jsonl = Path(args.out).open("w", encoding="utf-8")  # noqa: SIM115 - closed in finally
            except OSError as exc:
                err.write(f"eis-hil client: cannot write {args.out}: {exc.strerror or exc}\n")
                return 2
            if client.hello_frame is not None:
                jsonl.write(frame_json(client.hello_frame[1], client.hello_frame[0]) + "\n")
        if mode != "table":
            out.write(
                f"connected to {endpoint}: scenario {hello.scenario_id}, {hello.cell_count} cell(s), "
                f"model {hello.model_id}, server {hello.server_version}\n"
            )
        if streaming:
            try:
                state.subscribed = await client.subscribe(
                    mask=args.mask,
                    cells=tuple(args.cells or ()),
                    divider=args.divider,
                    eis_mode=args.eis_mode,
                )
            except ClientError as exc:
                err.write(f"eis-hil client: {endpoint}: {exc}\n")
                return 2
            if mode != "table":
                out.write(f"subscribed: {state.subscribed} cell(s)\n")
        for label, control in controls:
            try:
                reply = await client.control(control, timeout=args.timeout)
            except ClientError as exc:
                err.write(f"eis-hil client: {endpoint}: control {label}: {exc}\n")
                return 2
            if isinstance(reply, p.Nak):
                outcome.code = 1
            if screen is None:
                out.write(reply_text(label, reply))
            else:  # the table clears the screen: the answers go into its header
                state.notes.append(reply_text(label, reply).rstrip("\n"))
        if streaming:
            await _consume(client, state, args, mode, out, jsonl, screen, stop, outcome)
    finally:
        _remove_signal_handlers(signals)
        await client.close()
        if jsonl is not None:
            if not streaming:
                _drain_replies(client, jsonl)  # the replies of --control ... --count 0
            jsonl.close()
        _sync_counters(state, client)
        if screen is not None:
            screen.draw(state, force=True)
        if outcome.message:
            err.write(f"eis-hil client: {outcome.message}\n")
        out.write(summary_text(state, time.monotonic() - started))
        out.flush()
    if args.strict and (state.lost or state.duplicates):
        return max(outcome.code, 1)
    return outcome.code


def _drain_replies(client: MonitorClient, jsonl: IO[str]) -> None:
    while client.frames.qsize():
        frame = client.take(client.frames.get_nowait())
        if frame is None:
            return
        jsonl.write(frame_json(frame, client.last_rx_wall) + "\n")


def _install_signal_handlers(stop: asyncio.Event) -> list[signal.Signals]:
    """Ctrl-C and SIGTERM end the stream cleanly (summary, exit 0); only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return []
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - platforms without it
            continue
        installed.append(sig)
    return installed


def _remove_signal_handlers(signals: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.remove_signal_handler(sig)


def _sync_counters(state: MonitorState, client: MonitorClient) -> None:
    state.frames = client.received
    state.gaps = client.seq.gaps
    state.lost = client.seq.lost
    state.late = client.seq.late
    state.duplicates = client.seq.duplicates
    state.bad_frames = len(client.errors)


async def _consume(
    client: MonitorClient,
    state: MonitorState,
    args: argparse.Namespace,
    mode: Mode,
    out: IO[str],
    jsonl: IO[str] | None,
    screen: _Screen | None,
    stop: asyncio.Event,
    outcome: _Outcome,
) -> None:
    """Read frames until Ctrl-C, ``--count``, ``--seconds`` or the server's BYE; write each as ``mode`` says
    and fold it into ``state``. Replies to our own requests (ACK/NAK) go to the JSON lines and the state,
    but not to ``--lines`` (they were reported as "subscribed" and "control ..." lines)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.seconds if args.seconds is not None else math.inf
    errors_done = 0
    counted = 0
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set() and (args.count is None or counted < args.count):
            left = deadline - loop.time()
            if left <= 0:
                return
            if client.frames.qsize():
                item = client.frames.get_nowait()
            else:
                # Wait for a frame, Ctrl-C, the deadline, or the next redraw of the table.
                timeout = min(left, REDRAW_S) if screen else left
                getter = asyncio.ensure_future(client.frames.get())
                done, _ = await asyncio.wait(
                    {getter, stop_wait},
                    timeout=None if math.isinf(timeout) else timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter not in done:
                    getter.cancel()  # a cancelled Queue.get leaves the queue as it was
                    if screen:
                        _sync_counters(state, client)
                        screen.draw(state)
                    continue
                item = getter.result()
            frame = client.take(item)
            if frame is None:
                outcome.code = max(outcome.code, 2)
                outcome.message = f"connection to {state.endpoint} lost without a BYE"
                return
            msg = frame.message
            state.update(frame)
            reply = isinstance(msg, p.Ack | p.Nak)
            new_errors = client.errors[errors_done:]
            errors_done += len(new_errors)
            for error in new_errors:
                if jsonl is not None:
                    jsonl.write(error_json(error, client.last_rx_wall) + "\n")
                elif mode == "lines":
                    out.write(describe(error) + "\n")
            if jsonl is not None:
                jsonl.write(frame_json(frame, client.last_rx_wall) + "\n")
            elif mode == "lines" and not reply:
                out.write(describe(frame) + "\n")
            elif screen is not None:
                _sync_counters(state, client)
                screen.draw(state)
            if not reply:
                counted += 1
            if isinstance(msg, p.Bye):
                if msg.reason not in (p.ErrorCode.NONE, p.ErrorCode.SHUTDOWN):
                    outcome.code = max(outcome.code, 1)
                    outcome.message = f"the server ended the session: {describe_message(msg)}"
                return
    finally:
        stop_wait.cancel()


# -- command line -----------------------------------------------------------------------------------------


def _labelled_control(text: str) -> tuple[str, p.Control]:
    return text, _control_arg(text)


def _eis_mode_arg(text: str) -> int:
    if text not in EIS_MODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(EIS_MODES)}")
    return int(EIS_MODES[text])


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``client`` arguments, shared by ``eis-hil client`` and ``tools/mock_bms.py``."""
    parser.add_argument("host", help="server address")
    parser.add_argument("port", type=int, help="server port")
    parser.add_argument("--name", default="eis-hil-client", help="client name (server logs; part of the MAC)")
    parser.add_argument(
        "--cells", type=_bounded_int(0, _U16_MAX), nargs="+", help="cells to subscribe (default all)"
    )
    parser.add_argument(
        "--divider",
        type=_bounded_int(1, _U16_MAX),
        default=1,
        help="every n-th simulation step's cell states",
    )
    parser.add_argument(
        "--eis-mode",
        type=_eis_mode_arg,
        default=int(p.EisMode.SCENARIO_DEFAULT),
        metavar="default|instant|sweep",
        help="spectra whole (instant) or point by point at an instrument's pace (sweep); "
        "default: the scenario's",
    )
    parser.add_argument(
        "--mask",
        type=parse_mask,
        default=int(p.SubscribeMask.ALL),
        metavar="STREAMS",
        help=f"comma-separated streams to subscribe: {', '.join(MASK_NAMES)} (default all)",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument(
        "--table", action="store_true", help="live table redrawn in place (default on a terminal)"
    )
    out.add_argument("--lines", action="store_true", help="one line per frame (default when not a terminal)")
    out.add_argument("--out", metavar="FILE.jsonl", help="every frame as a JSON line with its receive time")
    parser.add_argument(
        "--count", type=_positive_int, help="stop after this many frames (ACK/NAK not counted)"
    )
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--control",
        type=_labelled_control,
        nargs="+",
        action="extend",
        metavar="CMD",
        help=f"commands to send once connected: {CONTROL_FORMS.replace('%', '%%')}. "
        "With --count 0: send them and exit (exit 1 if one was refused)",
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--secret-file", help="shared secret for the server's challenge-response auth")
    secret.add_argument("--secret-env", help="... or the environment variable that holds it")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if a frame was lost (a sequence gap never filled) or duplicated",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="connect and reply timeout, s (default 5)")


def cmd_client(args: argparse.Namespace) -> int:
    from ._loop import run as run_loop

    try:
        return run_loop(run(args), "asyncio")
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed (during connect)
        return 0


def register(subparsers: Any) -> None:
    """Adds the ``client`` subcommand to ``eis-hil``."""
    parser = subparsers.add_parser(
        "client", help="mock BMS: connect, subscribe, check and show what arrives, send control commands"
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_client)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eis-hil client", description="Mock BMS: connect to an eis-hil server and check what arrives."
    )
    parser.add_argument("--log-json", action="store_true", help="logs as JSON lines")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ._logging import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    return cmd_client(args)
