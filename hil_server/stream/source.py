"""What a server streams: a source produces, tick by tick, the messages due at each tick's time.

Two sources: ``EngineSource`` runs a scenario (the simulation) and carries out the controls that act on it;
``ReplaySource`` (in ``hil_server.stream.replay_source``) serves a recorded capture. The server owns the
pacing, the sessions and the controls that act on the stream itself (pause, resume, stop, start, speed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

import protocol as p
from hil_server.model.linkk import kk_residual
from hil_server.sim.engine import Engine
from hil_server.sim.output import FaultEvent, StepOutput, StreamFault
from protocol._constants import FaultPhase

MAX_CELLS_PER_FRAME = (
    p.MAX_PAYLOAD_SIZE - p.fixed_payload_size(p.MsgType.CELL_STATES)
) // p.CELL_STATE_DTYPE.itemsize
INT32 = (-(2**31), 2**31 - 1)


class ControlRefusedError(Exception):
    """A CONTROL command the source cannot carry out: the session answers NAK with ``code``."""

    def __init__(self, code: p.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# Plain ints: IntFlag arithmetic costs microseconds per frame and sessions test these for every frame.
BIT_STATES = int(p.SubscribeMask.CELL_STATES)
BIT_SPECTRUM = int(p.SubscribeMask.EIS_SPECTRUM)
BIT_POINT = int(p.SubscribeMask.EIS_POINT)
BIT_EVENT = int(p.SubscribeMask.FAULT_EVENT)
INSTANT = int(p.EisMode.INSTANT)
SWEEP = int(p.EisMode.SWEEP)


class Item:
    """One message to stream, with what a session filters it by. Either the message is given (a running
    scenario), or its encoded payload (a replay), which is then decoded only if a session needs the message
    itself (a cell filter on CELL_STATES): a replay passes most frames through without decoding them."""

    __slots__ = ("_message", "bit", "cell", "eis_mode", "flags", "msg_type", "payload", "step")

    def __init__(
        self,
        bit: int,
        message: p.Message | None,
        cell: int | None,
        eis_mode: int = 0,
        payload: bytes | None = None,
        *,
        msg_type: int | None = None,
        step: int = 0,
        flags: int = 0,
    ) -> None:
        self.bit = bit
        """Its ``SubscribeMask`` bit."""
        self._message = message
        self.cell = cell
        """The cell of a spectrum or point; None for messages about several cells."""
        self.eis_mode = eis_mode
        """For EIS_SPECTRUM: INSTANT or SWEEP (the completed sweep), matched against each client's choice."""
        self.payload = payload
        """The message encoded, when the source has it: saves encoding it again."""
        if message is not None:
            msg_type = int(message.MSG_TYPE)
            step = message.step if isinstance(message, p.CellStates) else 0
        if msg_type is None or (message is None and payload is None):
            raise ValueError("an Item needs its message, or its payload and msg_type")
        self.msg_type = msg_type
        self.step = step
        """CELL_STATES: the simulation step (for each session's divider); 0 otherwise."""
        self.flags = flags
        """Frame header flags (``FrameFlags``: REPLAY, MEASURED)."""

    @property
    def message(self) -> p.Message:
        if self._message is None:
            assert self.payload is not None
            self._message = p.decode_payload(self.msg_type, self.payload)
        return self._message

    def encoded(self) -> bytes:
        if self.payload is None:
            self.payload = p.encode_payload(self.message)
        return self.payload


class Tick(NamedTuple):  # a tuple: a frozen dataclass costs 0.4 µs to build, once per frame at speed 0
    time_us: int
    """When the tick is due, on the source's time line (simulated time for a scenario, capture time for a
    replay)."""
    items: Iterable[Item]
    stream_faults: tuple[StreamFault, ...] = ()
    finished: bool = False
    """Nothing further will come (until a seek or restart)."""


class Source(Protocol):
    """What the server needs from whatever produces the stream."""

    n_cells: int
    freq_hz: Any
    simulates: bool
    """False: every command that acts on a simulation is refused (a replay)."""

    @property
    def time_us(self) -> int: ...

    @property
    def next_time_us(self) -> int:
        """When the next tick is due."""
        ...

    def hello(self) -> p.ServerHello:
        """The SERVER_HELLO fields that describe the stream (the server fills in auth and challenge)."""
        ...

    def tick(self, wanted: int, wall_us: int) -> Tick:
        """Advance by one tick. ``wanted``: the SubscribeMask bits some client wants (and ``eis_modes``)."""
        ...

    def set_eis_modes(self, modes: frozenset[int]) -> None:
        """The EisMode values (INSTANT, SWEEP) that some client wants; empty: the source's default."""
        ...

    def seek(self, time_us: int, *, restart: bool = False) -> None:
        """Move to ``time_us``; ``restart``: a new run (START), nothing carried over."""
        ...

    def seek_cost(self, time_us: int) -> int:
        """How many ticks' worth of work ``seek(time_us)`` would do (the server refuses a seek that would
        stall the stream for too long)."""
        ...

    def control(self, msg: p.Control, cells: list[int] | None) -> int:
        """Carry out a command that acts on the simulation; raise ControlRefusedError if not possible."""
        ...

    def active_fault_events(self) -> list[p.FaultEvent]:
        """A START for every fault active as a client streaming since the last step has been told (what a
        client that subscribes to FAULT_EVENT now is sent first, SPEC.md 6.4)."""
        ...


def _clip_int(values: Any, lo: int, hi: int) -> Any:
    arr = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=hi, neginf=lo)
    return np.clip(np.rint(arr), lo, hi).astype(np.int64)


_STATE_COLUMNS = ("voltage_uV", "current_uA", "temperature_mdegC", "soc_ppm", "soh_ppm")
_STATE_SCALE = np.array([[1e6], [1e6], [1e3], [1e6], [1e6]])
_STATE_LO = np.array([[INT32[0]], [INT32[0]], [INT32[0]], [0], [0]], dtype=np.float64)
_STATE_HI = np.array([[INT32[1]], [INT32[1]], [INT32[1]], [1_000_000], [1_000_000]], dtype=np.float64)


def _state_records(out: StepOutput) -> npt.NDArray[np.void]:
    """CELL_STATE records of every cell, scaled to wire units and clipped to each field's range in one pass
    (NaN as 0, infinities to the limits): a field-by-field build costs five times as much per step."""
    r = out.reported
    values = np.stack([r.voltage_v, r.current_a, r.temp_c, r.soc, r.soh]) * _STATE_SCALE
    values = np.rint(np.nan_to_num(values, nan=0.0, posinf=np.inf, neginf=-np.inf))
    np.clip(values, _STATE_LO, _STATE_HI, out=values)
    records = np.empty(values.shape[1], p.CELL_STATE_DTYPE)
    records["cell"] = np.arange(values.shape[1])
    records["flags"] = r.flags
    for i, name in enumerate(_STATE_COLUMNS):
        records[name] = values[i]
    return records


def fault_event_message(fe: FaultEvent) -> p.FaultEvent:
    return p.FaultEvent(
        fe.time_us,
        fe.fault_id,
        round(fe.severity * 1e6),
        int(fe.kind),
        int(fe.phase),
        np.array(fe.cells, dtype=np.uint16),
    )


def step_messages(
    out: StepOutput, wall_us: int, wanted: int = p.SubscribeMask.ALL, eis_flags: int = 0
) -> Iterator[Item]:
    """The messages of what one engine step produces, only of the kinds in ``wanted``, in the order SPEC.md
    section 8 gives (fault events, cell states, points, spectra): a spectrum costs a Lin-KK fit (0.35 ms),
    not worth paying when no client subscribes to it. ``eis_flags``: frame flags of
    the spectra and points (MEASURED when they come from measured data)."""
    for fe in out.fault_events if wanted & p.SubscribeMask.FAULT_EVENT else ():
        yield Item(BIT_EVENT, fault_event_message(fe), None)
    # after the fault events: a CELL_STATES flagged FAULT_ACTIVE never arrives before the fault's START
    n = out.reported.voltage_v.size if wanted & BIT_STATES else 0
    if n:
        records = _state_records(out)
        for start in range(0, n, MAX_CELLS_PER_FRAME):
            chunk = records[start : start + MAX_CELLS_PER_FRAME]
            yield Item(BIT_STATES, p.CellStates(out.time_us, wall_us, out.step & 0xFFFFFFFF, chunk), None)
    # the points that complete a sweep before the whole spectrum
    for pts in out.points if wanted & p.SubscribeMask.EIS_POINT else ():
        for i, cell in enumerate(pts.cells.tolist()):
            for j in range(pts.point_index.size):
                if pts.dropped[i, j]:
                    continue
                z = pts.z_ohm[i, j]
                yield Item(
                    BIT_POINT,
                    p.EisPoint(
                        int(pts.time_us[j]),
                        int(pts.spectrum_ids[i]) & 0xFFFFFFFF,
                        cell,
                        int(pts.point_index[j]),
                        pts.n_points,
                        int(pts.flags[i]),
                        float(pts.freq_hz[j]),
                        float(z.real),
                        float(z.imag),
                    ),
                    cell,
                    flags=eis_flags,
                )

    for sp in out.spectra if wanted & p.SubscribeMask.EIS_SPECTRUM else ():
        for i, cell in enumerate(sp.cells.tolist()):
            keep = ~sp.dropped[i]
            z = sp.z_ohm[i][keep]
            yield Item(
                BIT_SPECTRUM,
                p.EisSpectrum(
                    sp.time_us,
                    int(sp.spectrum_ids[i]) & 0xFFFFFFFF,
                    sp.sweep_duration_us // 1000,
                    cell,
                    int(sp.flags[i]),
                    int(_clip_int(sp.soc[i] * 1e6, 0, 10**6)),
                    int(_clip_int(sp.soh[i] * 1e6, 0, 10**6)),
                    int(_clip_int(sp.temp_c[i] * 1e3, *INT32)),
                    int(_clip_int(sp.current_a[i] * 1e6, *INT32)),
                    kk_residual(sp.freq_hz[keep], z),
                    sp.freq_hz[keep],
                    z.real,
                    z.imag,
                ),
                cell,
                SWEEP if sp.sweep_duration_us else INSTANT,
                flags=eis_flags,
            )


@dataclasses.dataclass(frozen=True)
class Identity:
    model_id: str
    model_sha256: str
    scenario_id: str
    scenario_sha256: bytes


_MODE_NAMES: dict[int, str] = {p.EisMode.INSTANT: "instant", p.EisMode.SWEEP: "sweep"}


class EngineSource:
    """A running scenario: one tick is one engine step."""

    simulates = True

    def __init__(self, engine: Engine, identity: Identity, server_version: str) -> None:
        self.engine = engine
        self.identity = identity
        self.server_version = server_version
        self.n_cells = engine.n_cells
        self.freq_hz = engine.freq_hz
        self._modes = engine.eis_modes
        self._eis_flags = int(p.FrameFlags.MEASURED) if engine.scenario.eis.measured is not None else 0
        self._seek_events: tuple[FaultEvent, ...] = ()
        """The FAULT_EVENTs a seek made necessary, sent before the next step's own."""

    @property
    def time_us(self) -> int:
        return self.engine.time_us

    @property
    def next_time_us(self) -> int:
        return self.engine.next_time_us

    def hello(self) -> p.ServerHello:
        e, ident = self.engine, self.identity
        return p.ServerHello(
            auth_required=0,
            seed=e.seed & 0xFFFFFFFFFFFFFFFF,
            cell_count=e.n_cells,
            step_period_us=round(e.dt_s * 1e6),
            auth_challenge=bytes(p.AUTH_CHALLENGE_SIZE),
            model_hash=bytes.fromhex(ident.model_sha256),
            scenario_hash=ident.scenario_sha256,
            server_version=self.server_version,
            model_id=p.truncate_utf8(ident.model_id),
            scenario_id=p.truncate_utf8(ident.scenario_id),
            freq_hz=e.freq_hz,
        )

    def tick(self, wanted: int, wall_us: int) -> Tick:
        out = self.engine.step()
        if self._seek_events:
            out = dataclasses.replace(out, fault_events=self._seek_events + out.fault_events)
            self._seek_events = ()
        return Tick(
            out.time_us,
            step_messages(out, wall_us, wanted, self._eis_flags),
            out.stream_faults,
            out.finished and not out.spectra and not out.points,
        )

    def set_eis_modes(self, modes: frozenset[int]) -> None:
        names = frozenset(_MODE_NAMES[m] for m in modes if m in _MODE_NAMES)
        self._modes = names or frozenset({self.engine.scenario.eis.mode})
        self.engine.set_eis_modes(self._modes)

    def seek(self, time_us: int, *, restart: bool = False) -> None:
        """Seeking back replays the modes in force then; from the target on, the clients' modes apply.
        ``restart`` (START from STOPPED or FINISHED): spectrum requests not yet served are dropped.

        What the clients were told stays true (SPEC.md section 6.4): a fault active before the seek and not
        at the target gets its END, one active at the target and not before (started in the skipped steps, or
        injected just before the seek) its START, both at the time reached, before the next step's frames."""
        before = self._active_faults()
        try:
            self.engine.seek(time_us / 1e6, keep_requests=not restart)
        except ValueError as exc:
            raise ControlRefusedError(p.ErrorCode.OUT_OF_RANGE, str(exc)[:200]) from None
        self.engine.set_eis_modes(self._modes)
        after = self._active_faults()
        now = self.engine.time_us
        ended = [
            FaultEvent(now, i, k, FaultPhase.END, c, v) for i, (k, c, v) in before.items() if i not in after
        ]
        started = [
            FaultEvent(now, i, k, FaultPhase.START, c, v) for i, (k, c, v) in after.items() if i not in before
        ]
        # two seeks before a step: the second one's events follow the first's (a START, then its END)
        self._seek_events = (*self._seek_events, *ended, *started)

    def active_fault_events(self) -> list[p.FaultEvent]:
        state = self._active_faults()
        for e in reversed(self._seek_events):  # as before the events a seek left for the next step
            if e.phase == FaultPhase.START:
                state.pop(e.fault_id, None)
            else:
                state[e.fault_id] = (e.kind, e.cells, e.severity)
        now = self.engine.time_us
        return [
            fault_event_message(FaultEvent(now, i, k, FaultPhase.START, c, v))
            for i, (k, c, v) in state.items()
        ]

    def _active_faults(self) -> dict[int, tuple[p.FaultKind, tuple[int, ...], float]]:
        return {fid: (kind, cells, severity) for fid, kind, cells, severity in self.engine.active_faults()}

    def seek_cost(self, time_us: int) -> int:
        return self.engine.seek_steps(time_us / 1e6)

    def control(self, msg: p.Control, cells: list[int] | None) -> int:
        cmd, e, c = msg.command, self.engine, p.ControlCommand
        if cmd == c.SET_LOAD_CURRENT:
            limit_uA = round(e.profile.current_max_a * 1e6)
            if not msg.aux & 1 and not -limit_uA <= msg.value <= limit_uA:
                raise ControlRefusedError(
                    p.ErrorCode.OUT_OF_RANGE,
                    f"load current {msg.value} uA outside the cells' limit -{limit_uA}..{limit_uA} uA",
                )
            e.set_load_current(None if msg.aux & 1 else msg.value / 1e6, cells)
            return 0
        if cmd == c.SET_AMBIENT_TEMPERATURE:
            temp_c = msg.value / 1e3
            if not msg.aux & 1 and not -60.0 <= temp_c <= 120.0:
                raise ControlRefusedError(
                    p.ErrorCode.OUT_OF_RANGE, f"ambient {temp_c:g} C outside -60..120 C"
                )
            e.set_ambient(None if msg.aux & 1 else temp_c)
            return 0
        if cmd == c.INJECT_FAULT:
            try:
                kind = p.FaultKind(msg.fault_kind)
            except ValueError:
                raise ControlRefusedError(
                    p.ErrorCode.OUT_OF_RANGE, f"unknown fault kind {msg.fault_kind}"
                ) from None
            if not 0 <= msg.value <= 1_000_000:
                raise ControlRefusedError(p.ErrorCode.OUT_OF_RANGE, "severity must be 0..1000000 ppm")
            try:
                return e.inject_fault(kind, cells, msg.value / 1e6, msg.aux / 1e3 if msg.aux else None)
            except ValueError as exc:  # a parameter a CONTROL frame cannot carry
                raise ControlRefusedError(
                    p.ErrorCode.OUT_OF_RANGE, f"{exc}: inject it from a scenario file instead"
                ) from None
        if cmd == c.CLEAR_FAULT:
            return e.clear_fault(msg.aux)
        if cmd == c.REQUEST_SPECTRUM:
            return e.request_spectrum(cells)
        raise ControlRefusedError(p.ErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd}")


__all__: Sequence[str] = [
    "BIT_EVENT",
    "BIT_POINT",
    "BIT_SPECTRUM",
    "BIT_STATES",
    "INSTANT",
    "SWEEP",
    "ControlRefusedError",
    "EngineSource",
    "Identity",
    "Item",
    "Source",
    "Tick",
    "fault_event_message",
    "step_messages",
]
