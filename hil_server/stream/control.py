"""The controls that act on the stream itself (SPEC.md section 7): PAUSE, RESUME, STOP, START, SEEK and
SET_SPEED change the server's ``SimState``, speed or time line; every other command goes to the source (the
engine: currents, faults, EIS requests). A refused control raises ``ControlRefusedError`` (a NAK)."""

from __future__ import annotations

import asyncio

import protocol as p
from hil_server.session.config import ServerConfig
from hil_server.stream.source import ControlRefusedError, Source


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

    def _reanchor(self) -> None:
        raise NotImplementedError

    def _cells(self, cell: int) -> list[int] | None:
        n = self.source.n_cells
        if cell == p.ALL_CELLS:
            return None
        if cell >= n:
            raise ControlRefusedError(p.ErrorCode.UNKNOWN_CELL, f"cell {cell} does not exist (0..{n - 1})")
        return [cell]

    def apply_control(self, msg: p.Control) -> int:
        try:
            return self._apply_control(msg)
        finally:
            self._wake_loop()  # whatever it changed, the pacing loop decides again

    def _apply_control(self, msg: p.Control) -> int:
        cmd, state = msg.command, self.sim_state
        c = p.ControlCommand
        if cmd == c.PAUSE:
            if state is not p.SimState.RUNNING:
                raise ControlRefusedError(p.ErrorCode.NOT_ALLOWED_IN_STATE, f"cannot pause when {state.name}")
            self.sim_state = p.SimState.PAUSED
            return 0
        if cmd == c.RESUME:
            if state is not p.SimState.PAUSED:
                raise ControlRefusedError(
                    p.ErrorCode.NOT_ALLOWED_IN_STATE, f"cannot resume when {state.name}"
                )
            self._run()
            return 0
        if cmd == c.STOP:
            self.sim_state = p.SimState.STOPPED
            return 0
        if cmd == c.START:
            if state is p.SimState.RUNNING:
                raise ControlRefusedError(p.ErrorCode.NOT_ALLOWED_IN_STATE, "already running")
            if state in (p.SimState.STOPPED, p.SimState.FINISHED):
                self.source.seek(0)
            self._run()
            return 0
        if cmd == c.SEEK:
            if msg.value < 0:
                raise ControlRefusedError(p.ErrorCode.OUT_OF_RANGE, "seek target must be >= 0")
            ahead_s = (msg.value - self.source.time_us) / 1e6
            if ahead_s > self.config.max_seek_ahead_s:
                raise ControlRefusedError(
                    p.ErrorCode.OUT_OF_RANGE,
                    f"seek at most {self.config.max_seek_ahead_s:g} s ahead (this is {ahead_s:.0f} s); "
                    "run ahead with SET_SPEED instead",
                )
            steps = self.source.seek_cost(msg.value)
            stall_s = steps * self.tick_cost_s
            if stall_s > self.config.max_seek_stall_s:
                raise ControlRefusedError(
                    p.ErrorCode.OUT_OF_RANGE,
                    f"this seek would simulate {steps} steps, about {stall_s:.0f} s with every client's "
                    f"stream stopped (limit {self.config.max_seek_stall_s:g} s); seek nearer",
                )
            self.source.seek(msg.value)
            if self.sim_state is p.SimState.FINISHED:
                self.sim_state = p.SimState.PAUSED
            self._reanchor()
            return self.source.time_us
        if cmd == c.SET_SPEED:
            if msg.value < 0:
                raise ControlRefusedError(p.ErrorCode.OUT_OF_RANGE, "speed must be >= 0")
            self.speed = msg.value / 1e6
            self._reanchor()
            return 0
        try:
            c(cmd)
        except ValueError:
            raise ControlRefusedError(p.ErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd}") from None
        return self.source.control(msg, self._cells(msg.cell))

    def _run(self) -> None:
        self.sim_state = p.SimState.RUNNING
        self.resumed.set()

    def _wake_loop(self) -> None:
        self._replan.set()
        self.streaming_changed.set()
