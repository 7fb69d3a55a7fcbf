"""What a monitoring client received, as a state a table is drawn from, and as JSON lines."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import time
from typing import Any

import numpy as np

import protocol as p
from hil_server.client.client import HilClient
from hil_server.client.seq import SeqTracker
from hil_server.client.text import describe, enum_name


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
    return "?" if state is None else enum_name(p.SimState, state, "state {value}")


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
    return enum_name(p.FaultKind, kind, "kind 0x{value:02x}")


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
