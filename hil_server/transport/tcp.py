"""The real-time TCP server: streams one running scenario to every connected client and takes control frames.

One simulation loop steps the engine on absolute deadlines (``anchor + steps / rate / speed``, never
accumulated relative sleeps) and hands each step's frames to every session. Each session has a reader task
(sans-IO decoder, handshake, subscription, control) and a writer task that sends everything queued since
its last write in one ``write()``. A slow client only fills its own queue: telemetry is dropped oldest-first
and counted (a gap in ``seq``), replies (ACK, NAK, ERROR, BYE) and fault events are never dropped, and a
client whose socket stays blocked past ``stuck_s`` is disconnected with BYE SLOW_CONSUMER. Bad input is
counted and logged per session; it never ends the server or touches another session.

Session states (SPEC.md section 6):

    HANDSHAKE --CLIENT_HELLO ok--> READY --SUBSCRIBE--> STREAMING
        |  bad version / auth / timeout        any state --BYE, EOF, timeout, slow--> CLOSED
        +--> CLOSED (ERROR + BYE)

Speed: 1.0 is real time, N is N times faster, 0 paces to the slowest streaming client (for CI: as fast as
clients read, nothing dropped).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import gc
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

import protocol as p
from hil_server.sim.engine import Engine
from hil_server.sim.output import StreamFault
from hil_server.stream.source import (
    BIT_EVENT,
    BIT_POINT,
    BIT_STATES,
    INSTANT,
    ControlRefusedError,
    EngineSource,
    Item,
    Source,
    Tick,
)
from hil_server.stream.source import Identity as ServerIdentity
from hil_server.stream.stream_faults import TransportFaults

if TYPE_CHECKING:
    from hil_server.capture.format import CaptureWriter

log = structlog.get_logger(__name__)

BEHIND_WARN_S = 0.1
"""A paced tick this late is logged (at most once a second): the stream stalled or cannot keep up."""
SLOW_GC_S = 0.05
"""A garbage collection that holds the loop this long is logged (a cause of stalls to rule in or out)."""
BURST_S = 0.002
"""At speed 0, how long the loop may tick back to back before it lets the sessions' writers run."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7700
    speed: float = 1.0
    secret: bytes | None = None
    max_clients: int = 64
    queue_frames: int = 1024
    """Telemetry frames queued per client before the oldest are dropped."""
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 5.0
    handshake_timeout_s: float = 5.0
    stuck_s: float = 10.0
    """A client whose socket accepts nothing for this long is disconnected (SLOW_CONSUMER)."""
    control_rate_per_s: float = 50.0
    max_seek_ahead_s: float = 3600.0
    """A SEEK further ahead is refused: the simulation runs to the target inside the event loop, so a jump
    of days would stall every client (seeking back restarts from a checkpoint and is bounded)."""
    max_seek_stall_s: float = 5.0
    """A SEEK whose work (steps to simulate x the measured cost of a step) would take longer is refused:
    no client gets a frame while it runs."""


class Kept(bytes):
    """A queued frame that is never dropped (a reply or a fault event); telemetry frames are plain bytes."""


class State(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    STREAMING = "streaming"
    CLOSED = "closed"


class Session:
    """One connected client."""

    def __init__(
        self, server: HilServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sid: int
    ):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.sid = sid
        self.peer = str(writer.get_extra_info("peername"))
        self.state = State.HANDSHAKE
        self.client_name = ""
        self.encoder = p.FrameEncoder()
        self.decoder = p.FrameDecoder()
        self.challenge = p.new_challenge() if server.config.secret else bytes(p.AUTH_CHALLENGE_SIZE)
        self.mask = 0
        self.divider = 1
        self.eis_mode = 0
        """EisMode the client asked for (0: the scenario's)."""
        self.transport = TransportFaults()
        self.cells: set[int] | None = None
        self.queue: collections.deque[bytes] = collections.deque()
        """Frames to send, in ``seq`` order (so a gap on the wire is a drop). Those that may not be dropped
        (replies, fault events) are ``Kept``; the rest (telemetry) plain bytes."""
        self.droppable = 0
        """How many queued frames are droppable."""
        self.half_queue = server.config.queue_frames // 2
        """Above this many droppable frames the session has no ``room`` (speed 0 waits for it)."""
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.frames_sent = 0
        self.frames_dropped = 0
        self.rx_bad = 0
        self.last_rx = time.monotonic()
        self.control_tokens = server.config.control_rate_per_s
        self.control_refill = time.monotonic()
        self.last_garbage_error = 0.0
        self.log = log.bind(session=sid, peer=self.peer)
        self.closing = False

    # -- sending -----------------------------------------------------------------------------------
    def reply(self, message: p.Message) -> None:
        """A frame that is never dropped (handshake, ACK/NAK, ERROR, BYE, fault events)."""
        self.queue.append(Kept(self.encoder.encode(message)))
        self.wake.set()

    def push_payload(
        self,
        msg_type: int,
        payload: bytes,
        droppable: bool = True,
        faults: tuple[StreamFault, ...] = (),
        t_us: int = 0,
        flags: int = 0,
    ) -> None:
        """Queue a frame. Telemetry (``droppable``) goes through the active stream ``faults`` at ``t_us``."""
        frame = self.encoder.frame(msg_type, payload, flags)
        if not droppable:
            self.queue.append(Kept(frame))
        elif faults or not self.transport.idle:
            self.queue_telemetry(self.transport.apply(frame, t_us, faults))
        else:
            self.queue_telemetry((frame,))
        self.wake.set()

    def push_telemetry(self, msg_type: int, payload: bytes, flags: int) -> None:
        """``push_payload`` for telemetry with no stream fault active or pending (the common case, once per
        frame per client: kept lean). The caller sets ``wake``."""
        self.queue.append(self.encoder.frame(msg_type, payload, flags))
        self.droppable += 1
        if self.droppable > self.half_queue:
            if self.droppable > self.server.config.queue_frames:
                self._drop_oldest()
            self.room.clear()

    def queue_telemetry(self, frames: Sequence[bytes]) -> None:
        limit = self.server.config.queue_frames
        for frame in frames:
            if self.droppable >= limit:
                self._drop_oldest()
            self.queue.append(frame)
            self.droppable += 1
        if self.droppable > self.half_queue:
            self.room.clear()
        self.wake.set()

    def _drop_oldest(self) -> None:
        q = self.queue
        if type(q[0]) is not Kept:  # the usual case: the oldest frame is telemetry
            q.popleft()
        else:
            i = next(i for i, frame in enumerate(q) if type(frame) is not Kept)
            del q[i]
        self.droppable -= 1
        self.frames_dropped += 1

    async def writer_loop(self) -> None:
        cfg = self.server.config
        while True:
            await self.wake.wait()
            self.wake.clear()
            frames = len(self.queue)
            data = b"".join(self.queue)
            self.queue.clear()
            self.droppable = 0
            self.room.set()
            if frames:
                self.writer.write(data)
                self.frames_sent += frames
                try:
                    await asyncio.wait_for(self.writer.drain(), cfg.stuck_s)
                except TimeoutError:
                    await self._stuck(cfg.stuck_s)
                    return
                except (ConnectionError, OSError):
                    self.closing = True  # out of the broadcast at once, not when the session is reaped
                    return
            if self.closing and not self.queue:
                # Half-close after BYE: closing outright with the peer's heartbeats unread makes the kernel
                # send RST, which can destroy the BYE in flight. The reader drains until the peer closes.
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return

    async def _stuck(self, stuck_s: float) -> None:
        """Disconnect a client whose socket accepted nothing for ``stuck_s``: what is still queued is dropped,
        BYE SLOW_CONSUMER goes right behind the bytes already buffered, and the peer gets another ``stuck_s``
        to read up to it before the connection is cut (SPEC.md section 8)."""
        self.log.warning("client stuck, disconnecting", stuck_s=stuck_s)
        self.closing = True
        self.frames_dropped += self.droppable
        self.queue.clear()
        self.droppable = 0
        message = f"socket accepted nothing for {stuck_s:g} s"
        self.writer.write(self.encoder.encode(p.Bye(p.ErrorCode.SLOW_CONSUMER, message)))
        self.frames_sent += 1
        try:
            await asyncio.wait_for(self.writer.drain(), stuck_s)
        except (TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()
            return
        if self.writer.can_write_eof():
            self.writer.write_eof()  # like any BYE: half-close, the reader drains until the peer closes

    def bye(self, code: p.ErrorCode, message: str) -> None:
        self.reply(p.Bye(code, message))
        self.closing = True
        self.wake.set()

    # -- receiving ---------------------------------------------------------------------------------
    async def reader_loop(self) -> None:
        while True:
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            if self.closing:
                continue  # after BYE: drain and discard until the peer closes
            self.last_rx = time.monotonic()
            self.decoder.feed(data)
            for item in self.decoder.events():
                if self.said_bye():
                    break  # after our BYE nothing more is answered, even from the same read
                if isinstance(item, p.RemoteProtocolError):
                    self.bad_input(item)
                else:
                    self.handle(item)
            if self.decoder.buffered > p.MAX_FRAME_SIZE:
                return  # cannot happen with a conforming decoder; belt and braces against memory growth

    def said_bye(self) -> bool:
        """``closing``, read through a call: handling a frame can set it, which mypy's narrowing of the
        attribute in the loop above does not see."""
        return self.closing

    def bad_input(self, err: p.RemoteProtocolError) -> None:
        self.rx_bad += 1
        self.server.rx_bad += 1
        self.log.warning("bad input from client", kind=err.kind.name, detail=err.detail, seq=err.seq)
        if err.seq is not None:
            if err.msg_type == p.MsgType.CONTROL:
                self.reply(p.Nak(err.seq, 0, err.kind.code, err.detail[:200]))
            else:
                self.reply(p.Error(err.kind.code, err.seq, err.detail[:200]))
        elif time.monotonic() - self.last_garbage_error >= 1.0:
            self.last_garbage_error = time.monotonic()
            self.reply(p.Error(err.kind.code, 0, err.detail[:200]))

    def handle(self, frame: p.Frame) -> None:
        msg = frame.message
        if isinstance(msg, p.Bye):
            self.log.info("client said bye", reason=msg.reason, message=msg.message)
            self.closing = True
            self.wake.set()
            return
        if isinstance(msg, p.Heartbeat):
            return
        if self.state is State.HANDSHAKE:
            if isinstance(msg, p.ClientHello):
                self.hello(frame.seq, msg)
            else:
                self.reply(p.Error(p.ErrorCode.NOT_ALLOWED_IN_STATE, frame.seq, "send CLIENT_HELLO first"))
            return
        if isinstance(msg, p.Subscribe):
            self.subscribe(frame.seq, msg)
        elif isinstance(msg, p.Control):
            self.control(frame.seq, msg)
        else:
            self.reply(
                p.Error(
                    p.ErrorCode.NOT_ALLOWED_IN_STATE,
                    frame.seq,
                    f"{p.MsgType(msg.MSG_TYPE).name} is not accepted from a client",
                )
            )

    def hello(self, seq: int, msg: p.ClientHello) -> None:
        lo, hi = max(msg.proto_min_major, 1), min(msg.proto_max_major, p.PROTOCOL_VERSION)
        if lo > hi:
            theirs = f"{msg.proto_min_major}..{msg.proto_max_major}"
            text = f"server speaks protocol 1..{p.PROTOCOL_VERSION}, client {theirs}"
            self.reply(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, seq, text))
            self.bye(p.ErrorCode.UNSUPPORTED_VERSION, text)
            self.log.warning("version mismatch", detail=text)
            return
        secret = self.server.config.secret
        if secret is not None and not p.verify_response(
            secret, self.challenge, msg.client_name, msg.auth_response
        ):
            self.reply(p.Error(p.ErrorCode.AUTH_FAILED, seq, "authentication failed"))
            self.bye(p.ErrorCode.AUTH_FAILED, "authentication failed")
            self.log.warning("authentication failed", client=msg.client_name)
            return
        self.state = State.READY
        self.client_name = msg.client_name
        self.log = self.log.bind(client=msg.client_name)
        self.log.info("client hello", version=hi)
        self.reply(p.Ack(seq, 0, hi))

    def subscribe(self, seq: int, msg: p.Subscribe) -> None:
        n = self.server.source.n_cells
        cells = [int(c) for c in msg.cells]
        bad = [c for c in cells if c >= n]
        if bad:
            self.reply(p.Nak(seq, 0, p.ErrorCode.UNKNOWN_CELL, f"cells {bad} do not exist (0..{n - 1})"))
            return
        if msg.eis_mode not in tuple(p.EisMode):
            self.reply(p.Nak(seq, 0, p.ErrorCode.OUT_OF_RANGE, f"eis_mode {msg.eis_mode} is not 0, 1 or 2"))
            return
        self.mask = int(msg.msg_mask)
        self.divider = max(1, msg.state_divider)
        self.eis_mode = int(msg.eis_mode)
        self.cells = set(cells) if cells else None
        self.state = State.STREAMING
        self.reply(p.Ack(seq, 0, len(cells) if cells else n))
        self.server.streaming_changed.set()
        self.server.update_eis_modes()

    def control(self, seq: int, msg: p.Control) -> None:
        now = time.monotonic()
        rate = self.server.config.control_rate_per_s
        self.control_tokens = min(rate, self.control_tokens + (now - self.control_refill) * rate)
        self.control_refill = now
        if self.control_tokens < 1:
            self.reply(p.Nak(seq, msg.command, p.ErrorCode.RATE_LIMITED, f"more than {rate:g} commands/s"))
            return
        self.control_tokens -= 1
        try:
            result = self.server.apply_control(msg)
        except ControlRefusedError as exc:
            self.reply(p.Nak(seq, msg.command, exc.code, str(exc)[:200]))
            self.log.info("control refused", command=msg.command, reason=str(exc))
            return
        self.log.info("control", command=_name(p.ControlCommand, msg.command), result=result)
        self.reply(p.Ack(seq, msg.command, result))

    def wants(self, item: Item, default_mode: int) -> bool:
        if not self.mask & item.bit:
            return False
        if item.bit == BIT_STATES:  # the most frequent: no cell or mode of its own (cells filtered later)
            return True
        if item.cell is not None and self.cells is not None and item.cell not in self.cells:
            return False
        mode = self.eis_mode or default_mode
        if item.bit == BIT_POINT:
            return mode != INSTANT
        if item.eis_mode and mode:  # a replayed capture has no default: every spectrum goes out
            return item.eis_mode == mode
        return True


def _name(enum_type: type[p.ControlCommand], value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return str(value)


class HilServer:
    """Owns the source, the listening socket, the sessions and the loop that paces the source."""

    def __init__(
        self,
        source: Source | Engine,
        identity: ServerIdentity | None = None,
        config: ServerConfig = ServerConfig(),
        *,
        now: Callable[[], float] = time.monotonic,
        recorder: CaptureWriter | None = None,
    ) -> None:
        """``source``: what to stream (an ``Engine`` with its ``identity`` is wrapped in an EngineSource).
        ``recorder``: every frame of the full stream (all cells, all kinds) is also written there."""
        from hil_server import __version__

        if isinstance(source, Engine):
            if identity is None:
                raise TypeError("an Engine needs its ServerIdentity")
            source = EngineSource(source, identity, __version__)
        self.source: Source = source
        self.config = config
        self.now = now
        self.sessions: dict[int, Session] = {}
        self.next_sid = 1
        self.sim_state = p.SimState.RUNNING
        self.speed = config.speed
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.streaming_changed = asyncio.Event()
        self._replan = asyncio.Event()
        """Set by a control that changes the state, speed or time line: the pacing loop decides again."""
        self.lateness_us: list[float] = []
        self._behind_logged = -math.inf
        self._gc_started = 0.0
        self.tick_cost_s = 0.0
        """Wall time of one source tick, a moving average (what a SEEK's steps are estimated to cost)."""
        self.rx_bad = 0
        self.recorder = recorder
        self._rec_encoder = p.FrameEncoder()
        self._rec_t0 = now()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._anchor: tuple[float, int] | None = None
        """(wall clock, source time in µs) from which deadlines are computed: ``wall + dt / speed``."""
        hello = self.source.hello()
        self._default_mode = int(p.EisMode.SCENARIO_DEFAULT)  # a plain int: compared per frame
        if isinstance(self.source, EngineSource):
            mode = self.source.engine.scenario.eis.mode
            self._default_mode = int(p.EisMode.SWEEP if mode == "sweep" else p.EisMode.INSTANT)
        self._hello_template = hello
        self._record(int(hello.MSG_TYPE), p.encode_payload(hello))

    @property
    def engine(self) -> Engine:
        """The engine of a scenario source (TypeError for a replay)."""
        if not isinstance(self.source, EngineSource):
            raise TypeError("this server streams a capture, not a running scenario")
        return self.source.engine

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self.config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "listening beyond loopback", host=self.config.host, auth=self.config.secret is not None
            )
        self._server = await asyncio.start_server(self._connected, self.config.host, self.config.port)
        gc.callbacks.append(self._gc_watch)
        self._tasks = [asyncio.create_task(self._sim_loop()), asyncio.create_task(self._heartbeat_loop())]
        log.info(
            "serving",
            host=self.config.host,
            port=self.port,
            stream=self._hello_template.scenario_id,
            speed=self.speed,
            cells=self.source.n_cells,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            recording=None if self.recorder is None else str(self.recorder.path),
        )

    def _gc_watch(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif (held := time.perf_counter() - self._gc_started) > SLOW_GC_S:
            log.warning("slow garbage collection", held_ms=round(held * 1e3), **info)

    async def stop(self, reason: str = "server shutting down") -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc_watch)
        for s in list(self.sessions.values()):
            s.bye(p.ErrorCode.SHUTDOWN, reason)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        # Let writers flush their BYE (bounded).
        deadline = time.monotonic() + 2.0
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for s in list(self.sessions.values()):
            s.writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        self._close_recorder()
        log.info("stopped", reason=reason)

    # -- recording -----------------------------------------------------------------------------------
    def _record(self, msg_type: int, payload: bytes, flags: int = 0) -> None:
        if self.recorder is None:
            return
        from hil_server.capture.format import DIR_TX, CaptureError

        try:
            t_us = round((self.now() - self._rec_t0) * 1e6)
            frame = self._rec_encoder.frame(msg_type, payload, flags)
            self.recorder.write(frame, direction=DIR_TX, t_us=t_us)
        except CaptureError as exc:
            # The stream goes on without the recording; what was written stays readable.
            log.error("recording stopped", error=str(exc), records=self.recorder.records)
            self._close_recorder()

    def _close_recorder(self) -> None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        from hil_server.capture.format import CaptureError

        try:
            rec.close()
        except CaptureError as exc:
            log.error("recording close failed", error=str(exc))
        log.info("recording closed", path=str(rec.path), records=rec.records, bytes=rec.bytes_written)

    # -- sessions ------------------------------------------------------------------------------------
    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sid = self.next_sid
        self.next_sid += 1
        session = Session(self, reader, writer, sid)
        session.reply(self._hello(session))
        if len(self.sessions) >= self.config.max_clients:
            session.bye(p.ErrorCode.TOO_MANY_CLIENTS, f"at most {self.config.max_clients} clients")
        self.sessions[sid] = session
        session.log.info("connected", clients=len(self.sessions))
        writer_task = asyncio.create_task(session.writer_loop())
        reader_task = asyncio.create_task(session.reader_loop())
        try:
            await asyncio.wait({writer_task, reader_task}, return_when=asyncio.FIRST_COMPLETED)
            if not writer_task.done():  # the peer closed or broke: flush what is queued, then stop
                session.closing = True
                session.wake.set()
                await asyncio.wait({writer_task}, timeout=1.0)
            elif not reader_task.done():  # we said BYE: give the peer time to read it and close
                await asyncio.wait({reader_task}, timeout=2.0)
        finally:
            for t in (writer_task, reader_task):
                t.cancel()
            session.state = State.CLOSED
            self.sessions.pop(sid, None)
            self.streaming_changed.set()
            self.update_eis_modes()
            writer.close()
            session.log.info(
                "disconnected",
                bad_frames=session.rx_bad,
                dropped=session.frames_dropped,
                sent=session.frames_sent,
                clients=len(self.sessions),
            )

    def _hello(self, session: Session) -> p.ServerHello:
        return dataclasses.replace(
            self._hello_template,
            auth_required=int(self.config.secret is not None),
            auth_challenge=session.challenge,
        )

    def update_eis_modes(self) -> None:
        """Tell the source which EIS outputs the streaming clients want (and the recording: the default)."""
        eis = p.SubscribeMask.EIS_SPECTRUM | p.SubscribeMask.EIS_POINT
        modes = {s.eis_mode or self._default_mode for s in self._streaming() if s.mask & eis}
        if self.recorder is not None:
            modes.add(self._default_mode)
        self.source.set_eis_modes(frozenset(modes - {p.EisMode.SCENARIO_DEFAULT}))

    # -- pacing --------------------------------------------------------------------------------------
    def _streaming(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.state is State.STREAMING and not s.closing]

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

    def _wanted(self, sessions: list[Session]) -> int:
        """The SubscribeMask bits the source must produce."""
        if self.recorder is not None:
            return int(p.SubscribeMask.ALL)
        wanted = 0
        for s in sessions:
            wanted |= s.mask
        return wanted

    def _finished(self, sessions: list[Session]) -> None:
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
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()

    def _broadcast(self, tick: Tick, sessions: list[Session]) -> None:
        faults = tick.stream_faults
        # no stream fault active or pending anywhere: every telemetry frame takes the lean path
        plain = not faults
        if faults:
            for s in sessions:
                if s.transport.disconnect_due(faults):
                    s.log.warning("disconnect fault: cutting the connection")
                    s.closing = True
                    s.writer.transport.abort()
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
            for s in sessions:
                if item.step % s.divider or not s.wants(item, default):
                    continue
                if lean and (bit != BIT_STATES or s.cells is None):
                    payload = item.payload  # item.encoded() without its call: once per frame per client
                    s.push_telemetry(msg_type, payload if payload is not None else item.encoded(), flags)
                    continue
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
                s.queue_telemetry(s.transport.release(tick.time_us, faults))
            if s.queue:
                s.wake.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            lat = np.asarray(self.lateness_us) if self.lateness_us else np.zeros(1)
            self.lateness_us.clear()
            p50, p99, mx = (
                int(min(2**32 - 1, max(0.0, v)))
                for v in (np.percentile(lat, 50), np.percentile(lat, 99), lat.max())
            )
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if s.closing:
                    continue
                if s.state is State.HANDSHAKE and now - s.last_rx > self.config.handshake_timeout_s:
                    s.bye(p.ErrorCode.HEARTBEAT_TIMEOUT, "no CLIENT_HELLO in time")
                    continue
                if now - s.last_rx > self.config.peer_timeout_s:
                    s.log.warning("peer timeout", silent_s=round(now - s.last_rx, 1))
                    s.bye(
                        p.ErrorCode.HEARTBEAT_TIMEOUT,
                        f"nothing received for {self.config.peer_timeout_s:g} s",
                    )
                    continue
                hb = p.Heartbeat(
                    self.source.time_us,
                    time.time_ns() // 1000,
                    s.frames_sent,
                    s.frames_dropped,
                    s.rx_bad,
                    p50,
                    p99,
                    mx,
                    min(len(s.queue), 0xFFFF),
                    int(self.sim_state),
                )
                s.push_telemetry(p.MsgType.HEARTBEAT, p.encode_payload(hb), 0)  # never through stream faults
                s.wake.set()

    # -- control -------------------------------------------------------------------------------------
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


def identity_for(scenario_path: Any, scenario_name: str, model_sha256: str, model_id: str) -> ServerIdentity:
    from hil_server.scenario import scenario_hash

    return ServerIdentity(model_id, model_sha256, scenario_name, scenario_hash(scenario_path))


__all__: Sequence[str] = [
    "ControlRefusedError",
    "HilServer",
    "ServerConfig",
    "ServerIdentity",
    "identity_for",
]
