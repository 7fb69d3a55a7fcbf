"""One serial port carrying the stream, whatever the stream comes from: the port side that the serial
bridge (``bridge.SerialBridge``, an upstream client) and the serial transport of a server
(``served.SerialTransport``) share. It opens the port (low latency), reads it in a thread, writes what the
``LinePacer`` lets through, reopens a lost port with backoff, repeats hellos and heartbeats
(``LineSession.tick``), and says BYE when it stops. Where the stream comes from and what the device's
requests do is the subclass's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import serial
import structlog

import protocol as p
from hil_server.transport.serial.ad5940 import Ad5940Formatter, format_banner
from hil_server.transport.serial.budget import (
    MAX_SPECTRUM_POINTS,
    BridgeError,
    Budget,
    OutputFormat,
    StreamSpec,
    line_rate,
    plan_budget,
    spectrum_bytes,
    states_bytes,
)
from hil_server.transport.serial.device_session import LineSession, RestartSessionError, Subscription
from hil_server.transport.serial.line_pacer import LinePacer
from hil_server.transport.serial.port import (
    Opener,
    PortReader,
    ftdi_latency_timer,
    open_serial,
    set_low_latency,
)

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


class SerialLine:
    """The port side of a serial line: ``await line.run()`` returns the exit code; ``stop()`` ends it cleanly.
    A subclass makes ``self.session`` (with ``session_options``) and implements the four hooks below."""

    session: LineSession

    def __init__(
        self,
        hello: p.ServerHello,
        config: BridgeConfig,
        *,
        opener: Opener = open_serial,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.hello = hello
        self.config = config
        self.opener = opener
        self.clock = clock
        self.sleep = sleep
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
        # an upstream hello may come with its grid empty (SPEC.md 4, SERVER_HELLO): budget for the longest
        self.n_freq = int(self.hello.freq_hz.size) or MAX_SPECTRUM_POINTS
        biggest = max(spectrum_bytes(self.n_freq), states_bytes(len(config.cells) or cell_count))
        self.pacer = LinePacer(
            self.rate,
            limit_bytes=int(max(self.rate * config.queue_ms / 1000, 2 * min(biggest, 8 * p.MAX_FRAME_SIZE))),
        )
        hello_bytes = len(p.encode_frame(self.hello, 0))
        self.session_options: dict[str, Any] = {
            "allowed_cells": self.allowed,
            "plan": self.plan,
            "hello_interval_s": max(1.0, 20 * hello_bytes / self.rate),  # hellos take at most 5 % of the line
            "heartbeat_s": config.heartbeat_s,
            "peer_timeout_s": config.peer_timeout_s,
        }
        self.formatter = Ad5940Formatter()
        self.port: serial.SerialBase | None = None
        self._reader: PortReader | None = None
        self._port_up = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._reopen_task: asyncio.Task[None] | None = None
        self.exit_code: int | None = None
        self.exit_message = ""
        self.outages = 0

    # -- the subclass's part -----------------------------------------------------------------------------
    def _new_connection(self, now: float) -> None:
        """Start a serial connection (``session.restart``) and restore the default subscription."""
        raise NotImplementedError

    def _from_device(self, data: bytes, now: float) -> None:
        """The device's bytes (``--format protocol``): feed the session, carry out or forward its requests."""
        raise NotImplementedError

    def _upstream(self) -> list[Coroutine[Any, Any, None]]:
        """Tasks that run as long as the line (an upstream pump)."""
        return []

    def _timers(self, now: float) -> None:
        """Called every 50 ms."""

    def _begin(self) -> None:
        """The port is open and the first serial connection started: the stream may flow."""

    def _end(self) -> None:
        """The line is stopping: nothing more is to be queued for it."""

    # -- budget ------------------------------------------------------------------------------------------
    def spec(self, sub: Subscription) -> StreamSpec:
        return StreamSpec(
            n_cells=len(sub.cells) or self.hello.cell_count,
            step_period_us=self.hello.step_period_us,
            n_freq=self.n_freq,
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
            self._new_connection(now)
        else:
            self._open_ad5940(now)
        self._begin()
        try:
            self._tasks = [
                *(asyncio.create_task(c) for c in self._upstream()),
                asyncio.create_task(self._writer()),
                asyncio.create_task(self._ticker()),
            ]
            await self._stop.wait()
            await self._shutdown()
        finally:
            self._end()
        return EXIT_OK if self.exit_code is None else self.exit_code

    async def _shutdown(self) -> None:
        self._end()
        if self.exit_code in (None, EXIT_UPSTREAM) and self.port is not None:
            if self.config.fmt is OutputFormat.PROTOCOL:
                self.pacer.drop_telemetry()  # the BYE goes out next, not after the queued stream
                text = p.truncate_utf8(self.exit_message, p.MAX_STRING_BYTES) or "bridge stopping"
                bye = p.Bye(p.ErrorCode.SHUTDOWN, text)  # a BYE text is at most 255 bytes, not characters
                self.session.reply(bye, self.clock())
            self._wake.set()
            deadline = self.clock() + 1.0 + len(self.pacer.queue) * 64 / self.rate
            while not self.pacer.idle and self.port is not None and self.clock() < deadline:
                await asyncio.sleep(0.01)
        for t in [*self._tasks, *([self._reopen_task] if self._reopen_task else [])]:
            t.cancel()
        await asyncio.gather(
            *self._tasks, *([self._reopen_task] if self._reopen_task else []), return_exceptions=True
        )
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
        now = self.clock()
        try:
            self._from_device(data, now)
        except RestartSessionError:
            self._new_connection(now)
        self._wake.set()

    # -- ad5940 ------------------------------------------------------------------------------------------
    def _open_ad5940(self, now: float) -> None:
        self.pacer.push(format_banner().encode("ascii"), now, droppable=False, kind="banner")
        self._wake.set()

    def _forward_ad5940(self, message: p.Message, now: float) -> None:
        text = self.formatter.text(message)
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
                    self._new_connection(now)
            self._timers(now)
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
