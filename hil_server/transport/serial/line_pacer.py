"""A UART's worth of bytes per second, sans-IO: the serial bridge's send queue and pacing."""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


@dataclasses.dataclass
class _Item:
    data: bytes
    t_enq: float
    kind: str


class LinePacer:
    """A UART's worth of bytes per second, sans-IO: ``push`` what is to be sent, ``pull(now)`` what may be
    written now. Nothing beyond a small burst (``burst_s`` of line time, at least 64 bytes) is ever handed
    to the OS, so the kernel and adapter buffers stay near empty and latency stays in this queue, where the
    drop policy can act on it.

    Frames go out in the order they were pushed, which is their ``seq`` order (SPEC.md 2.3: a gap is a
    drop, so nothing may overtake). Replies (``droppable=False``) are never dropped; telemetry beyond
    ``limit_bytes`` is dropped oldest-first; the newest always gets in, so one frame larger than the limit
    is still sent. A frame once started is always finished. A reply waits behind at most ``limit_bytes``
    of telemetry: that bounds its latency to the queue's length in line time.
    """

    def __init__(self, bytes_per_s: float, *, limit_bytes: int, burst_s: float = 0.02) -> None:
        self.rate = bytes_per_s
        self.burst = max(64.0, bytes_per_s * burst_s)
        self.limit_bytes = limit_bytes
        self.credit = self.burst
        self._last: float | None = None
        self.queue: collections.deque[tuple[_Item, bool]] = collections.deque()
        """Items in push order, each with whether it may be dropped."""
        self.telemetry_bytes = 0
        """Bytes of the droppable items queued."""
        self._current: _Item | None = None
        self._current_droppable = False
        self._offset = 0
        self._chunk: list[list[Any]] = []
        """What the last ``pull`` handed out: [item, droppable, finished] each, for ``write_failed``."""
        self.online = True
        """False while the port is gone: telemetry pushed then is dropped at once (and counted)."""
        self.dropped = 0
        self.dropped_by_kind: collections.Counter[str] = collections.Counter()
        self.frames_sent = 0
        self.bytes_sent = 0
        self.latency_s: list[float] = []
        """Enqueue to last byte handed to the port, per item, since the caller last cleared it."""

    def push(self, data: bytes, now: float, *, droppable: bool, kind: str) -> int:
        """Queue one frame (or text unit); returns how many telemetry items were dropped for it."""
        item = _Item(data, now, kind)
        if not droppable:
            self.queue.append((item, False))
            return 0
        if not self.online:
            self._drop(item)
            return 1
        dropped = 0
        while self.telemetry_bytes and self.telemetry_bytes + len(data) > self.limit_bytes:
            i = next(i for i, (_, may_drop) in enumerate(self.queue) if may_drop)
            old = self.queue[i][0]
            del self.queue[i]
            self.telemetry_bytes -= len(old.data)
            self._drop(old)
            dropped += 1
        self.queue.append((item, True))
        self.telemetry_bytes += len(data)
        return dropped

    def _drop(self, item: _Item) -> None:
        self.dropped += 1
        self.dropped_by_kind[item.kind] += 1

    def drop_telemetry(self) -> int:
        """Drop every queued telemetry item (the port went away); returns how many."""
        kept: collections.deque[tuple[_Item, bool]] = collections.deque()
        n = 0
        for item, may_drop in self.queue:
            if may_drop:
                self._drop(item)
                n += 1
            else:
                kept.append((item, may_drop))
        self.queue = kept
        self.telemetry_bytes = 0
        return n

    def queued(self, kind: str | None = None) -> int:
        items = [i for i, _ in self.queue] + ([self._current] if self._current else [])
        return sum(1 for i in items if kind is None or i.kind == kind)

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.credit = min(self.burst, self.credit + (now - self._last) * self.rate)
        self._last = now if self._last is None else max(self._last, now)

    def pull(self, now: float) -> bytes:
        """The bytes the line can take now (possibly none). If writing them fails, call ``write_failed``."""
        self._refill(now)
        out = bytearray()
        self._chunk = []
        if self._current is not None:
            self._chunk.append([self._current, self._current_droppable, False])
        while self.credit >= 1:
            if self._current is None:
                if not self.queue:
                    break
                self._current, self._current_droppable = self.queue.popleft()
                if self._current_droppable:
                    self.telemetry_bytes -= len(self._current.data)
                self._offset = 0
                self._chunk.append([self._current, self._current_droppable, False])
            cur = self._current
            n = min(int(self.credit), len(cur.data) - self._offset)
            out += cur.data[self._offset : self._offset + n]
            self._offset += n
            self.credit -= n
            if self._offset >= len(cur.data):
                self.frames_sent += 1
                self.latency_s.append(now - cur.t_enq)
                self._chunk[-1][2] = True
                self._current = None
        self.bytes_sent += len(out)
        return bytes(out)

    def write_failed(self, nbytes: int) -> None:
        """The last ``pull``'s bytes never reached the line (the port went away): the telemetry in them is
        counted as dropped, the replies go back to the front of the queue to be sent whole, and a frame cut
        in the middle is not continued (its tail alone would be garbage on the next connection)."""
        self.bytes_sent -= nbytes
        replies: list[tuple[_Item, bool]] = []
        for item, droppable, finished in self._chunk:
            if finished:
                self.frames_sent -= 1
            if droppable:
                self._drop(item)
            else:
                replies.append((item, False))
        self.queue.extendleft(reversed(replies))
        self._chunk = []
        self._current, self._offset = None, 0

    def abort_current(self) -> None:
        """The line went away between writes: a frame started on it is not continued on the next one
        (dropped if telemetry, sent again whole if a reply)."""
        if self._current is not None and self._offset:
            if self._current_droppable:
                self._drop(self._current)
            else:
                self.queue.appendleft((self._current, False))
            self._current, self._offset = None, 0

    def next_ready(self, now: float) -> float | None:
        """When ``pull`` will next return bytes: None if nothing is queued."""
        if self._current is None and not self.queue:
            return None
        self._refill(now)
        need = min(self.burst, 1.0 if self._current is None else len(self._current.data) - self._offset)
        need = max(1.0, min(need, self.burst / 2))
        return now + max(0.0, (need - self.credit) / self.rate)

    @property
    def idle(self) -> bool:
        return self._current is None and not self.queue


# -- the protocol session toward the device ---------------------------------------------------------------
