"""The scenario engine: a pure, explicitly clocked step function over the cell model, EIS and faults."""

from __future__ import annotations

import bisect
import copy
import itertools
import math
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog

from hil_server.model.circuit import P, impedance
from hil_server.scenario import FAULT_PARAMS as SCENARIO_FAULT_PARAMS
from hil_server.scenario import (
    SIGNAL_UNIT,
    STREAM_KINDS,
    UNIT_PARAM_PREFIX,
    Ambient,
    CcCvCharge,
    ConstantCurrent,
    ConstantPower,
    DriveCycleSegment,
    EisRequest,
    MeasuredEis,
    Repeat,
    Rest,
    Scenario,
    Segment,
    Soh,
    Sweep,
    Until,
    kind_name,
)
from protocol import CellFlags, FaultKind, FaultPhase

from .cell import time_domain
from .faults import MEASUREMENT_KINDS, FaultState, apply_impedance, apply_real
from .output import (
    CellColumns,
    FaultEvent,
    SegmentEvent,
    Spectrum,
    StepOutput,
    StreamFault,
    SweepPoints,
)
from .profiles import PROFILES, CellProfile
from .source import CircuitSource

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
C128 = npt.NDArray[np.complex128]
Bool = npt.NDArray[np.bool_]

log = structlog.get_logger(__name__)

_EPS_S = 1e-9
INJECTED_ID_BASE = 0x10000
"""Fault ids: scenario faults are 1..N (file order), faults injected by control start here."""

Load = Rest | ConstantCurrent | ConstantPower | DriveCycleSegment | CcCvCharge


@dataclass(frozen=True)
class _SetParameter:
    parameter: str
    value: float


@dataclass(frozen=True)
class _Mark:
    label: str


_Item = Segment | _SetParameter | _Mark


def _flatten(segments: Sequence[Segment]) -> Iterator[_Item]:
    """Leaf segments in run order; repeat and sweep are expanded lazily (up to a million leaves)."""
    for seg in segments:
        if isinstance(seg, Repeat):
            if seg.label:
                yield _Mark(seg.label)
            for _ in range(seg.count):
                yield from _flatten(seg.segments)
        elif isinstance(seg, Sweep):
            if seg.label:
                yield _Mark(seg.label)
            for value in seg.values:
                yield _SetParameter(seg.parameter, value)
                yield from _flatten(seg.segments)
        else:
            yield seg


@dataclass
class _ActiveSegment:
    seg: Load
    index: int
    start_step: int
    n_steps: int | None
    cv: bool = False


@dataclass
class _SweepRun:
    cells: I64
    ids: I64
    rows: I64
    """Measured spectra: the row of each cell for the whole sweep (an instant spectrum of the same cell
    during the sweep picks its own)."""
    start_s: float
    done_s: F64
    """(F,) completion time of each point."""
    next_point: int = 0
    z_true: C128 = field(default_factory=lambda: np.zeros((0, 0), complex))
    z_rep: C128 = field(default_factory=lambda: np.zeros((0, 0), complex))
    dropped: Bool = field(default_factory=lambda: np.zeros((0, 0), bool))


_Control = tuple[int, str, bytes]
"""A control as it was applied, kept to apply again on a seek back: (step, method name, its arguments
pickled). Pickled (our own objects, never read from outside the process) into a plain tuple of plain values,
which the cyclic GC stops tracking: a history of 100 000 controls made every full collection take 80 ms
instead of 9, a stall of the paced stream each time."""


CHECKPOINT_S = 60.0
"""Simulated time between checkpoints of the engine state (for seeking back), at first..."""
CHECKPOINT_MAX_STEPS = 10_000
"""...and at most this many steps (at 1 kHz a minute is 60 000 steps, seconds of work to seek back)."""
MAX_CHECKPOINTS = 256
MAX_CONTROLS = 100_000
"""Recorded controls kept for seeking back (about 20 MB); beyond it the older half goes."""
CHECKPOINT_BYTES = 256 << 20
"""Memory the checkpoints may take, roughly (4096 cells x 337 points keep 5 of them)."""


def _contact_factor(f: FaultState, time_s: float) -> float:
    """How much a CONTACT_RESISTANCE fault multiplies R0 at ``time_s`` (ramping up over ``ramp_s``)."""
    ramp = float(f.params.get("ramp_s", 0.0))
    frac = 1.0 if ramp <= 0 else min(1.0, (time_s - (f.start_s or 0.0)) / ramp)
    return 1.0 + (float(f.params["resistance_factor"]) - 1.0) * frac


class _MeasuredBank:
    """Measured spectra resampled to the scenario's grid: Re and Im interpolated linearly in log frequency,
    NaN (dropped from the frame) at grid frequencies outside a spectrum's measured band."""

    SCALE = np.array([0.1, 10.0, 0.05])
    """Distances for ``nearest``: 10 % SOC, 10 degC and 5 % SOH weigh the same."""

    def __init__(self, measured: MeasuredEis, freq_hz: F64) -> None:
        self.select = measured.select
        grid = np.log10(freq_hz)
        rows = []
        for sp in measured.spectra:
            f = np.log10(np.asarray(sp.freq_hz))[::-1]  # ascending for np.interp
            z = np.asarray(sp.z)[::-1]
            inside = (grid >= f[0] - 1e-9) & (grid <= f[-1] + 1e-9)
            row = np.full(grid.size, np.nan + 0j)
            row[inside] = np.interp(grid[inside], f, z.real) + 1j * np.interp(grid[inside], f, z.imag)
            rows.append(row)
        self.z: C128 = np.array(rows)
        self.op: F64 = np.array([[sp.soc, sp.temp_c, sp.soh] for sp in measured.spectra], dtype=np.float64)

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def nearest(self, soc: F64, temp_c: F64, soh: F64) -> I64:
        here = np.stack([soc, temp_c, soh], axis=1)
        d = (((self.op[None, :, :] - here[:, None, :]) / self.SCALE) ** 2).sum(axis=2)
        rows: I64 = np.argmin(d, axis=1).astype(np.int64)
        return rows


class Engine:
    """Runs one scenario deterministically: ``step()`` advances the simulation by ``1 / step_rate_hz``.

    No wall clock anywhere: a real-time server calls ``step()`` when wall time reaches ``next_time_us``.
    Control methods act before the next step and are recorded, so ``seek`` replays them exactly.
    """

    def __init__(
        self,
        scenario: Scenario,
        source: CircuitSource,
        seed: int | None = None,
        *,
        profiles: Mapping[str, CellProfile] | None = None,
        base_profile: str | None = None,
        param_tolerance: tuple[float, float, float] = (0.002, 0.1, 0.0005),
    ) -> None:
        """``base_profile``: the built-in profile whose OCV, capacity and thermal constants a calibrated
        profile uses. ``param_tolerance`` (soc, temp_c, soh): the circuit parameters of the time-domain model
        are re-evaluated when the operating point has moved by more than this since the last evaluation
        (spectra are always evaluated at the exact operating point)."""
        self.scenario = scenario
        self.source = source
        self.seed = scenario.seed if seed is None else seed
        table = PROFILES if profiles is None else profiles
        name = base_profile or scenario.cells.profile
        if name not in table:
            raise ValueError(
                f"no cell-model constants for profile {name!r} (known: {', '.join(sorted(table))})"
            )
        self.profile = table[name]
        self.n_cells = scenario.cells.count
        self.dt_s = 1.0 / scenario.step_rate_hz
        self.freq_hz = np.asarray(scenario.eis.frequencies_hz, dtype=np.float64)
        measured = scenario.eis.measured
        self._measured = None if measured is None else _MeasuredBank(measured, self.freq_hz)
        self._tol = param_tolerance
        self._range = source.input_range(scenario.cells.profile)
        self._controls: list[_Control] = []
        self._replaying = False
        self._fault_ids_issued = 0
        """Faults injected by control so far, over the engine's life: not part of the state a seek restores,
        so an injected fault's id is never given twice (SPEC.md: fault ids)."""
        self._spectrum_counter = np.zeros(self.n_cells, dtype=np.int64)
        """Spectra started per cell over the engine's life (the last ``spectrum_id`` given): not part of the
        state a seek restores, and spectra of the steps a seek skips are not counted, so ids are never given
        twice and none is skipped (SPEC.md: spectrum ids)."""
        self._seeking = False
        before = set(self.__dict__)
        self._reset()
        self._state_keys = tuple(k for k in self.__dict__ if k not in before and k != "_timeline")
        """Everything ``_reset`` sets: the state a checkpoint saves (the timeline as a position)."""
        self._checkpoints: list[tuple[int, dict[str, object]]] = []
        self._history_from_k = 0
        """The earliest step a seek back can reach (0 until the control history is shortened)."""
        self._force_checkpoint = False
        every = round(CHECKPOINT_S * scenario.step_rate_hz)
        self._checkpoint_every = max(1, min(CHECKPOINT_MAX_STEPS, every))
        # about the size of one checkpoint: the last impedance of every cell and point dominates large packs
        self._max_checkpoints = max(
            4, min(MAX_CHECKPOINTS, CHECKPOINT_BYTES // (2 * self._last_z.nbytes + 1))
        )

    # ----------------------------------------------------------------------------------------- state
    def _reset(self) -> None:
        sc, n = self.scenario, self.n_cells
        self.eis_modes: frozenset[str] = frozenset({sc.eis.mode})
        """Which EIS outputs to produce, ``instant`` and/or ``sweep``; the scenario's mode by default. A
        server sets both when its clients ask for different modes: each request then yields an instant
        spectrum and a sweep (spectrum ids count both). Part of the state: a seek back replays the changes."""
        spread = sc.cells.spread
        # spawn_key (0,) keeps the spread stream apart from the fault seeds SeedSequence([seed, index])
        rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(1)[0])
        z_cap, z_res, z_soc = rng.standard_normal((3, n))
        self.capacity_factor = np.clip(1 + spread.capacity_rel_std * z_cap, 0.5, 1.5)
        self.resistance_factor = np.clip(1 + spread.resistance_rel_std * z_res, 0.5, 2.0)
        self.capacity_nominal_ah = sc.cells.capacity_ah or self.profile.capacity_ah
        self.soc = np.clip(sc.cells.soc + spread.soc_std * z_soc, 0.0, 1.0)
        self.soh = sc.cells.soh * self.capacity_factor
        self.temp_c = np.full(n, sc.cells.temp_c, dtype=np.float64)
        self._k = 0
        self.current_a = np.zeros(n)
        self.voltage_v = self.profile.ocv_v_at(self.soc)
        self._v_branch: F64 = np.zeros((n, 5))
        self.ambient_setpoint_c = sc.ambient_temp_c
        self.ambient_c = sc.ambient_temp_c
        self._ambient_rate: float | None = None
        self._ambient_override: float | None = None
        self._fade_per_h = 0.0
        self._timeline = _flatten(sc.timeline)
        self._timeline_pos = 0
        self._active: _ActiveSegment | None = None
        self._leaf_count = 0
        self._timeline_done = False
        self._seen_labels: set[str] = set()
        self._load_override = np.full(n, np.nan)
        self._cache: tuple[F64, F64, F64, F64, F64, F64, F64, F64] | None = None
        self._cache_op: tuple[F64, F64, F64] | None = None
        self._cache_base = np.zeros(0)
        """The circuit parameters at ``_cache_op`` before physics faults (the costly part: the model)."""
        self._cache_key: tuple[tuple[int, object], ...] = ()
        """``_physics_key()`` when ``_cache`` was computed."""
        interval = sc.eis.interval_s
        self._next_auto_s = interval if interval is not None else math.inf
        self._pending = np.zeros((2, n), dtype=bool)
        """Requested spectra not yet started, per output mode: row 0 instant, row 1 sweep-timed."""
        self._measured_next = np.zeros(n, dtype=np.int64)
        """Measured spectra, ``sequence``: each cell's next row."""
        self._sweeping = np.zeros(n, dtype=bool)
        self._sweeps: list[_SweepRun] = []
        self._last_z = np.full((n, self.freq_hz.size), np.nan + 0j)
        self._last_reported: dict[str, F64] = {}
        self._faults: list[FaultState] = []
        for i, f in enumerate(sc.faults):
            seed = (
                f.seed
                if self.seed == sc.seed
                else int(np.random.SeedSequence([f.seed, self.seed]).generate_state(1, np.uint64)[0])
            )
            self._faults.append(
                FaultState(
                    fault_id=i + 1,
                    kind=f.kind,
                    cells=None
                    if f.kind in STREAM_KINDS
                    else np.asarray(f.cells if f.cells is not None else range(n), dtype=np.int64),
                    severity=f.severity,
                    params=dict(f.params),
                    seed=seed,
                    start_s=f.start_s,
                    end_s=f.end_s,
                    duration_s=f.duration_s,
                    anchor=f.start_segment,
                    offset_s=f.start_offset_s,
                    injected=False,
                    rng=np.random.default_rng(seed),
                )
            )
        self._events: list[FaultEvent] = []
        self._seg_events: list[SegmentEvent] = []

    # ---------------------------------------------------------------------------------------- public
    @property
    def time_s(self) -> float:
        return self._k * self.dt_s

    @property
    def time_us(self) -> int:
        return self._time_us(self._k)

    @property
    def next_time_us(self) -> int:
        """Simulation time the next ``step()`` will report."""
        return self._time_us(self._k + 1)

    @property
    def finished(self) -> bool:
        return self._timeline_done and self._active is None

    def _time_us(self, k: int) -> int:
        return round(k * 1e6 / self.scenario.step_rate_hz)

    def active_faults(self) -> list[tuple[int, FaultKind, tuple[int, ...], float]]:
        """(id, kind, cells, severity) of every active fault, e.g. to resend after a seek."""
        return [
            (f.fault_id, f.kind, tuple(int(c) for c in f.cells) if f.cells is not None else (), f.severity)
            for f in self._faults
            if f.active
        ]

    # -------------------------------------------------------------------------------------- controls
    def _record(self, name: str, *args: object) -> None:
        if not self._replaying:
            self._controls.append((self._k, name, pickle.dumps(args)))
            if len(self._controls) > MAX_CONTROLS:
                self._forget_history()

    def _forget_history(self) -> None:
        """Keep the newer half of the control history (a client sending controls for days must not grow
        memory without bound). Seeking back is then possible to the first checkpoint taken at or after the
        oldest control kept, not before: from an older state the dropped controls would be missing."""
        self._controls = self._controls[len(self._controls) // 2 :]
        first = self._controls[0][0]
        self._checkpoints = [cp for cp in self._checkpoints if cp[0] >= first]
        if self._checkpoints:
            self._history_from_k = self._checkpoints[0][0]
        else:  # no state to rebuild from: the next step's start becomes one
            self._history_from_k = self._k
            self._force_checkpoint = True
        earliest_s = self._history_from_k / self.scenario.step_rate_hz
        log.info("control history shortened", seek_back_to_s=earliest_s)

    def set_load_current(self, current_a: float | None, cells: Sequence[int] | None = None) -> None:
        """Overrides the scenario's load on ``cells`` (None = all); ``None`` releases the override."""
        self._record("set_load_current", current_a, None if cells is None else tuple(cells))
        idx = np.arange(self.n_cells) if cells is None else np.asarray(cells, dtype=np.int64)
        self._load_override[idx] = np.nan if current_a is None else current_a

    def set_ambient(self, temp_c: float | None) -> None:
        """Overrides the chamber temperature; ``None`` releases it (back to the scenario's setpoint/ramp)."""
        self._record("set_ambient", temp_c)
        self._ambient_override = temp_c

    def set_eis_modes(self, modes: frozenset[str]) -> None:
        """Which EIS outputs to produce from the next step on (``instant``, ``sweep``); recorded like a
        control, so a seek back replays the modes in force at each time."""
        if modes != self.eis_modes:
            self._record("set_eis_modes", modes)
            self.eis_modes = modes

    def request_spectrum(self, cells: Sequence[int] | None = None) -> int:
        """Asks for a spectrum of ``cells`` (None = all) at the next step; returns the (first) spectrum id."""
        self._record("request_spectrum", None if cells is None else tuple(cells))
        idx = np.arange(self.n_cells) if cells is None else np.asarray(cells, dtype=np.int64)
        self._pending[:, idx] = True
        return int(self._spectrum_counter[idx[0]]) + 1

    def inject_fault(
        self,
        kind: FaultKind,
        cells: Sequence[int] | None = None,
        severity: float = 1.0,
        duration_s: float | None = None,
        params: Mapping[str, float | int | str] | None = None,
        fault_id: int | None = None,
    ) -> int:
        """Starts a fault at the next step (kind-specific parameters default as in a scenario file); returns
        its id, a new one (``fault_id`` is the id it was given, when a seek replays it). ``cells`` None = all
        cells (ignored for stream faults). ValueError if a parameter without a default is missing (nothing is
        recorded then)."""
        defaults = {
            key: spec.default for key, spec in SCENARIO_FAULT_PARAMS[kind].items() if spec.default is not None
        }
        merged: dict[str, float | int | str] = {**defaults, **(params or {})}
        missing = [key for key in SCENARIO_FAULT_PARAMS[kind] if key not in merged]
        if kind in UNIT_PARAM_PREFIX:
            unit_key = f"{UNIT_PARAM_PREFIX[kind]}_{SIGNAL_UNIT[str(merged['signal'])]}"
            missing += [] if unit_key in merged else [unit_key]
        if missing:
            raise ValueError(f"{kind_name(kind)} needs {', '.join(missing)}, which has no default")
        if fault_id is None:
            self._fault_ids_issued += 1
            fault_id = INJECTED_ID_BASE + self._fault_ids_issued
        fid = fault_id
        self._record(
            "inject_fault", kind, None if cells is None else tuple(cells), severity, duration_s, params, fid
        )
        seed = int(np.random.SeedSequence([self.seed, fid]).generate_state(1, np.uint64)[0])
        start = self.time_s
        self._faults.append(
            FaultState(
                fault_id=fid,
                kind=kind,
                cells=None
                if kind in STREAM_KINDS
                else np.asarray(cells if cells is not None else range(self.n_cells), dtype=np.int64),
                severity=severity,
                params=merged,
                seed=seed,
                start_s=start,
                end_s=None if duration_s is None else start + duration_s,
                duration_s=None,
                anchor=None,
                offset_s=0.0,
                injected=True,
                rng=np.random.default_rng(seed),
            )
        )
        return fid

    def clear_fault(self, fault_id: int) -> int:
        """Ends a fault at the next step; 0 = every fault injected by control. Returns the number cleared: a
        fault already ending at this step (cleared before, or at the end of its duration) is not counted."""
        self._record("clear_fault", fault_id)
        n = 0
        for f in self._faults:
            if f.done or (fault_id == 0 and not f.injected) or (fault_id not in (0, f.fault_id)):
                continue
            if f.end_s is not None and f.end_s <= self.time_s + _EPS_S:
                continue
            f.end_s = self.time_s
            if f.start_s is None or f.start_s > self.time_s:
                f.done = True  # never started: no events
            n += 1
        return n

    def seek_step(self, time_s: float) -> int:
        """The step a seek to ``time_s`` reaches: the nearest one, a tie going to the later step."""
        return max(0, math.floor(time_s * self.scenario.step_rate_hz + 0.5))

    def seek_steps(self, time_s: float) -> int:
        """How many steps ``seek(time_s)`` would simulate (from the checkpoint it would restart from)."""
        target = self.seek_step(time_s)
        if target >= self._k:
            return target - self._k
        start = max((cp for cp, _ in self._checkpoints if cp < target), default=0)
        return target - start

    def seek(self, time_s: float, *, keep_requests: bool = True) -> None:
        """Moves to ``time_s`` (``seek_step``): backwards restarts from the last checkpoint at or before
        the target (t = 0 if none) and replays the recorded controls issued before the target (later ones
        are forgotten); forwards simply runs on. The result is the same as running straight there, but for
        what the seek's caller was promised: spectrum requests not yet started are carried to the target
        (unless ``keep_requests`` is False), the spectra of the skipped steps are not counted (a sweep that
        starts in them gets its id at the target), and ids stay unique (see ``_spectrum_counter``)."""
        target = self.seek_step(time_s)
        backward = target < self._k
        requested = np.flatnonzero(self._pending.any(axis=0))
        self._seeking = True
        try:
            self._seek(target)
        finally:
            self._seeking = False
        if keep_requests and requested.size:
            self.request_spectrum(requested.tolist())  # recorded at the target, so a later seek replays it
        for run in self._sweeps:
            # a sweep started during the seek has no id yet (0); after a seek back every running sweep is a
            # new one, even if a checkpoint restored it with the id it had the first time round
            fresh = np.ones(run.cells.size, bool) if backward else run.ids == 0
            if fresh.any():
                self._spectrum_counter[run.cells[fresh]] += 1
                run.ids[fresh] = self._spectrum_counter[run.cells[fresh]]

    def _seek(self, target: int) -> None:
        if target < self._history_from_k:
            earliest = self._history_from_k / self.scenario.step_rate_hz
            raise ValueError(
                f"cannot seek back before {earliest:g} s: more than {MAX_CONTROLS} controls were received, "
                "and the older ones (needed to rebuild earlier states) were dropped"
            )
        if target < self._k:
            self._controls = [c for c in self._controls if c[0] < target]
            # a checkpoint holds the controls of its own step, which are forgotten if it is the target's
            self._checkpoints = [cp for cp in self._checkpoints if cp[0] < target]
            start = self._restore_checkpoint()
            controls = self._controls  # in step order: recorded as the steps went by
            # the checkpoint holds the controls of its own step (and of every step before it)
            i = bisect.bisect_right(controls, start, key=lambda c: c[0])
            self._replaying = True
            try:
                while self._k < target:
                    while i < len(controls) and controls[i][0] == self._k:
                        _, name, args = controls[i]
                        getattr(self, name)(*pickle.loads(args))
                        i += 1
                    self._advance()
            finally:
                self._replaying = False
        else:
            while self._k < target:
                self._advance()
        self._events.clear()
        self._seg_events.clear()

    def _checkpoint(self) -> None:
        """Saves the state at the start of a step (after that step's controls), at most ``MAX_CHECKPOINTS``:
        when full, every other one goes and the interval doubles, so they always span the whole run."""
        state = {k: self.__dict__[k] for k in self._state_keys}
        memo: dict[int, object] = {id(self.scenario): self.scenario}
        if self._active is not None:  # its segment (a drive cycle may hold a million rows) is immutable
            memo[id(self._active.seg)] = self._active.seg
        self._checkpoints.append((self._k, copy.deepcopy(state, memo)))
        if len(self._checkpoints) > self._max_checkpoints:
            self._checkpoints = self._checkpoints[::2]
            self._checkpoint_every *= 2

    def _restore_checkpoint(self) -> int:
        """The state of the last checkpoint (or of t = 0); returns its step."""
        if not self._checkpoints:
            self._reset()
            return -1
        step, state = self._checkpoints[-1]
        self.__dict__.update(copy.deepcopy(state, {id(self.scenario): self.scenario}))
        self._timeline = _flatten(self.scenario.timeline)
        for _ in itertools.islice(self._timeline, self._timeline_pos):
            pass
        return step

    # ------------------------------------------------------------------------------------------ step
    def step(self) -> StepOutput:
        return self._advance()

    def run(self, until_s: float) -> Iterator[StepOutput]:
        """Steps until the simulation time reaches ``until_s`` or the scenario finishes."""
        while self.time_s < until_s - _EPS_S and not self.finished:
            yield self.step()

    def _advance(self) -> StepOutput:
        k = self._k
        due = k % self._checkpoint_every == 0 or self._force_checkpoint
        if k and due and (not self._checkpoints or self._checkpoints[-1][0] < k):
            self._force_checkpoint = False
            self._checkpoint()
        t0 = self.time_s
        self._advance_timeline(t0)
        self._update_faults(t0)
        self._update_ambient()
        flags = np.zeros(self.n_cells, dtype=np.uint16)
        r_inst, r_b, a_b, g_b, i_short_per_v, heat_w, _, _ = self._circuit()
        ocv = self.profile.ocv_v_at(self.soc)
        e_v = ocv - (self._v_branch * a_b).sum(axis=1)
        r_step = r_inst + g_b.sum(axis=1)
        current = self._load_current(e_v, r_step, flags)
        # integrate the step: exact exponential discretisation of each RC branch (stable for any dt)
        self._v_branch = self._v_branch * a_b + g_b * current[:, None]
        voltage = e_v - r_step * current
        i_short = voltage * i_short_per_v
        capacity_as = 3600.0 * self.capacity_nominal_ah * self.soh
        self.soc = self.soc - (current + i_short) * self.dt_s / capacity_as
        joule_w = current**2 * r_inst + (self._v_branch**2 / r_b).sum(axis=1) + voltage * i_short + heat_w
        prof = self.profile
        t_inf = self.ambient_c + joule_w / prof.convection_w_per_k
        decay = math.exp(-self.dt_s * prof.convection_w_per_k / prof.heat_capacity_j_per_k)
        self.temp_c = t_inf + (self.temp_c - t_inf) * decay
        if self._fade_per_h:
            self.soh = np.maximum(
                self.soh - self._fade_per_h * self.dt_s / 3600.0 * self.capacity_factor, 0.01
            )
        self.current_a = current
        self.voltage_v = voltage
        self._k += 1
        t1 = self.time_s
        self._check_segment_end(t1)
        self._advance_timeline(t1)
        self._flag_limits(flags)
        if self._next_auto_s <= t1 + _EPS_S:
            self._pending[:] = True
            interval = self.scenario.eis.interval_s or math.inf
            while self._next_auto_s <= t1 + _EPS_S:
                self._next_auto_s += interval
        spectra, points = self._eis(t1, flags)
        reported = self._report(t1, flags)
        out = StepOutput(
            step=self._k,
            time_us=self.time_us,
            true=CellColumns(
                voltage_v=self.voltage_v.copy(),
                current_a=self.current_a.copy(),
                temp_c=self.temp_c.copy(),
                soc=self.soc.copy(),
                soh=self.soh.copy(),
                flags=flags,
            ),
            reported=reported,
            spectra=tuple(spectra),
            points=tuple(points),
            fault_events=tuple(self._events),
            stream_faults=tuple(self._stream_faults()),
            segment_events=tuple(self._seg_events),
            ambient_c=self.ambient_c,
            finished=self.finished,
        )
        self._events = []
        self._seg_events = []
        return out

    # -------------------------------------------------------------------------------------- timeline
    def _advance_timeline(self, now_s: float) -> None:
        while self._active is None and not self._timeline_done:
            item = next(self._timeline, None)
            self._timeline_pos += 1
            if item is None:
                self._timeline_done = True
                log.debug("timeline finished", t_s=now_s)
                return
            if isinstance(item, _Mark):
                self._label_started(item.label, now_s)
            elif isinstance(item, _SetParameter):
                self._set_parameter(item.parameter, item.value)
            elif isinstance(item, Ambient | Soh | EisRequest):
                if item.label:
                    self._label_started(item.label, now_s)
                self._instant(item)
            elif not isinstance(item, Repeat | Sweep):
                self._start_segment(item, now_s)

    def _set_parameter(self, parameter: str, value: float) -> None:
        if parameter == "ambient_temp_c":
            self.ambient_setpoint_c = value
            self.ambient_c = value
            self._ambient_rate = None
        elif parameter == "soc":
            self.soc[:] = value
        else:
            self.soh = value * self.capacity_factor

    def _instant(self, seg: Ambient | Soh | EisRequest) -> None:
        if isinstance(seg, Ambient):
            self.ambient_setpoint_c = seg.temp_c
            self._ambient_rate = seg.rate_c_per_min
            if seg.rate_c_per_min is None:
                self.ambient_c = seg.temp_c
        elif isinstance(seg, Soh):
            if seg.value is not None:
                self.soh = seg.value * self.capacity_factor
            if seg.fade_per_h is not None:
                self._fade_per_h = seg.fade_per_h
        else:
            self._pending[:] = True

    def _label_started(self, label: str, now_s: float) -> None:
        if label in self._seen_labels:
            return
        self._seen_labels.add(label)
        for f in self._faults:
            if f.anchor == label and f.start_s is None:
                f.start_s = now_s + f.offset_s

    def _start_segment(self, seg: Load, now_s: float) -> None:
        if seg.label:
            self._label_started(seg.label, now_s)
        rate = self.scenario.step_rate_hz
        duration = seg.duration_s
        if isinstance(seg, DriveCycleSegment):
            cycles_s = seg.loops * seg.cycle.duration_s
            duration = cycles_s if duration is None else min(duration, cycles_s)
        n_steps = None if duration is None else max(1, round(duration * rate))
        self._leaf_count += 1
        self._active = _ActiveSegment(seg, self._leaf_count, self._k, n_steps)
        self._seg_events.append(
            SegmentEvent(self.time_us, self._leaf_count, type(seg).__name__, "start", "", seg.label)
        )

    def _end_segment(self, reason: str) -> None:
        active = self._active
        if active is None:
            return
        self._seg_events.append(
            SegmentEvent(
                self.time_us, active.index, type(active.seg).__name__, "end", reason, active.seg.label
            )
        )
        log.debug("segment ended", index=active.index, kind=type(active.seg).__name__, reason=reason)
        self._active = None

    def _until_holds(self, until: Until) -> bool:
        for cond in until.conditions:
            values = {"voltage_v": self.voltage_v, "soc": self.soc, "temp_c": self.temp_c}[cond.quantity]
            if until.cells == "mean":
                if cond.holds(float(values.mean())):
                    return True
                continue
            hits = [cond.holds(float(v)) for v in values]
            if all(hits) if until.cells == "all" else any(hits):
                return True
        return False

    def _check_segment_end(self, now_s: float) -> None:
        active = self._active
        if active is None:
            return
        seg, prof = active.seg, self.profile
        elapsed = self._k - active.start_step
        discharging = self.current_a > 0
        charging = self.current_a < 0
        if isinstance(seg, CcCvCharge) and active.cv and -float(self.current_a.min()) <= seg.cutoff_current_a:
            self._end_segment("cv_cutoff")
        elif not isinstance(seg, Rest) and np.any(discharging & (self.voltage_v <= prof.voltage_min_v)):
            self._end_segment("cutoff_low")
        elif isinstance(seg, ConstantCurrent) and np.any(charging & (self.voltage_v >= prof.voltage_max_v)):
            self._end_segment("cutoff_high")
        elif not isinstance(seg, Rest) and np.any(self.temp_c >= prof.temp_max_c):
            self._end_segment("temperature")
        elif seg.until is not None and self._until_holds(seg.until):
            self._end_segment("until")
        elif active.n_steps is not None and elapsed >= active.n_steps:
            self._end_segment("cycles" if isinstance(seg, DriveCycleSegment) else "duration")

    # ----------------------------------------------------------------------------------------- loads
    def _load_current(self, e_v: F64, r_ohm: F64, flags: npt.NDArray[np.uint16]) -> F64:
        n = self.n_cells
        active = self._active
        prof = self.profile
        current = np.zeros(n)
        clamp_high = False
        if active is not None:
            seg = active.seg
            if isinstance(seg, ConstantCurrent):
                current[:] = seg.current_a
            elif isinstance(seg, ConstantPower):
                current[:] = self._power_current(seg.power_w, e_v, r_ohm, flags)
                clamp_high = True
            elif isinstance(seg, DriveCycleSegment):
                cyc = seg.cycle
                local = (self._k - active.start_step) * self.dt_s % cyc.duration_s + float(cyc.time_s[0])
                value = float(np.interp(local, cyc.time_s, cyc.value)) * seg.scale
                if cyc.signal == "current":
                    current[:] = value
                else:
                    current[:] = self._power_current(value, e_v, r_ohm, flags)
                clamp_high = True
            elif isinstance(seg, CcCvCharge):
                current[:] = -seg.current_a
                needed = float(((e_v - seg.voltage_v) / r_ohm).max())
                # series string: one current; CV keeps the highest cell at the voltage limit
                if active.cv or needed > -seg.current_a:
                    active.cv = True
                    current[:] = min(max(needed, -seg.current_a), 0.0)
        if clamp_high and current[0] < 0:
            # a charge pulse (regeneration) is limited so no cell exceeds the upper voltage, as a BMS would
            limit = min(float(((e_v - prof.voltage_max_v) / r_ohm).max()), 0.0)
            if current[0] < limit:
                current[:] = limit
                flags |= np.uint16(CellFlags.VOLTAGE_HIGH_LIMIT)
        override = ~np.isnan(self._load_override)
        current = np.where(override, self._load_override, current)
        too_big = np.abs(current) > prof.current_max_a
        if too_big.any():
            current = np.clip(current, -prof.current_max_a, prof.current_max_a)
            flags[too_big] |= np.uint16(CellFlags.CURRENT_LIMIT)
        return current

    def _power_current(self, power_w: float, e_v: F64, r_ohm: F64, flags: npt.NDArray[np.uint16]) -> float:
        """The series current that draws ``power_w`` per cell on average: n P = I sum(E) - I^2 sum(R)."""
        e_sum, r_sum = float(e_v.sum()), float(r_ohm.sum())
        p_total = power_w * self.n_cells
        disc = e_sum * e_sum - 4.0 * r_sum * p_total
        if disc < 0:
            # more than the cells can deliver: the maximum-power current
            flags |= np.uint16(CellFlags.CURRENT_LIMIT)
            return e_sum / (2.0 * r_sum)
        return 2.0 * p_total / (e_sum + math.sqrt(disc))

    def _update_ambient(self) -> None:
        if self._ambient_override is not None:
            self.ambient_c = self._ambient_override
            return
        if self._ambient_rate is not None:
            step_c = self._ambient_rate / 60.0 * self.dt_s
            diff = self.ambient_setpoint_c - self.ambient_c
            self.ambient_c = (
                self.ambient_setpoint_c
                if abs(diff) <= step_c
                else self.ambient_c + math.copysign(step_c, diff)
            )
        else:
            self.ambient_c = self.ambient_setpoint_c

    # --------------------------------------------------------------------------------------- circuit
    def _cell_params(self, cells: I64, soc: F64, temp_c: F64, soh: F64, time_s: float) -> F64:
        """Circuit parameters of ``cells`` with the manufacturing spread and physics faults applied."""
        return self._with_physics_faults(self._base_params(cells, soc, temp_c, soh), cells, temp_c, time_s)

    def _base_params(self, cells: I64, soc: F64, temp_c: F64, soh: F64) -> F64:
        """Circuit parameters of ``cells`` with the manufacturing spread (a new array)."""
        p = self.source.params(self.scenario.cells.profile, soc, temp_c, soh).copy()
        rf = self.resistance_factor[cells]
        for col in (P.R0, P.R_L, P.R1, P.R2, P.R_W):
            p[:, col] *= rf
        return p

    def _with_physics_faults(self, p: F64, cells: I64, temp_c: F64, time_s: float) -> F64:
        """``p`` (changed in place) with the active physics faults applied."""
        for f in self._faults:
            if not f.active or f.cells is None:
                continue
            hit = (cells[:, None] == f.cells[None, :]).any(axis=1)  # np.isin costs 20 µs per call
            if not hit.any():
                continue
            if f.kind == FaultKind.CONTACT_RESISTANCE:
                p[hit, P.R0] *= _contact_factor(f, time_s)
            elif f.kind == FaultKind.LITHIUM_PLATING:
                cold = hit & (temp_c < float(f.params["below_temp_c"]))
                # plating-like signature: a larger charge-transfer arc and a slower, larger diffusion tail
                grow = 1.0 + 2.0 * f.severity
                p[cold, P.R2] *= grow
                p[cold, P.R_W] *= grow
                p[cold, P.TAU_W] *= grow
        return p

    def _physics_key(self) -> tuple[tuple[int, object], ...]:
        """What the active physics faults do to the circuit now: while it stays the same (a contact resistance
        past its ramp, plating on the same cold cells) the circuit is not computed again."""
        key: list[tuple[int, object]] = []
        for f in self._faults:
            if not f.active or f.cells is None:
                continue
            if f.kind == FaultKind.CONTACT_RESISTANCE:
                key.append((f.fault_id, _contact_factor(f, self.time_s)))
            elif f.kind == FaultKind.LITHIUM_PLATING:
                key.append((f.fault_id, (self.temp_c[f.cells] < float(f.params["below_temp_c"])).tobytes()))
        return tuple(key)

    def _circuit(self) -> tuple[F64, F64, F64, F64, F64, F64, F64, F64]:
        """(r_inst, r_branch, exp(-dt/tau), R (1 - exp), 1/R_short, extra heat W, params, op soc) — cached
        while the operating point stays within tolerance, because evaluating the source is the costly part."""
        op = self._cache_op
        tol_soc, tol_t, tol_soh = self._tol
        if (
            self._cache is None
            or op is None
            or np.abs(op[0] - self.soc).max() > tol_soc
            or np.abs(op[1] - self.temp_c).max() > tol_t
            or np.abs(op[2] - self.soh).max() > tol_soh
        ):
            self._cache_base = self._base_params(np.arange(self.n_cells), self.soc, self.temp_c, self.soh)
            self._cache_op = (self.soc.copy(), self.temp_c.copy(), self.soh.copy())
            self._cache = None
        key = self._physics_key()  # e.g. a contact resistance ramping: the cheap part again, not the model
        if self._cache is None or key != self._cache_key:
            self._cache_key = key
            params = self._cache_base
            if key:
                cells = np.arange(self.n_cells)
                params = self._with_physics_faults(params.copy(), cells, self.temp_c, self.time_s)
            r_inst, r_b, tau_b = time_domain(params)
            a_b = np.exp(-self.dt_s / tau_b)
            g_b = r_b * (1.0 - a_b)
            assert self._cache_op is not None
            self._cache = (r_inst, r_b, a_b, g_b, np.zeros(0), np.zeros(0), params, self._cache_op[0])
        r_inst, r_b, a_b, g_b, _, _, params, soc = self._cache
        # fault currents and heat change without the operating point moving: never cached
        inv_short = np.zeros(self.n_cells)
        heat = np.zeros(self.n_cells)
        for f in self._faults:
            if f.active and f.cells is not None:
                if f.kind == FaultKind.INTERNAL_SHORT:
                    inv_short[f.cells] += 1.0 / float(f.params["short_resistance_ohm"])
                elif f.kind == FaultKind.ACCELERATED_HEATING:
                    heat[f.cells] += float(f.params["extra_heat_w"])
        return r_inst, r_b, a_b, g_b, inv_short, heat, params, soc

    # ---------------------------------------------------------------------------------------- faults
    def _update_faults(self, now_s: float) -> None:
        for f in self._faults:
            if f.done or f.start_s is None:
                continue
            end = (
                f.end_s
                if f.end_s is not None
                else (f.start_s + f.duration_s if f.duration_s is not None else None)
            )
            if not f.active and f.start_s <= now_s + _EPS_S:
                f.active = True
                f.end_s = end
                self._fault_started(f)
                self._emit(f, FaultPhase.START)
            if f.active and end is not None and end <= now_s + _EPS_S:
                f.active = False
                f.done = True
                self._emit(f, FaultPhase.END)
        if any(f.done for f in self._faults):
            # Ended faults have no further effect; dropping them keeps every per-step loop over the faults
            # short (a bench injecting faults for days would otherwise slow each step without bound).
            self._faults = [f for f in self._faults if not f.done]

    def _fault_started(self, f: FaultState) -> None:
        log.info("fault started", fault_id=f.fault_id, kind=f.kind.name, t_s=self.time_s)
        if f.cells is None:
            return
        if f.kind == FaultKind.CAPACITY_FADE:
            # irreversible: ending the fault ends the event, the lost capacity stays lost
            self.soh[f.cells] = np.maximum(self.soh[f.cells] - float(f.params["capacity_loss"]), 0.01)
        elif f.kind == FaultKind.FROZEN:
            if f.signal == "impedance":
                f.frozen["impedance"] = self._last_z[f.cells].copy()
            else:
                last = self._last_reported.get(f.signal)
                f.frozen[f.signal] = last.copy() if last is not None else np.full(self.n_cells, np.nan)
        if f.kind == FaultKind.CAPACITY_FADE:  # contact and plating faults: _physics_key() changes
            self._cache = None

    def _emit(self, f: FaultState, phase: FaultPhase) -> None:
        cells = tuple(int(c) for c in f.cells) if f.cells is not None else ()
        self._events.append(FaultEvent(self.time_us, f.fault_id, f.kind, phase, cells, f.severity))
        if phase == FaultPhase.END:
            log.info("fault ended", fault_id=f.fault_id, kind=f.kind.name, t_s=self.time_s)

    def _stream_faults(self) -> list[StreamFault]:
        return [
            StreamFault(
                f.fault_id,
                f.kind,
                f.params,
                f.seed,
                round((f.start_s or 0.0) * 1e6),
                None if f.end_s is None else round(f.end_s * 1e6),
            )
            for f in self._faults
            if f.active and f.kind in STREAM_KINDS
        ]

    def _flag_limits(self, flags: npt.NDArray[np.uint16]) -> None:
        prof = self.profile
        v, t = self.voltage_v, self.temp_c
        bits = np.where(v < prof.voltage_min_v, np.uint16(CellFlags.VOLTAGE_LOW_LIMIT), np.uint16(0))
        bits |= np.where(v > prof.voltage_max_v + 1e-9, np.uint16(CellFlags.VOLTAGE_HIGH_LIMIT), np.uint16(0))
        hot_cold = (t > prof.temp_max_c) | (t < prof.temp_min_c)
        bits |= np.where(hot_cold, np.uint16(CellFlags.TEMPERATURE_LIMIT), np.uint16(0))
        if self._range is not None:
            outside = self._range.outside(self.soc, t, self.soh)
            bits |= np.where(outside, np.uint16(CellFlags.EXTRAPOLATED), np.uint16(0))
        flags |= bits.astype(np.uint16)
        n = self.n_cells
        for f in self._faults:
            if f.active and f.cells is not None:
                bit = CellFlags.MEASUREMENT_FAULT if f.kind in MEASUREMENT_KINDS else CellFlags.FAULT_ACTIVE
                flags[f.mask(n)] |= np.uint16(bit)

    def _report(self, now_s: float, flags: npt.NDArray[np.uint16]) -> CellColumns:
        cells = np.arange(self.n_cells)
        values = {"voltage": self.voltage_v, "current": self.current_a, "temperature": self.temp_c}
        for f in self._faults:
            if f.active and f.kind in MEASUREMENT_KINDS and f.signal in values:
                values[f.signal] = apply_real(f, values[f.signal], cells, now_s)
        for name, col in values.items():
            self._last_reported[name] = col
        return CellColumns(
            voltage_v=values["voltage"].copy(),
            current_a=values["current"].copy(),
            temp_c=values["temperature"].copy(),
            soc=self.soc.copy(),
            soh=self.soh.copy(),
            flags=flags,
        )

    # ------------------------------------------------------------------------------------------- EIS
    def _true_z(self, cells: I64, points: I64, rows: I64 | None = None) -> C128:
        """The cells' impedance at the grid points ``points``: the model's at the operating point, or the
        measured spectra ``rows`` chosen when the spectrum started (NaN outside their band)."""
        if self._measured is not None:
            assert rows is not None
            return self._measured.z[rows][:, points]
        params = self._cell_params(cells, self.soc[cells], self.temp_c[cells], self.soh[cells], self.time_s)
        return impedance(params, self.freq_hz[points][None, :])

    def _start_spectrum(self, cells: I64) -> I64 | None:
        """A spectrum of ``cells`` starts: count it (not during a seek: nobody sees it); returns the measured
        spectra it will report (None: the model's)."""
        if not self._seeking:
            self._spectrum_counter[cells] += 1
        bank = self._measured
        if bank is None:
            return None
        if bank.select == "nearest":
            return bank.nearest(self.soc[cells], self.temp_c[cells], self.soh[cells])
        rows = self._measured_next[cells] % len(bank)
        self._measured_next[cells] += 1
        return rows

    def _ids(self, cells: I64) -> I64:
        """The ids of spectra of ``cells`` just started: 0 during a seek (not counted)."""
        return np.zeros(cells.size, np.int64) if self._seeking else self._spectrum_counter[cells].copy()

    def _measure(self, cells: I64, z: C128, point_index: I64, now_s: float) -> tuple[C128, Bool]:
        dropped = ~np.isfinite(z)  # a measured spectrum that does not reach a grid frequency
        rep = z
        for f in self._faults:
            if (
                f.active
                and f.cells is not None
                and (
                    f.kind == FaultKind.SPECTRUM_DRIFT
                    or (
                        f.kind in MEASUREMENT_KINDS
                        and (f.signal == "impedance" or f.kind == FaultKind.DROPPED_POINTS)
                    )
                )
            ):
                rep = apply_impedance(f, rep, dropped, cells, point_index, self.freq_hz.size, now_s)
        self._last_z[cells[:, None], point_index[None, :]] = rep
        return rep, dropped

    def _eis(self, now_s: float, flags: npt.NDArray[np.uint16]) -> tuple[list[Spectrum], list[SweepPoints]]:
        spectra: list[Spectrum] = []
        points: list[SweepPoints] = []
        n_f = self.freq_hz.size
        all_points = np.arange(n_f)
        if "instant" in self.eis_modes and self._pending[0].any():
            cells = np.flatnonzero(self._pending[0])
            rows = self._start_spectrum(cells)
            z = self._true_z(cells, all_points, rows)
            rep, dropped = self._measure(cells, z, all_points, now_s)
            spectra.append(self._spectrum(cells, self._ids(cells), z, rep, dropped, 0, flags))
        self._pending[0] = False
        if "sweep" not in self.eis_modes:
            self._pending[1] = False  # sweeps already running complete
        start = self._pending[1] & ~self._sweeping
        if start.any():
            cells = np.flatnonzero(start)
            self._pending[1, cells] = False
            self._sweeping[cells] = True
            rows = self._start_spectrum(cells)
            eis = self.scenario.eis
            durations = eis.periods_per_point / self.freq_hz + eis.settle_s
            self._sweeps.append(
                _SweepRun(
                    cells=cells,
                    ids=self._ids(cells),
                    rows=np.zeros(cells.size, np.int64) if rows is None else rows,
                    start_s=now_s,
                    done_s=now_s + np.cumsum(durations),
                    z_true=np.full((cells.size, n_f), np.nan + 0j),
                    z_rep=np.full((cells.size, n_f), np.nan + 0j),
                    dropped=np.zeros((cells.size, n_f), dtype=bool),
                )
            )
        still: list[_SweepRun] = []
        for run in self._sweeps:
            last = int(np.searchsorted(run.done_s, now_s + _EPS_S, side="right"))
            if last > run.next_point:
                # every point finished during this step is measured at the current operating point, so the
                # operating point drifts along the sweep exactly as on a real instrument
                idx = np.arange(run.next_point, last)
                z = self._true_z(run.cells, idx, run.rows)
                rep, dropped = self._measure(run.cells, z, idx, now_s)
                run.z_true[:, idx] = z
                run.z_rep[:, idx] = rep
                run.dropped[:, idx] = dropped
                run.next_point = last
                points.append(
                    SweepPoints(
                        cells=run.cells,
                        spectrum_ids=run.ids,
                        n_points=n_f,
                        point_index=idx,
                        time_us=np.round(run.done_s[idx] * 1e6).astype(np.int64),
                        freq_hz=self.freq_hz[idx],
                        z_ohm=rep,
                        dropped=dropped,
                        flags=flags[run.cells],
                    )
                )
            if run.next_point >= n_f:
                self._sweeping[run.cells] = False
                duration_us = round((run.done_s[-1] - run.start_s) * 1e6)
                spectra.append(
                    self._spectrum(run.cells, run.ids, run.z_true, run.z_rep, run.dropped, duration_us, flags)
                )
            else:
                still.append(run)
        self._sweeps = still
        return spectra, points

    def _spectrum(
        self,
        cells: I64,
        ids: I64,
        z_true: C128,
        z_rep: C128,
        dropped: Bool,
        duration_us: int,
        flags: npt.NDArray[np.uint16],
    ) -> Spectrum:
        return Spectrum(
            time_us=self.time_us,
            sweep_duration_us=duration_us,
            cells=cells,
            spectrum_ids=ids,
            freq_hz=self.freq_hz,
            z_ohm=z_rep,
            z_true_ohm=z_true,
            dropped=dropped,
            soc=self.soc[cells].copy(),
            soh=self.soh[cells].copy(),
            temp_c=self.temp_c[cells].copy(),
            current_a=self.current_a[cells].copy(),
            flags=flags[cells].copy(),
        )
