"""Pacing a stream to its clients: one loop ticks the source on absolute deadlines and broadcasts each
tick's frames to every streaming session.

Deadlines are ``anchor + (t - t0) / speed`` (never accumulated relative sleeps, so lateness does not add
up); at speed 0 the loop ticks only when every streaming client has room, in bursts of at most ``BURST_S``
so each writer sends many frames per write. Any control that changes the state, the speed or the time line
wakes the wait and the decision is made again. ``HilServer`` (``transport/tcp.py``) is this loop plus its
listener; the loop sees a session only through ``StreamingSession``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import structlog

import protocol as p
from hil_server.sim.output import StreamFault
from hil_server.stream.source import BIT_EVENT, BIT_STATES, Item, Source, Tick
from hil_server.stream.stream_faults import TransportFaults
from protocol import SessionState

log = structlog.get_logger(__name__)

BEHIND_WARN_S = 0.1
"""A paced tick this late is logged (at most once a second): the stream stalled or cannot keep up."""
BURST_S = 0.002
"""At speed 0, how long the loop may tick back to back before it lets the sessions' writers run."""


class StreamingSession(Protocol):
    """What the loop needs of a session (``transport.tcp.Session``)."""

    state: SessionState
    closing: bool
    mask: int
    divider: int
    eis_mode: int
    cells: set[int] | None
    transport: TransportFaults
    queue: collections.deque[bytes]
    wake: asyncio.Event
    room: asyncio.Event
    log: Any

    def wants(self, item: Item, default_mode: int) -> bool: ...

    def push_telemetry(self, msg_type: int, payload: bytes, flags: int) -> None: ...

    def push_payload(
        self,
        msg_type: int,
        payload: bytes,
        droppable: bool = True,
        faults: tuple[StreamFault, ...] = (),
        t_us: int = 0,
        flags: int = 0,
    ) -> None: ...

    def queue_telemetry(self, frames: Any) -> None: ...

    def reply(self, message: p.Message, now: float = 0.0) -> None: ...

    def abort(self) -> None: ...


class StreamScheduler:
    """The pacing loop, mixed into the server that owns the sessions (see the module docstring)."""

    source: Source
    sessions: Mapping[int, StreamingSession]
    sim_state: p.SimState
    speed: float
    now: Callable[[], float]
    resumed: asyncio.Event
    streaming_changed: asyncio.Event
    _replan: asyncio.Event
    _anchor: tuple[float, int] | None
    _behind_logged: float
    _default_mode: int
    lateness_us: list[float]
    tick_cost_s: float
    recorder: Any
    fault_owners: dict[int, object]

    def _record(self, msg_type: int, payload: bytes, flags: int = 0) -> None:
        raise NotImplementedError

    def _streaming(self) -> list[StreamingSession]:
        return [s for s in self.sessions.values() if s.state is SessionState.STREAMING and not s.closing]

    def _reanchor(self) -> None:
        self._anchor = (self.now(), self.source.time_us)

    async def _sim_loop(self) -> None:
        self._reanchor()
        while True:
            try:
                await self._iteration()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A failing step must not leave a server that accepts clients and streams nothing while
                # its heartbeats say RUNNING: the stream stops, every client is told, the server stays up.
                log.exception("stream stopped: the source failed", t_s=self.source.time_us / 1e6)
                self.sim_state = p.SimState.STOPPED
                for s in list(self.sessions.values()):
                    if not s.closing:
                        s.reply(p.Error(p.ErrorCode.INTERNAL, 0, "the simulation failed; see the server log"))

    async def _iteration(self) -> None:
        """Wait for the next tick's deadline (or, at speed 0, for room at every client), then tick. Any
        control that changes the state, speed or time line wakes the wait, and the decision is made again."""
        if self.sim_state is not p.SimState.RUNNING:
            self.resumed.clear()
            await self.resumed.wait()
            self._reanchor()
            return
        if self.speed > 0:
            assert self._anchor is not None
            wall0, t0_us = self._anchor
            due = wall0 + (self.source.next_time_us - t0_us) / 1e6 / self.speed
            now = self.now()
            if now < due:  # never early: decide again after the wait (timers may fire before their time)
                self._replan.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._replan.wait(), due - now)
                return
            # Yield once per tick, behind schedule too, or the sessions' readers and writers would starve.
            await asyncio.sleep(0)
            if self.sim_state is not p.SimState.RUNNING or self._anchor != (wall0, t0_us):
                return  # a control arrived during the yield
            now = self.now()
            self.lateness_us.append((now - due) * 1e6)
            if now - due > BEHIND_WARN_S and now - self._behind_logged >= 1.0:
                self._behind_logged = now
                t_s = self.source.time_us / 1e6
                log.warning("stream behind schedule", late_ms=round((now - due) * 1e3, 1), t_s=t_s)
            self._step_once()
        else:
            await self._wait_for_slowest()
            if self.sim_state is p.SimState.RUNNING and self.speed == 0:
                self._burst()

    def _step_once(self) -> None:
        """One tick of the source, broadcast."""
        sessions = self._streaming()
        t0 = time.perf_counter()
        tick = self.source.tick(self._wanted(sessions), time.time_ns() // 1000)
        self._tick_cost(time.perf_counter() - t0, 1)
        self._broadcast(tick, sessions)
        if tick.finished:
            self._finished(sessions)

    def _wanted(self, sessions: list[StreamingSession]) -> int:
        """The SubscribeMask bits the source must produce."""
        if self.recorder is not None:
            return int(p.SubscribeMask.ALL)
        wanted = 0
        for s in sessions:
            wanted |= s.mask
        return wanted

    def _finished(self, sessions: list[StreamingSession]) -> None:
        self.sim_state = p.SimState.FINISHED
        for s in sessions:  # held frames (delay/reorder faults) go out at the end of the stream
            s.queue_telemetry(s.transport.release(2**62, ()))
        log.info("stream finished", t_s=self.source.time_us / 1e6)

    def _burst(self) -> None:
        """Speed 0: ticks back to back while every streaming client has room, for at most ``BURST_S`` of
        CPU, so each writer sends many frames in one write (one ``send()`` costs about 6 µs; a tick per
        event-loop turn would pay that, and a loop turn, per frame). Nothing else runs during a burst: the
        sessions and what they want stay as they were at its start (a session closing ends it)."""
        end = self.now() + BURST_S
        sessions = self._streaming()
        wanted = self._wanted(sessions)
        source, broadcast, now = self.source, self._broadcast, self.now  # the loop runs once per frame
        t0, ticks = time.perf_counter(), 0
        try:
            while True:
                tick = source.tick(wanted, time.time_ns() // 1000)
                broadcast(tick, sessions)
                ticks += 1
                if tick.finished:
                    self._finished(sessions)
                    return
                if not sessions or now() >= end:
                    return
                for s in sessions:
                    if s.closing or not s.room.is_set():
                        return
        finally:  # with the broadcast: an over-estimate, on the safe side for what it is used for
            self._tick_cost(time.perf_counter() - t0, ticks)

    def _tick_cost(self, seconds: float, ticks: int) -> None:
        """Keeps ``tick_cost_s``, a moving average of what one source tick costs (a SEEK's estimate)."""
        if ticks:
            cost = seconds / ticks
            self.tick_cost_s += (cost - self.tick_cost_s) * (
                min(1.0, 0.01 * ticks) if self.tick_cost_s else 1.0
            )

    async def _wait_for_slowest(self) -> None:
        """Speed 0: step only when every streaming client has room (and at least one is streaming)."""
        while True:
            if self.speed > 0 or self.sim_state is not p.SimState.RUNNING:
                return
            streaming = self._streaming()
            if streaming and all(s.room.is_set() for s in streaming):
                await asyncio.sleep(0)  # let readers and writers run between steps
                return
            self.streaming_changed.clear()
            waits = [asyncio.ensure_future(s.room.wait()) for s in streaming if not s.room.is_set()]
            waits.append(asyncio.ensure_future(self.streaming_changed.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the loop is cancelled (server stop): no wait left pending
                for w in waits:
                    w.cancel()

    def _own_faults(
        self, faults: tuple[StreamFault, ...], sessions: list[StreamingSession]
    ) -> dict[int, tuple[StreamFault, ...]]:
        """Per session (by id), the stream faults acting on it: those of the scenario, and those it injected
        by CONTROL (SPEC.md 6.4); empty when every session gets them all."""
        owners = self.fault_owners
        if not owners or all(f.fault_id not in owners for f in faults):
            return {}
        return {id(s): tuple(f for f in faults if owners.get(f.fault_id, s) is s) for s in sessions}

    def _broadcast(self, tick: Tick, sessions: list[StreamingSession]) -> None:
        all_faults = tick.stream_faults
        # no stream fault active or pending anywhere: every telemetry frame takes the lean path
        plain = not all_faults
        own = self._own_faults(all_faults, sessions) if all_faults else {}
        owners = self.fault_owners
        if all_faults:
            for s in sessions:
                if s.transport.disconnect_due(own.get(id(s), all_faults)):
                    s.log.warning("disconnect fault: cutting the connection")
                    s.abort()
            sessions = [s for s in sessions if not s.closing]
        else:
            for s in sessions:
                if not s.transport.idle:
                    plain = False
        if not sessions and self.recorder is None:
            return
        default = self._default_mode
        recorder = self.recorder
        for item in tick.items:  # once per frame per client below: kept lean
            bit, msg_type, flags = item.bit, item.msg_type, item.flags
            if recorder is not None:
                self._record(msg_type, item.encoded(), flags)
            lean = plain and bit != BIT_EVENT
            targets = sessions
            if bit == BIT_EVENT and owners:  # the events of a stream fault injected by CONTROL: its session's
                event = item.message
                assert isinstance(event, p.FaultEvent)
                owner = owners.get(event.fault_id)
                if owner is not None:
                    targets = [s for s in sessions if s is owner]
                    if event.phase == p.FaultPhase.END:
                        del owners[event.fault_id]
            for s in targets:
                if item.step % s.divider or not s.wants(item, default):
                    continue
                if lean and (bit != BIT_STATES or s.cells is None):
                    payload = item.payload  # item.encoded() without its call: once per frame per client
                    s.push_telemetry(msg_type, payload if payload is not None else item.encoded(), flags)
                    continue
                faults = own.get(id(s), all_faults)
                if item.bit == BIT_STATES and s.cells is not None:
                    msg = item.message
                    assert isinstance(msg, p.CellStates)
                    keep = np.isin(msg.records["cell"], sorted(s.cells))
                    if not keep.any():
                        continue
                    sub = p.CellStates(msg.t_sim_us, msg.t_wall_us, msg.step, msg.records[keep])
                    sub_payload = p.encode_payload(sub)
                    s.push_payload(item.msg_type, sub_payload, True, faults, tick.time_us, item.flags)
                    continue
                droppable = item.bit != BIT_EVENT
                s.push_payload(item.msg_type, item.encoded(), droppable, faults, tick.time_us, item.flags)
        for s in sessions:
            if not plain and not s.transport.idle:
                s.queue_telemetry(s.transport.release(tick.time_us, own.get(id(s), all_faults)))
            if s.queue:
                s.wake.set()
