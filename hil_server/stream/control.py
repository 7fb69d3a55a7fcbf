"""The controls that act on the stream itself (SPEC.md section 6.3): PAUSE, RESUME, STOP, START, SEEK and
SET_SPEED change the server's ``SimState``, speed or time line; every other command goes to the source (the
engine: currents, faults, EIS requests). Which command is allowed in which state, and the state it leads to,
is ``protocol.SIM_TRANSITIONS`` and nothing here. A refused control raises ``ControlRefusedError`` (a NAK)."""

from __future__ import annotations

import asyncio

import protocol as p
from hil_server.scenario import STREAM_KINDS
from hil_server.session.config import ServerConfig
from hil_server.stream.source import ControlRefusedError, Source
from protocol import SIM_TRANSITIONS
from protocol._session import SIM_COMMANDS

_KNOWN = frozenset(int(c) for c in p.ControlCommand)
MAX_SPEED_PPM = 1_000_000_000
"""SET_SPEED at most 1000x real time (SPEC.md); 0, as fast as the slowest client reads, is faster still."""


class StreamControl:
    """Mixed into the server, beside ``StreamScheduler`` (whose loop every control wakes)."""

    source: Source
    sim_state: p.SimState
    speed: float
    tick_cost_s: float
    resumed: asyncio.Event
    streaming_changed: asyncio.Event
    _replan: asyncio.Event
    config: ServerConfig
    fault_owners: dict[int, object]
    """Stream faults injected by CONTROL: fault id -> the session they act on (SPEC.md 6.4)."""

    def _reanchor(self) -> None:
        raise NotImplementedError

    def fault_starts(self, session: object) -> list[p.FaultEvent]:
        """What a session that has just subscribed to FAULT_EVENT is told first: a START for every fault
        active that acts on it (SPEC.md 6.4: no cell is flagged without its fault's START)."""
        owners = self.fault_owners
        return [e for e in self.source.active_fault_events() if owners.get(e.fault_id, session) is session]

    def _cells(self, cell: int) -> list[int] | None:
        n = self.source.n_cells
        if cell == p.ALL_CELLS:
            return None
        if cell >= n:
            raise ControlRefusedError(p.ErrorCode.UNKNOWN_CELL, f"cell {cell} does not exist (0..{n - 1})")
        return [cell]

    def apply_control(self, msg: p.Control, owner: object = None) -> int:
        """Carry out a CONTROL (the ACK's ``result``) or raise ``ControlRefusedError`` (its NAK). Checked in
        SPEC.md's order: the command is known, the state table allows it, its arguments are in range.
        ``owner``: the session that sent it; a stream fault it injects acts on that session only."""
        try:
            result = self._apply_control(msg)
        finally:
            self._wake_loop()  # whatever it changed, the pacing loop decides again
        if (
            owner is not None
            and msg.command == p.ControlCommand.INJECT_FAULT
            and msg.fault_kind in STREAM_KINDS
        ):
            self.fault_owners[result] = owner
        return result

    def _apply_control(self, msg: p.Control) -> int:
        cmd, state, c = msg.command, self.sim_state, p.ControlCommand
        if cmd not in _KNOWN:
            raise ControlRefusedError(p.ErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd}")
        if cmd in SIM_COMMANDS and not self.source.simulates:
            return self.source.control(msg, None)  # its refusal, in every state
        target = SIM_TRANSITIONS[state].get(c(cmd))
        if target is None:
            raise ControlRefusedError(
                p.ErrorCode.NOT_ALLOWED_IN_STATE, f"{c(cmd).name} is not allowed when {state.name}"
            )
        result = 0
        if cmd == c.START:
            self.source.seek(0, restart=True)  # a new run: STOPPED and FINISHED only (the table)
            self._reanchor()
        elif cmd == c.SEEK:
            result = self._seek(msg.value)
        elif cmd == c.SET_SPEED:
            if msg.value < 0:
                raise ControlRefusedError(p.ErrorCode.OUT_OF_RANGE, "speed must be >= 0")
            if msg.value > MAX_SPEED_PPM:
                raise ControlRefusedError(
                    p.ErrorCode.OUT_OF_RANGE, f"speed at most {MAX_SPEED_PPM} ppm ({MAX_SPEED_PPM // 10**6}x)"
                )
            self.speed = msg.value / 1e6
            self._reanchor()
        elif cmd not in (c.PAUSE, c.RESUME, c.STOP):
            result = self.source.control(msg, self._cells(msg.cell))
        self.sim_state = target
        if target is p.SimState.RUNNING:
            self.resumed.set()
        return result

    def _seek(self, value: int) -> int:
        if value < 0:
            raise ControlRefusedError(p.ErrorCode.OUT_OF_RANGE, "seek target must be >= 0")
        ahead_s = (value - self.source.time_us) / 1e6
        if ahead_s > self.config.max_seek_ahead_s:
            raise ControlRefusedError(
                p.ErrorCode.OUT_OF_RANGE,
                f"seek at most {self.config.max_seek_ahead_s:g} s ahead (this is {ahead_s:.0f} s); "
                "run ahead with SET_SPEED instead",
            )
        steps = self.source.seek_cost(value)
        stall_s = steps * self.tick_cost_s
        if stall_s > self.config.max_seek_stall_s:
            raise ControlRefusedError(
                p.ErrorCode.OUT_OF_RANGE,
                f"this seek would simulate {steps} steps, about {stall_s:.0f} s with every client's "
                f"stream stopped (limit {self.config.max_seek_stall_s:g} s); seek nearer",
            )
        self.source.seek(value)
        self._reanchor()
        return self.source.time_us

    def _wake_loop(self) -> None:
        self._replan.set()
        self.streaming_changed.set()
