"""The TCP transport: listens, and runs each connection's session over an asyncio stream pair.

Everything the server says to a client is the shared sans-IO ``session.ServerSession`` (handshake, bad
input, subscription checks, timeouts) with its ``session.SendQueue`` (replies never dropped, telemetry
dropped oldest-first and counted as a gap in ``seq``); this module adds the socket: a reader task that feeds
the session, a writer task that sends everything queued since its last write in one ``write()``, and the
BYE SLOW_CONSUMER for a client whose socket stays blocked past ``stuck_s``. The pacing loop and the
controls that act on the stream are ``stream.StreamScheduler`` and ``stream.StreamControl``, mixed into
``HilServer``. Bad input is counted and logged per session; it never ends the server or touches another
session. Session states: ``protocol._session`` (SPEC.md section 6).

Speed: 1.0 is real time, N is N times faster, 0 paces to the slowest streaming client (for CI: as fast as
clients read, nothing dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

import protocol as p
from hil_server.session.config import ServerConfig
from hil_server.session.send_queue import Kept, SendQueue
from hil_server.session.server_session import (
    ServerSession,
    heartbeat,
    lateness_percentiles_us,
)
from hil_server.sim.engine import Engine
from hil_server.sim.output import StreamFault
from hil_server.stream.control import StreamControl
from hil_server.stream.scheduler import StreamingSession, StreamScheduler
from hil_server.stream.source import ControlRefusedError, EngineSource, Source
from hil_server.stream.source import Identity as ServerIdentity
from hil_server.transport.subscriber import Subscriber
from protocol import SessionState

if TYPE_CHECKING:
    from hil_server.capture.writer import CaptureWriter

log = structlog.get_logger(__name__)

SLOW_GC_S = 0.05
"""A garbage collection that holds the loop this long is logged (a cause of stalls to rule in or out)."""


class Peer(StreamingSession, Protocol):
    """What the server needs of each of its sessions, whatever carries its bytes: a TCP ``Session`` or a
    serial port attached with ``HilServer.attach`` (``serial.served``)."""

    @property
    def client_name(self) -> str: ...

    @property
    def frames_sent(self) -> int: ...

    @property
    def frames_dropped(self) -> int: ...

    @property
    def rx_bad(self) -> int: ...

    def bye(self, code: p.ErrorCode, message: str) -> None: ...

    def heartbeat_due(self, now: float, lateness_us: tuple[int, int, int]) -> None: ...


class Session(Subscriber, ServerSession, SendQueue):
    """One connected client: the shared sans-IO session and send queue, over an asyncio stream pair."""

    server: HilServer

    def __init__(
        self, server: HilServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sid: int
    ):
        cfg = server.config
        self.wake: asyncio.Event = asyncio.Event()
        self.room: asyncio.Event = asyncio.Event()
        self.server = server
        self.reader = reader
        self.writer = writer
        ServerSession.__init__(
            self, logger=log.bind(session=sid, peer=str(writer.get_extra_info("peername")))
        )
        SendQueue.__init__(self, cfg.queue_frames, self.wake, self.room)
        self.last_rx = self.opened = time.monotonic()
        self.init_subscription(0, self.last_rx)

    @property
    def secret(self) -> bytes | None:
        return self.server.config.secret

    @property
    def handshake_timeout_s(self) -> float:
        return self.server.config.handshake_timeout_s

    @property
    def peer_timeout_s(self) -> float:
        return self.server.config.peer_timeout_s

    # -- sending -----------------------------------------------------------------------------------
    def reply(self, message: p.Message, now: float = 0.0) -> None:
        """A frame that is never dropped (handshake, ACK/NAK, ERROR, BYE, fault events)."""
        self.queue_reply(message)

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

    async def writer_loop(self) -> None:
        cfg = self.server.config
        while True:
            await self.wake.wait()
            self.wake.clear()
            frames, data = self.take()
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
        """Disconnect a client whose socket accepted nothing for ``stuck_s``: the telemetry still queued is
        dropped, BYE SLOW_CONSUMER goes right behind the bytes already buffered and the replies still queued,
        and the peer gets another ``stuck_s`` to read up to it before the connection is cut (SPEC.md 8)."""
        self.log.warning("client stuck, disconnecting", stuck_s=stuck_s)
        self.closing = True
        message = f"socket accepted nothing for {stuck_s:g} s"
        frames, data = self.last_words(p.Bye(p.ErrorCode.SLOW_CONSUMER, message))  # replies before the BYE
        self.writer.write(data)
        self.frames_sent += frames
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

    def abort(self) -> None:
        """Cut the connection at once (a disconnect fault)."""
        self.closing = True
        self.writer.transport.abort()

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
            self.last_rx = now = time.monotonic()
            self.feed(data, now)
            if self.decoder.buffered > p.MAX_FRAME_SIZE:
                return  # cannot happen with a conforming decoder; belt and braces against memory growth

    # -- what the requests do (ServerSession) --------------------------------------------------------
    def bad_input(self, err: p.RemoteProtocolError, now: float) -> None:
        self.server.rx_bad += 1
        super().bad_input(err, now)

    def end(self, code: p.ErrorCode | None, text: str, now: float) -> None:
        if code is None:  # the client said BYE
            self.closing = True
            self.wake.set()
        else:
            self.bye(code, text)

    def cell_count(self) -> int:
        return self.server.source.n_cells

    def subscribe(self, seq: int, msg: p.Subscribe, cells: tuple[int, ...], now: float) -> None:
        self.subscribe_request(seq, msg, cells, now)

    def control(self, seq: int, msg: p.Control, now: float) -> None:
        self.control_request(seq, msg, now)

    # -- the server's timer --------------------------------------------------------------------------------
    def heartbeat_due(self, now: float, lateness_us: tuple[int, int, int]) -> None:
        """Once per ``heartbeat_s``: a silent peer gets BYE HEARTBEAT_TIMEOUT, any other a HEARTBEAT."""
        if (why := self.expired(now)) is not None:
            self.log.warning("peer timeout", reason=why, silent_s=round(now - self.last_rx, 1))
            self.bye(p.ErrorCode.HEARTBEAT_TIMEOUT, why)
            return
        server = self.server
        hb = heartbeat(
            server.source.time_us,
            time.time_ns() // 1000,
            self.frames_sent,
            self.frames_dropped,
            self.rx_bad,
            lateness_us,
            len(self.queue),
            int(server.sim_state),
        )
        self.push_telemetry(p.MsgType.HEARTBEAT, p.encode_payload(hb), 0)  # never through stream faults
        self.wake.set()


class HilServer(StreamScheduler, StreamControl):
    """Owns the source, the listening socket, the sessions and the loop that paces the source."""

    def __init__(
        self,
        source: Source | Engine,
        identity: ServerIdentity | None = None,
        config: ServerConfig = ServerConfig(),  # noqa: B008 (frozen: safe as a default)
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
        self.sessions: dict[int, Peer] = {}
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
        self.fault_owners: dict[int, object] = {}
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
        self._hello_template = p.bounded_hello(hello)
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

    async def start(self, *, listen: bool = True) -> None:
        """Start the pacing loop and the heartbeats, and accept TCP clients on ``config.host:port``; with
        ``listen`` False no socket is opened: the sessions come from another transport (``attach``)."""
        if listen:
            if self.config.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning(
                    "listening beyond loopback", host=self.config.host, auth=self.config.secret is not None
                )
            self._server = await asyncio.start_server(self.accept, self.config.host, self.config.port)
        gc.callbacks.append(self._gc_watch)
        self._tasks = [asyncio.create_task(self._sim_loop()), asyncio.create_task(self._heartbeat_loop())]
        log.info(
            "serving",
            host=self.config.host if listen else None,
            port=self.port if listen else None,
            stream=self._hello_template.scenario_id,
            speed=self.speed,
            cells=self.source.n_cells,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            recording=None if self.recorder is None else str(self.recorder.path),
        )

    def attach(self, session: Peer) -> int:
        """Serve a session that another transport carries (a serial port, ``serial.served``): the stream
        goes to it like to a TCP client's from now on. Returns its id, for ``detach``."""
        sid = self.next_sid
        self.next_sid += 1
        self.sessions[sid] = session
        self.streaming_changed.set()
        self.update_eis_modes()
        return sid

    def detach(self, sid: int) -> None:
        """The attached session ``sid`` has ended: nothing more goes to it."""
        self.sessions.pop(sid, None)
        self.streaming_changed.set()
        self.update_eis_modes()

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
            s.abort()
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
    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until it ends (TCP, or ``transport.loopback``'s in-process pipe)."""
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
            session.state = SessionState.CLOSED
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
        """The hello as sent: at most ``HELLO_PAYLOAD_MAX`` bytes of payload (a recording keeps it whole)."""
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

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            lateness = lateness_percentiles_us(self.lateness_us)
            self.lateness_us.clear()
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if not s.closing:
                    s.heartbeat_due(now, lateness)


__all__: Sequence[str] = [
    "ControlRefusedError",
    "HilServer",
    "ServerConfig",
    "ServerIdentity",
]
