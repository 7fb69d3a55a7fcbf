"""The serial port: opening it, low latency, the FTDI latency timer, and the reader thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import serial
import structlog

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)

FTDI_SYSFS = Path("/sys/bus/usb-serial/devices")
Opener = Callable[[str, int], "serial.SerialBase"]


def open_serial(port: str, baud: int) -> serial.SerialBase:
    """A device path or a pyserial URL (``loop://``, ``rfc2217://``...), raw 8N1, no flow control."""
    return serial.serial_for_url(port, baudrate=baud, timeout=0.1, write_timeout=5.0)


def set_low_latency(ser: serial.SerialBase) -> bool:
    """Linux ``ASYNC_LOW_LATENCY`` through ``TIOCSSERIAL`` (pyserial's ``set_low_latency_mode``): the
    driver pushes received bytes to the reader at once. Best effort: ptys and many USB drivers refuse it."""
    setter = getattr(ser, "set_low_latency_mode", None)
    if setter is None:
        log.info("low_latency: not available for this port type", port=ser.name)
        return False
    try:
        setter(True)
    except (OSError, ValueError, NotImplementedError) as exc:
        log.info("low_latency: not supported by this port, left unchanged", port=ser.name, error=str(exc))
        return False
    log.info("low_latency: set", port=ser.name)
    return True


def ftdi_latency_timer(port: str, ms: int, sysfs: Path = FTDI_SYSFS) -> str:
    """Set the USB-serial (FTDI) latency timer to ``ms`` if it is higher and writable. Returns one of
    ``absent``, ``ok``, ``set``, ``readonly``."""
    name = Path(os.path.realpath(port)).name
    path = sysfs / name / "latency_timer"
    try:
        current = int(path.read_text().strip())
    except (OSError, ValueError):
        log.debug("no USB-serial latency timer for this port", path=str(path))
        return "absent"
    if current <= ms:
        log.info("FTDI latency timer", path=str(path), ms=current)
        return "ok"
    try:
        path.write_text(f"{ms}\n")
    except OSError as exc:
        log.warning(
            f"FTDI latency timer is {current} ms (adds up to that much delay per read); to lower it run: "
            f"echo {ms} | sudo tee {path}",
            error=str(exc),
        )
        return "readonly"
    log.info("FTDI latency timer set", path=str(path), was_ms=current, ms=ms)
    return "set"


class PortReader(threading.Thread):
    """Blocking reads in a thread (pyserial has no asyncio API and ``loop://`` no file descriptor)."""

    def __init__(
        self,
        ser: serial.SerialBase,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        on_error: Callable[[serial.SerialBase, Exception], None],
    ) -> None:
        super().__init__(name=f"serial-reader {ser.name}", daemon=True)
        self.ser, self.loop, self.on_data, self.on_error = ser, loop, on_data, on_error
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                data = self.ser.read(max(1, getattr(self.ser, "in_waiting", 1)))
            except Exception as exc:  # pyserial raises SerialException, OSError, TypeError on a closed port
                if self.running:
                    with contextlib.suppress(RuntimeError):  # the loop is already closed
                        self.loop.call_soon_threadsafe(self.on_error, self.ser, exc)
                return
            if data and self.running:
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self.on_data, data)


# -- the bridge --------------------------------------------------------------------------------------------
