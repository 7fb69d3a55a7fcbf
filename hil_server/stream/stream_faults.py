"""Stream (transport) faults carried out on one session's telemetry frames.

The engine decides *when* a stream fault is active (``StepOutput.stream_faults``); this module decides *what*
it does to the bytes. It acts only on telemetry frames (CELL_STATES, EIS_SPECTRUM, EIS_POINT) after they have
their sequence number: replies (ACK, NAK, ERROR, BYE), heartbeats and fault events are never damaged, so a
bench always gets the ground truth of what was injected.

Each fault has its own ``numpy.random.Generator`` seeded from the fault's seed, per session: two sessions
that receive the same frame sequence are damaged identically, and a re-run with the same scenario and seed
damages the same frames.

| kind | effect on each telemetry frame while active |
|---|---|
| ``drop_frames`` | left out with ``probability`` (the receiver sees a gap in ``seq``) |
| ``delay_frames`` | with ``probability``, held back and sent once simulated time has advanced ``delay_s`` |
| ``duplicate_frames`` | with ``probability``, sent twice (same ``seq``) |
| ``reorder_frames`` | with ``probability``, held in a window of ``window_frames``, sent shuffled when full |
| ``corrupt_crc`` | with ``probability``, one bit of the frame CRC flipped (the receiver must reject it) |
| ``stray_bytes`` | with ``probability``, 1..``max_bytes`` random bytes sent before the frame |
| ``disconnect`` | the connection is cut (TCP abort) the first time the session has a frame to send |

Delayed frames go out once simulated time reaches their release time, even after the fault has ended; a
partly filled reorder window goes out when its fault ends; both are flushed when the stream ends. Nothing is
lost that the fault did not drop on purpose.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from hil_server.sim.output import StreamFault
from protocol import FaultKind

FK = FaultKind


class TransportFaults:
    """The per-session state of the stream faults: random generators, held frames."""

    def __init__(self) -> None:
        self._rngs: dict[int, np.random.Generator] = {}
        self._delayed: list[tuple[int, int, bytes]] = []  # heap of (release time, order, frame)
        self._order = 0
        self._window: list[bytes] = []
        self._window_fault: StreamFault | None = None
        self._cut: set[int] = set()
        self.damaged = 0
        """Frames dropped, delayed, duplicated, reordered, corrupted or preceded by stray bytes."""

    @property
    def idle(self) -> bool:
        return not self._delayed and not self._window

    def _rng(self, f: StreamFault) -> np.random.Generator:
        rng = self._rngs.get(f.fault_id)
        if rng is None:
            rng = self._rngs[f.fault_id] = np.random.default_rng(f.seed)
        return rng

    def _hit(self, f: StreamFault) -> bool:
        return bool(self._rng(f).random() < float(f.params.get("probability", 1.0)))

    def disconnect_due(self, faults: Sequence[StreamFault]) -> bool:
        """True once per ``disconnect`` fault: the caller cuts the connection."""
        for f in faults:
            if f.kind == FK.DISCONNECT and f.fault_id not in self._cut:
                self._cut.add(f.fault_id)
                return True
        return False

    def apply(self, frame: bytes, t_us: int, faults: Sequence[StreamFault]) -> list[bytes]:
        """What to send now in place of ``frame`` (possibly nothing), plus any held frames now due."""
        out = self.release(t_us, faults)
        frames = [frame]
        for f in faults:
            if not frames:
                break
            k = f.kind
            if k in (FK.SPECTRUM_DRIFT, FK.DISCONNECT) or not self._hit(f):
                continue
            self.damaged += 1
            if k == FK.DROP_FRAMES:
                frames = []
            elif k == FK.DUPLICATE_FRAMES:
                frames = frames + frames
            elif k == FK.CORRUPT_CRC:
                frames = [fr[:-1] + bytes([fr[-1] ^ 0x01]) for fr in frames]
            elif k == FK.STRAY_BYTES:
                rng = self._rng(f)
                n = int(rng.integers(1, int(f.params.get("max_bytes", 16)) + 1))
                frames = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() + frames[0], *frames[1:]]
            elif k == FK.DELAY_FRAMES:
                release_us = t_us + round(float(f.params.get("delay_s", 0.5)) * 1e6)
                for fr in frames:
                    heapq.heappush(self._delayed, (release_us, self._order, fr))
                    self._order += 1
                frames = []
            elif k == FK.REORDER_FRAMES:
                self._window.extend(frames)
                self._window_fault = f
                frames = []
                if len(self._window) >= int(f.params.get("window_frames", 3)):
                    out.extend(self._flush_window())
        out.extend(frames)
        return out

    def release(self, t_us: int, faults: Sequence[StreamFault]) -> list[bytes]:
        """Held frames that are due at ``t_us``: delayed frames whose time has come, and the reorder window
        if its fault is no longer active. A ``t_us`` far ahead flushes everything (end of the stream)."""
        out: list[bytes] = []
        while self._delayed and self._delayed[0][0] <= t_us:
            out.append(heapq.heappop(self._delayed)[2])
        wf = self._window_fault
        if self._window and (wf is None or all(f.fault_id != wf.fault_id for f in faults)):
            out.extend(self._flush_window())
        return out

    def _flush_window(self) -> list[bytes]:
        window, self._window = self._window, []
        assert self._window_fault is not None
        order = self._rng(self._window_fault).permutation(len(window))
        return [window[i] for i in order]
