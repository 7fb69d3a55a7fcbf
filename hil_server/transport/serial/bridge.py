"""The serial bridge: the eis-hil stream over a UART (user documentation: ``hil_server/SERIAL.md``).

Upstream the bridge is an ordinary protocol client (``HilClient``) of a running server, or of a server it
starts in-process on a loopback port (``--scenario``). Downstream it writes to a serial port either the same
binary protocol (``--format protocol``: toward the device the bridge plays the server, with its own
sequence numbers, handshake answers and heartbeats) or the text of the AD5940 battery-impedance example
firmware (``--format ad5940``, ``ad5940.py``).

Layers, one module each in this package:

- ``budget.plan_budget``: bytes per second the stream needs against ``baud / 10`` (8N1), and the state
  divider that makes it fit (decimation).
- ``line_pacer.LinePacer``: the line itself, sans-IO with an explicit clock: a token bucket at the line
  rate, a queue of replies that are never dropped and a bounded queue of telemetry dropped oldest-first.
- ``device_session.DeviceSession``: the protocol session toward the device, the server's own
  ``session.ServerSession`` with the device's state table, plus control forwarding with seq mapping,
  heartbeats, hello repeats and the peer timeout.
- ``port``: opening the port, low latency, the reader thread.
- ``SerialBridge``: the asyncio glue: upstream pump, paced writer, port reader thread, reopen with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import serial
import structlog

import protocol as p
from hil_server.transport.serial.budget import (
    BridgeError,
    Budget,
    OutputFormat,
    StreamSpec,
    line_rate,
    plan_budget,
    spectrum_bytes,
    states_bytes,
)
from hil_server.transport.serial.device_session import (
    DeviceSession,
    Forward,
    RestartSessionError,
    Subscription,
)
from hil_server.transport.serial.line_pacer import LinePacer
from hil_server.transport.serial.port import (
    Opener,
    PortReader,
    ftdi_latency_timer,
    open_serial,
    set_low_latency,
)

if TYPE_CHECKING:
    from hil_server.client.client import HilClient
    from hil_server.transport.tcp import HilServer

log = structlog.get_logger(__name__)


EXIT_OK = 0
EXIT_UPSTREAM = 1
EXIT_USAGE = 2
EXIT_PORT_GONE = 3


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    port: str
    baud: int = 921600
    fmt: OutputFormat = OutputFormat.PROTOCOL
    cells: tuple[int, ...] = ()
    divider: int = 1
    speed: float = 1.0
    """The upstream's simulation speed, for the estimate (0: paced to the line, in-process only)."""
    eis_interval_s: float | None = 60.0
    eis_sweep: bool = False
    queue_ms: float = 250.0
    reopen_timeout_s: float = 30.0
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 5.0
    upstream_timeout_s: float = 5.0
    low_latency: bool = True
    latency_timer_ms: int = 1
    status_s: float = 10.0


class SerialBridge:
    """Runs one bridge: ``await bridge.run()`` returns the exit code. ``stop()`` ends it cleanly."""

    def __init__(
        self,
        client: HilClient,
        config: BridgeConfig,
        *,
        opener: Opener = open_serial,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        server: HilServer | None = None,
    ) -> None:
        assert client.hello is not None, "connect the client first"
        self.client = client
        self.hello: p.ServerHello = client.hello
        self.config = config
        self.opener = opener
        self.clock = clock
        self.sleep = sleep
        self.server = server
        self.allowed = frozenset(config.cells) if config.cells else None
        cell_count = self.hello.cell_count
        bad = [c for c in config.cells if c >= cell_count]
        if bad:
            raise BridgeError(f"--cells {bad}: the stream has {cell_count} cells (0..{cell_count - 1})")
        if config.fmt is OutputFormat.AD5940 and len(config.cells) > 1:
            raise BridgeError(
                "--format ad5940 prints one battery, as the AD5940 example measures one: give one cell "
                f"with --cells, not {len(config.cells)}"
            )
        if config.fmt is OutputFormat.AD5940:
            self.default = Subscription(
                p.SubscribeMask.EIS_SPECTRUM | p.SubscribeMask.EIS_POINT, 1, 0, config.cells or (0,)
            )
        else:
            self.default = Subscription(p.SubscribeMask.ALL, config.divider, 0, config.cells)
        self.rate = line_rate(config.baud)
        biggest = max(spectrum_bytes(self.hello.freq_hz.size), states_bytes(len(config.cells) or cell_count))
        self.pacer = LinePacer(
            self.rate,
            limit_bytes=int(max(self.rate * config.queue_ms / 1000, 2 * min(biggest, 8 * p.MAX_FRAME_SIZE))),
        )
        hello_bytes = len(p.encode_frame(self.hello, 0))
        self.session = DeviceSession(
            self.hello,
            self.default,
            self.pacer,
            allowed_cells=self.allowed,
            plan=self.plan,
            hello_interval_s=max(1.0, 20 * hello_bytes / self.rate),  # hellos take at most 5 % of the line
            heartbeat_s=config.heartbeat_s,
            peer_timeout_s=config.peer_timeout_s,
        )
        from hil_server.transport.serial.ad5940 import Ad5940Formatter

        self.formatter = Ad5940Formatter()
        self.port: serial.SerialBase | None = None
        self._reader: PortReader | None = None
        self._port_up = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._pending: dict[int, tuple[Forward, float]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._reopen_task: asyncio.Task[None] | None = None
        self.exit_code: int | None = None
        self.exit_message = ""
        self.outages = 0

    # -- budget ------------------------------------------------------------------------------------------
    def spec(self, sub: Subscription) -> StreamSpec:
        return StreamSpec(
            n_cells=len(sub.cells) or self.hello.cell_count,
            step_period_us=self.hello.step_period_us,
            n_freq=int(self.hello.freq_hz.size),
            speed=self.config.speed,
            divider=sub.divider,
            mask=sub.mask,
            eis_interval_s=self.config.eis_interval_s,
            eis_sweep=self.config.eis_sweep or sub.eis_mode == p.EisMode.SWEEP,
            fmt=self.config.fmt,
        )

    def plan(self, sub: Subscription) -> Budget:
        return plan_budget(self.spec(sub), self.config.baud)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def _finish(self, code: int, message: str) -> None:
        if self.exit_code is None:
            self.exit_code, self.exit_message = code, message
        self._stop.set()

    async def run(self) -> int:
        budget = self.plan(self.default)
        level = log.info if budget.fits or budget.line_speed is not None else log.warning
        level(f"line budget: {budget.describe()}", baud=self.config.baud, port=self.config.port)
        try:
            self._open(self.opener(self.config.port, self.config.baud))
        except (OSError, serial.SerialException, ValueError) as exc:
            raise BridgeError(f"cannot open serial port {self.config.port}: {exc}") from exc
        now = self.clock()
        if self.config.fmt is OutputFormat.PROTOCOL:
            self._dispatch(self.session.open(now))
        else:
            self._open_ad5940(now)
        self._tasks = [
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._writer()),
            asyncio.create_task(self._ticker()),
        ]
        await self._stop.wait()
        await self._shutdown()
        return EXIT_OK if self.exit_code is None else self.exit_code

    async def _shutdown(self) -> None:
        if self.exit_code in (None, EXIT_UPSTREAM) and self.port is not None:
            if self.config.fmt is OutputFormat.PROTOCOL:
                self.pacer.drop_telemetry()  # the BYE goes out next, not after the queued stream
                bye = p.Bye(p.ErrorCode.SHUTDOWN, self.exit_message[:200] or "bridge stopping")
                self.session.reply(bye, self.clock())
            self._wake.set()
            deadline = self.clock() + 1.0 + len(self.pacer.queue) * 64 / self.rate
            while not self.pacer.idle and self.port is not None and self.clock() < deadline:
                await asyncio.sleep(0.01)
        for t in [*self._tasks, *([self._reopen_task] if self._reopen_task else [])]:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._close_port()
        log.info(
            "serial bridge stopped",
            frames_sent=self.pacer.frames_sent,
            dropped=dict(self.pacer.dropped_by_kind),
            decimated=self.session.decimated,
            outages=self.outages,
        )

    # -- port --------------------------------------------------------------------------------------------
    def _open(self, ser: serial.SerialBase) -> None:
        self.port = ser
        if self.config.low_latency:
            set_low_latency(ser)
            ftdi_latency_timer(self.config.port, self.config.latency_timer_ms)
        if self.config.fmt is OutputFormat.PROTOCOL:  # in ad5940 mode the device has nothing to say
            self._reader = PortReader(ser, asyncio.get_running_loop(), self._on_serial, self._port_lost)
            self._reader.start()
        self.pacer.online = True
        self._port_up.set()
        self._wake.set()

    def _close_port(self) -> None:
        if self._reader is not None:
            self._reader.running = False
            self._reader = None
        if self.port is not None:
            with contextlib.suppress(Exception):
                self.port.close()
            self.port = None
        self._port_up.clear()

    def _port_lost(self, ser: serial.SerialBase, exc: Exception) -> None:
        if ser is not self.port or self._stop.is_set():
            return
        self.outages += 1
        self._close_port()
        self.pacer.online = False
        self.pacer.abort_current()
        dropped = self.pacer.drop_telemetry()
        log.warning("serial port lost; reopening", port=self.config.port, error=str(exc), dropped=dropped)
        self._reopen_task = asyncio.create_task(self._reopen())

    async def _reopen(self) -> None:
        start = self.clock()
        deadline = start + self.config.reopen_timeout_s
        delay, attempts = 0.05, 0
        while True:
            attempts += 1
            try:
                ser = self.opener(self.config.port, self.config.baud)
            except (OSError, serial.SerialException, ValueError) as exc:
                now = self.clock()
                if now >= deadline:
                    msg = (
                        f"serial port {self.config.port} did not come back within "
                        f"{self.config.reopen_timeout_s:g} s ({attempts} attempts; last error: {exc})"
                    )
                    log.error(msg)
                    self._finish(EXIT_PORT_GONE, msg)
                    return
                await self.sleep(min(delay, deadline - now))
                delay = min(2 * delay, 2.0)
                continue
            self._open(ser)
            self.session.last_rx = self.clock()  # the device was cut off, not silent: its timeout restarts
            log.info(
                "serial port back",
                port=self.config.port,
                after_s=round(self.clock() - start, 3),
                attempts=attempts,
            )
            if self.config.fmt is OutputFormat.AD5940:
                self._open_ad5940(self.clock())
            return

    def _on_serial(self, data: bytes) -> None:
        try:
            self._dispatch(self.session.feed(data, self.clock()))
        except RestartSessionError:
            self._dispatch(self.session.open(self.clock()))
        self._wake.set()

    # -- upstream ----------------------------------------------------------------------------------------
    def _dispatch(self, forwards: list[Forward]) -> None:
        for fwd in forwards:
            seq = self.client.encoder.next_seq
            try:
                self.client.send_raw(self.client.encoder.encode(fwd.message))
            except (ConnectionError, OSError, RuntimeError) as exc:
                self.session.resolve(fwd, None, f"upstream unavailable: {exc}", self.clock())
                continue
            self._pending[seq] = (fwd, self.clock() + self.config.upstream_timeout_s)

    async def _pump(self) -> None:
        """Upstream frames in arrival order: replies to forwarded requests keep their place in the stream,
        so the device gets a CONTROL's ACK before the frames that show its effect."""
        from hil_server.client.client import ClientError

        try:
            while True:
                frame = await self.client.next_frame()
                now = self.clock()
                msg = frame.message
                if isinstance(msg, p.Ack | p.Nak) and msg.ack_seq in self._pending:
                    fwd, _ = self._pending.pop(msg.ack_seq)
                    if fwd.message.MSG_TYPE == p.MsgType.CONTROL and fwd.device_seq is None:
                        log.info("upstream reply", reply=type(msg).__name__)
                    self.session.resolve(fwd, msg, "", now)
                    if isinstance(msg, p.Ack) and fwd.subscription is not None:
                        self._repace(fwd.subscription)
                elif self.config.fmt is OutputFormat.PROTOCOL:
                    self.session.forward(frame, now)
                else:
                    self._forward_ad5940(frame, now)
                self._wake.set()
        except ClientError as exc:
            bye = self.client.bye
            text = f"upstream closed: {bye.message if bye else exc}"
            log.error(text)
            self._finish(EXIT_UPSTREAM, text)

    def _repace(self, sub: Subscription) -> None:
        """Speed 0 in-process: run the scenario at the pace the line carries for this subscription."""
        if self.server is None or self.config.speed > 0:
            return
        budget = self.plan(sub)
        if budget.line_speed is not None:
            speed_ppm = max(1, round(budget.line_speed * 1e6))
            self._dispatch([Forward(p.Control.set_speed(speed_ppm), None, self.session.generation)])
            log.info("line-paced speed", speed=round(budget.line_speed, 3))

    # -- ad5940 ------------------------------------------------------------------------------------------
    def _open_ad5940(self, now: float) -> None:
        from hil_server.transport.serial.ad5940 import format_banner

        self.pacer.push(format_banner().encode("ascii"), now, droppable=False, kind="banner")
        self._wake.set()

    def _forward_ad5940(self, frame: p.Frame, now: float) -> None:
        text = self.formatter.text(frame.message)
        if text:
            self.pacer.push(text.encode("ascii"), now, droppable=True, kind="spectrum")

    # -- writer and timers -------------------------------------------------------------------------------
    async def _writer(self) -> None:
        while True:
            await self._port_up.wait()
            port = self.port
            assert port is not None
            chunk = self.pacer.pull(self.clock())
            if chunk:
                try:
                    await asyncio.to_thread(port.write, chunk)
                except Exception as exc:  # SerialException, OSError, or a port closed under us
                    self.pacer.write_failed(len(chunk))
                    self._port_lost(port, exc)
                continue
            now = self.clock()
            due = self.pacer.next_ready(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if due is None else max(0.001, due - now))

    async def _ticker(self) -> None:
        next_status = self.clock() + self.config.status_s
        while True:
            await asyncio.sleep(0.05)
            now = self.clock()
            if self.config.fmt is OutputFormat.PROTOCOL:
                try:
                    self.session.tick(now)
                except RestartSessionError:
                    self._dispatch(self.session.open(now))
            for seq, (fwd, deadline) in list(self._pending.items()):
                if now >= deadline:
                    del self._pending[seq]
                    text = f"the upstream server did not answer within {self.config.upstream_timeout_s:g} s"
                    log.warning(text, request=type(fwd.message).__name__)
                    self.session.resolve(fwd, None, text, now)
            if now >= next_status:
                next_status = now + self.config.status_s
                self._status(now)
            self._wake.set()

    def _status(self, now: float) -> None:
        log.info(
            "line status",
            port="up" if self.port is not None else "down",
            frames_sent=self.pacer.frames_sent,
            bytes_sent=self.pacer.bytes_sent,
            dropped=dict(self.pacer.dropped_by_kind),
            decimated=self.session.decimated,
            divider=self.session.effective_divider,
            queued=self.pacer.queued(),
            t_sim_s=round(self.session.t_sim_us / 1e6, 1),
        )


# -- command line ------------------------------------------------------------------------------------------
