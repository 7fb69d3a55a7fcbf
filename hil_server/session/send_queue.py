"""The queue policy of a server's sends, once: replies are never dropped, telemetry is dropped oldest-first.

Frames are queued in ``seq`` order (a gap on the wire is a drop, SPEC.md 2.3), encoded as they are queued.
Those that may not be dropped (handshake answers, ACK/NAK, ERROR, BYE, fault events) are ``Kept``; telemetry
is plain ``bytes``. Beyond ``queue_frames`` droppable frames the oldest droppable one goes; above half of it
the queue has no ``room`` (at speed 0 the stream waits for room at every client).

Sans-IO: ``wake`` (something to send) and ``room`` are flags the transport owns and waits on (asyncio
events for TCP); this module only sets and clears them.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Protocol

import protocol as p


class Flag(Protocol):
    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...


class Kept(bytes):
    """A queued frame that is never dropped (a reply or a fault event); telemetry frames are plain bytes."""


class SendQueue:
    def __init__(self, queue_frames: int, wake: Flag, room: Flag) -> None:
        self.encoder = p.FrameEncoder()
        self.queue_frames = queue_frames
        """Telemetry frames queued before the oldest are dropped."""
        self.queue: collections.deque[bytes] = collections.deque()
        """Frames to send, in ``seq`` order: those that may not be dropped are ``Kept``, the rest bytes."""
        self.droppable = 0
        """How many queued frames are droppable."""
        self.half_queue = queue_frames // 2
        """Above this many droppable frames the queue has no ``room``."""
        self.wake = wake
        self.room = room
        self.room.set()
        self.frames_sent = 0
        self.frames_dropped = 0

    def queue_reply(self, message: p.Message) -> None:
        """A frame that is never dropped (handshake, ACK/NAK, ERROR, BYE, fault events)."""
        self.queue.append(Kept(self.encoder.encode(message)))
        self.wake.set()

    def push_telemetry(self, msg_type: int, payload: bytes, flags: int) -> None:
        """Queue one telemetry frame: the common case, once per frame per client, kept lean. The caller sets
        ``wake``."""
        self.queue.append(self.encoder.frame(msg_type, payload, flags))
        self.droppable += 1
        if self.droppable > self.half_queue:
            if self.droppable > self.queue_frames:
                self._drop_oldest()
            self.room.clear()

    def queue_telemetry(self, frames: Sequence[bytes]) -> None:
        """Queue frames already encoded (by the stream faults, which may hold, reorder or corrupt them)."""
        limit = self.queue_frames
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

    def take(self) -> tuple[int, bytes]:
        """Everything queued, as one write: (frames, bytes). The queue is empty and has room again."""
        frames = len(self.queue)
        data = b"".join(self.queue)
        self.queue.clear()
        self.droppable = 0
        self.room.set()
        return frames, data

    def discard(self) -> None:
        """Drop the telemetry queued (a stuck peer), counted as dropped; replies and fault events stay."""
        self.frames_dropped += self.droppable
        kept = [frame for frame in self.queue if type(frame) is Kept]
        self.queue.clear()
        self.queue.extend(kept)
        self.droppable = 0

    def last_words(self, bye: p.Bye) -> tuple[int, bytes]:
        """Closing on a stuck peer (SPEC.md section 8): the telemetry goes, every reply and fault event still
        queued goes out, then ``bye`` with the highest seq, as one write: (frames, bytes). ``room`` stays as
        it was: the session is closing, the stream no longer waits for it once it is out of the broadcast."""
        self.discard()
        self.queue.append(Kept(self.encoder.encode(bye)))
        frames, data = len(self.queue), b"".join(self.queue)
        self.queue.clear()
        return frames, data
