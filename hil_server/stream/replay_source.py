"""A source that serves a recorded capture with its original timing (``eis-hil replay``).

The capture (``hil_server/CAPTURE.md``) holds every frame with its receive or send time. Replay serves the
stream messages of it (CELL_STATES, EIS_SPECTRUM, EIS_POINT, FAULT_EVENT) through the same sessions as a live
server: each client gets its own handshake, subscription (message kinds, cells, divider, EIS mode),
sequence numbers, heartbeats and backpressure. Frames of the original session itself (hello, ACK/NAK,
heartbeats, BYE) are not replayed; the first SERVER_HELLO describes the stream.

Timing: frames go out at ``anchor + (t_capture - t_start) / speed`` on absolute deadlines, as in a live
server. Frames recorded at the same instant go out together. Semantics of the options:

- ``--skip S``: start at the first frame recorded at or after ``S`` seconds into the capture.
- ``--loop N``: play the capture N times (0: forever); each pass starts one median frame interval after
  the previous one ended; messages keep their recorded ``t_sim_us`` (a BMS sees the same data again).
- gaps: a silence in the capture is replayed as a silence of the same length (divided by the speed);
  ``--max-gap S`` shortens every gap longer than ``S`` seconds to ``S``.
- controls: PAUSE, RESUME, STOP, START (from the beginning), SEEK (capture time, µs) and SET_SPEED work as on
  a live server; commands that act on a simulation get NAK NOT_ALLOWED_IN_STATE.
- Deterministic: the same capture and options give the same frames in the same order to every client.

A capture cut short (crash, ``kill -9``) replays up to its last complete record, with a warning.
"""

from __future__ import annotations

import bisect
import dataclasses
from pathlib import Path

import numpy as np
import structlog

import protocol as p
from hil_server.stream.source import (
    BIT_EVENT,
    BIT_POINT,
    BIT_SPECTRUM,
    BIT_STATES,
    INSTANT,
    SWEEP,
    ControlRefusedError,
    Item,
    Tick,
)

log = structlog.get_logger(__name__)


_STREAMED = {
    int(p.MsgType.CELL_STATES): BIT_STATES,
    int(p.MsgType.EIS_SPECTRUM): BIT_SPECTRUM,
    int(p.MsgType.EIS_POINT): BIT_POINT,
    int(p.MsgType.FAULT_EVENT): BIT_EVENT,
}


class ReplayError(Exception):
    """The capture cannot be replayed (no SERVER_HELLO, nothing to stream)."""


_REPLAY = int(p.FrameFlags.REPLAY)


_Entry = tuple[int, int, bytes, int, int, int | None, int]
"""A stream message of the capture, ready to become an ``Item`` without decoding it: (SubscribeMask bit,
message type, payload, frame flags with REPLAY, step, cell, EIS mode)."""


def _entry(msg: p.Message, payload: bytes, flags: int) -> _Entry:
    """Frames keep the flags they were recorded with, plus REPLAY."""
    kind = int(msg.MSG_TYPE)
    flags |= _REPLAY
    if isinstance(msg, p.CellStates):
        return (BIT_STATES, kind, payload, flags, msg.step, None, 0)
    if isinstance(msg, p.EisSpectrum):
        return (BIT_SPECTRUM, kind, payload, flags, 0, msg.cell, SWEEP if msg.sweep_duration_ms else INSTANT)
    if isinstance(msg, p.EisPoint):
        return (BIT_POINT, kind, payload, flags, 0, msg.cell, 0)
    return (_STREAMED[kind], kind, payload, flags, 0, None, 0)


@dataclasses.dataclass
class _Group:
    t_us: int
    """Capture time, relative to the first streamed frame, after ``max_gap`` shortening."""
    frames: list[_Entry]
    """Each stream message recorded at that instant."""


class ReplaySource:
    """A capture as a ``Source``: one tick per instant at which frames were recorded."""

    simulates = False
    """Commands that act on a simulation are refused in every state (SPEC.md 6.3)."""

    def __init__(
        self,
        path: str | Path,
        *,
        loop: int = 1,
        skip_s: float = 0.0,
        max_gap_s: float | None = None,
        server_version: str = "",
    ) -> None:
        from hil_server.capture.format import iter_records, open_capture

        if loop < 0:
            raise ValueError("--loop must be >= 0 (0: forever)")
        if max_gap_s is not None and max_gap_s <= 0:
            raise ValueError("--max-gap must be > 0 s")
        capture = open_capture(path)
        hello: p.ServerHello | None = None
        groups: list[_Group] = []
        decoder = p.FrameDecoder()
        for record in iter_records(capture):
            decoder.feed(record.frame)
            for item in decoder.events():
                if isinstance(item, p.RemoteProtocolError):
                    continue  # recorded damage (a stream fault): the replayed stream is re-framed anyway
                msg = item.message
                if isinstance(msg, p.ServerHello) and hello is None:
                    hello = msg
                elif msg.MSG_TYPE in _STREAMED:
                    entry = _entry(msg, p.encode_payload(msg), item.flags)
                    if groups and groups[-1].t_us == record.t_us:
                        groups[-1].frames.append(entry)
                    else:
                        groups.append(_Group(record.t_us, [entry]))
        if capture.truncated_bytes:
            log.warning("capture cut short: replaying up to its last complete record", path=str(path))
        if hello is None:
            raise ReplayError(f"{path}: no SERVER_HELLO in the capture, so nothing describes the stream")
        if not groups:
            raise ReplayError(f"{path}: the capture holds no stream messages (states, spectra, events)")
        t = np.array([g.t_us for g in groups], dtype=np.int64)
        t -= t[0]
        gaps = np.diff(t)
        if max_gap_s is not None:
            gaps = np.minimum(gaps, round(max_gap_s * 1e6))
        t = np.concatenate([[0], np.cumsum(gaps)])
        for g, tu in zip(groups, t.tolist(), strict=True):
            g.t_us = tu
        first = int(np.searchsorted(t, round(skip_s * 1e6)))
        if first >= len(groups):
            raise ReplayError(
                f"{path}: --skip {skip_s:g} s is past the end of the capture ({t[-1] / 1e6:g} s)"
            )
        self._groups = groups[first:]
        self._times = [g.t_us - self._groups[0].t_us for g in self._groups]
        step = int(np.median(gaps)) if gaps.size else 0
        # one median interval between passes; at least 1 ms, so a capture of one instant cannot flood
        self._period_us = self._times[-1] + max(1000, step)
        self._loops = loop
        self._pass = 0
        self._index = 0
        self._time_us = 0
        self.path = Path(path)
        self.capture = capture
        """The capture as read: ``capture.skipped`` lists damaged spans left out (CAPTURE.md 6.2)."""
        self.n_cells = hello.cell_count
        self.freq_hz = hello.freq_hz
        self._hello = dataclasses.replace(hello, server_version=server_version or hello.server_version)
        log.info(
            "capture loaded",
            path=str(path),
            ticks=len(self._groups),
            duration_s=round(self._times[-1] / 1e6, 3),
            scenario=hello.scenario_id,
            skipped=first,
        )

    @property
    def time_us(self) -> int:
        return self._time_us

    @property
    def next_time_us(self) -> int:
        return self._pass * self._period_us + self._times[min(self._index, len(self._times) - 1)]

    @property
    def duration_us(self) -> int:
        return self._times[-1]

    def hello(self) -> p.ServerHello:
        return self._hello

    def tick(self, wanted: int, wall_us: int) -> Tick:
        index, groups = self._index, self._groups
        self._time_us = self._pass * self._period_us + self._times[index]
        group = groups[index]
        index += 1
        finished = index == len(groups)
        if finished and (self._loops == 0 or self._pass + 1 < self._loops):
            self._pass += 1
            index, finished = 0, False
        self._index = index
        # the payload passes through; decoded only if a session needs the message (a cell filter)
        items = [
            Item(bit, None, cell, mode, payload, msg_type=kind, step=step, flags=flags)
            for bit, kind, payload, flags, step, cell, mode in group.frames
            if bit & wanted
        ]
        return Tick(self._time_us, items, (), finished)

    def set_eis_modes(self, modes: frozenset[int]) -> None:
        """A capture has the spectra it has: every client's mode filters them."""

    def seek(self, time_us: int, *, restart: bool = False) -> None:
        """To capture time ``time_us`` (on the looped time line; past the end: the last frame). A replay
        carries nothing over a seek, so ``restart`` changes nothing."""
        self._pass = min(time_us // self._period_us, max(self._loops - 1, 0) if self._loops else time_us)
        rel = time_us - self._pass * self._period_us
        i = bisect.bisect_left(self._times, rel)
        if i == len(self._times) and (self._loops == 0 or self._pass + 1 < self._loops):
            self._pass, i = self._pass + 1, 0  # in the pause between two passes: the next pass
        self._index = min(i, len(self._groups) - 1)
        self._time_us = min(time_us, self.next_time_us)

    def active_fault_events(self) -> list[p.FaultEvent]:
        """A replay sends the FAULT_EVENTs that were recorded, no more."""
        return []

    def seek_cost(self, time_us: int) -> int:
        """A capture is indexed by time: seeking computes nothing."""
        return 0

    def control(self, msg: p.Control, cells: list[int] | None) -> int:
        name = p.ControlCommand(msg.command).name if msg.command in tuple(p.ControlCommand) else msg.command
        raise ControlRefusedError(
            p.ErrorCode.NOT_ALLOWED_IN_STATE, f"a replay cannot carry out {name}: it acts on a simulation"
        )
