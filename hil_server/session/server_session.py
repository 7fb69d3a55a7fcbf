"""The server side of one protocol session, sans-IO: what the TCP server says to each client and what the
serial bridge says to its device. No asyncio, socket or serial here (a test enforces it); time comes in as
``now`` (seconds, monotonic).

The session decodes what the peer sends, walks the state table of ``protocol._session`` (a transport passes
``SERVER_TRANSITIONS`` or ``DEVICE_TRANSITIONS``), answers the handshake (version negotiation, the
challenge-response), checks subscriptions, answers bad input (counted, never fatal), and decides when a silent
peer has timed out. What a request *does* is the transport's: a subclass implements ``reply`` (queue a frame
that is never dropped), ``subscribe``, ``control`` and ``end`` (close after a refusal or a BYE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog

import protocol as p
from protocol import SERVER_TRANSITIONS, SessionState, negotiate_version
from protocol._session import Transitions

log = structlog.get_logger(__name__)

DETAIL_MAX = 200
"""An ERROR or NAK message carries at most this many characters of detail."""
ERRORS_PER_S = 10
"""ERRORs answering bad frames (not requests: those always get their NAK) at most this many a second."""
REQUESTS = (p.MsgType.SUBSCRIBE, p.MsgType.CONTROL)
"""The requests that get exactly one ACK or NAK, in every session state (SPEC.md section 6.1)."""


class ServerSession:
    """One peer of a server. Subclasses (the transports) implement ``reply``, ``subscribe``, ``control`` and
    ``end``; the rest is shared."""

    me = "server"
    """How this side names itself in a version refusal."""
    peer = "client"
    """How this side names its peer in logs and refusals."""
    transitions: Transitions = SERVER_TRANSITIONS

    # The settings are read through properties, not kept per instance: a TCP session reads them from its
    # server's config, and an instance with more than 30 attributes loses CPython's shared-key dict, which
    # makes every attribute read on the per-frame send path slower (measured: about 10 %).
    @property
    def secret(self) -> bytes | None:
        """The shared secret a CLIENT_HELLO must prove (None: no authentication)."""
        return None

    @property
    def handshake_timeout_s(self) -> float | None:
        """None: no CLIENT_HELLO deadline (the serial bridge repeats its hello instead)."""
        return None

    @property
    def peer_timeout_s(self) -> float:
        return 5.0

    def __init__(self, *, logger: Any = log) -> None:
        self.state = SessionState.HANDSHAKE
        self.client_name = ""
        self.decoder = p.FrameDecoder()
        self.challenge = p.new_challenge() if self.secret else bytes(p.AUTH_CHALLENGE_SIZE)
        self.rx_bad = 0
        self.last_rx = 0.0
        self.opened: float | None = None
        """When the connection opened (the CLIENT_HELLO deadline counts from it); None: at the first
        ``expired`` call, ``last_rx`` as it is then."""
        self.last_garbage_error = -math.inf
        self.error_window = (-math.inf, 0)
        """(start of the current second, ERRORs sent for bad frames in it)."""
        self.closing = False
        self.log = logger

    # -- the transport's part --------------------------------------------------------------------------------
    def reply(self, message: p.Message, now: float) -> None:
        """Queue a frame that is never dropped."""
        raise NotImplementedError

    def subscribe(self, seq: int, msg: p.Subscribe, cells: tuple[int, ...], now: float) -> None:
        """A SUBSCRIBE that passed the checks (``cells``: those it names, all allowed)."""
        raise NotImplementedError

    def control(self, seq: int, msg: p.Control, now: float) -> None:
        raise NotImplementedError

    def end(self, code: p.ErrorCode | None, text: str, now: float) -> None:
        """Close the session: after a refused CLIENT_HELLO (``code``, ERROR already sent) or the peer's BYE
        (``code`` None)."""
        raise NotImplementedError

    def subscribable_cells(self) -> range | frozenset[int]:
        """The cells a SUBSCRIBE may name."""
        return range(self.cell_count())

    def refused_cells_text(self, bad: list[int]) -> str:
        return f"cells {bad} do not exist (0..{self.cell_count() - 1})"

    def cell_count(self) -> int:
        raise NotImplementedError

    # -- receiving -------------------------------------------------------------------------------------------
    def feed(self, data: bytes, now: float) -> None:
        """Bytes from the peer: each frame is handled and each bad one answered, in order. After the session
        ends (our BYE) nothing more is answered, even from the same read."""
        self.decoder.feed(data)
        for item in self.decoder.events():
            if self.said_bye():
                break
            if isinstance(item, p.RemoteProtocolError):
                self.bad_input(item, now)
            else:
                self.handle(item, now)

    def said_bye(self) -> bool:
        """``closing``, read through a call: handling a frame can set it, which mypy's narrowing of the
        attribute in the loop above does not see."""
        return self.closing

    def bad_input(self, err: p.RemoteProtocolError, now: float) -> None:
        """Counted and answered, never fatal (SPEC.md section 5): a request (CONTROL, SUBSCRIBE) whose seq is
        known always gets its NAK (``command`` UNPARSED for a CONTROL: its bytes cannot be trusted); any other
        frame with a known seq an ERROR, at most ``ERRORS_PER_S`` a second; garbage at most one ERROR a
        second."""
        self.rx_bad += 1
        self.log.warning(f"bad input from {self.peer}", kind=err.kind.name, detail=err.detail, seq=err.seq)
        detail = err.detail[:DETAIL_MAX]
        if err.seq is not None and err.msg_type in REQUESTS:
            command = p.UNPARSED_COMMAND if err.msg_type == p.MsgType.CONTROL else 0
            self.reply(p.Nak(err.seq, command, err.kind.code, detail), now)
        elif err.seq is not None:
            start, sent = self.error_window
            if now - start >= 1.0:
                start, sent = now, 0
            if sent < ERRORS_PER_S:
                self.reply(p.Error(err.kind.code, err.seq, detail), now)
                sent += 1
            self.error_window = (start, sent)
        elif now - self.last_garbage_error >= 1.0:
            self.last_garbage_error = now
            self.reply(p.Error(err.kind.code, 0, detail), now)

    def handle(self, frame: p.Frame, now: float) -> None:
        msg, seq = frame.message, frame.seq
        if isinstance(msg, p.Bye):
            self.log.info(f"{self.peer} said bye", reason=msg.reason, message=msg.message)
            self.end(None, msg.message, now)
            return
        if isinstance(msg, p.Heartbeat):
            return  # in every state, never answered: it only proves the peer is alive
        if isinstance(msg, p.Error):  # in every state, never answered (no ERROR about an ERROR)
            self.log.warning(
                f"{self.peer} reports an error", code=msg.code, ref_seq=msg.ref_seq, text=msg.message
            )
            return
        msg_type = p.MsgType(msg.MSG_TYPE)
        target = self.transitions[self.state].get(msg_type)
        if target is None:
            if self.state is SessionState.HANDSHAKE:
                text = "send CLIENT_HELLO first"
            else:
                text = f"{msg_type.name} is not accepted from a {self.peer}"
            if msg_type in REQUESTS:  # one rule a client can wait on: every request gets ACK or NAK
                command = msg.command if isinstance(msg, p.Control) else 0
                self.reply(p.Nak(seq, command, p.ErrorCode.NOT_ALLOWED_IN_STATE, text), now)
            else:
                self.reply(p.Error(p.ErrorCode.NOT_ALLOWED_IN_STATE, seq, text), now)
        elif isinstance(msg, p.ClientHello):
            self.client_hello(seq, msg, target, now)
        elif isinstance(msg, p.Subscribe):
            cells = self.check_subscribe(seq, msg, now)
            if cells is not None:
                self.state = target
                self.subscribe(seq, msg, cells, now)
        elif isinstance(msg, p.Control):
            self.state = target
            self.control(seq, msg, now)

    def client_hello(self, seq: int, msg: p.ClientHello, target: SessionState, now: float) -> None:
        version = negotiate_version(msg.proto_min_major, msg.proto_max_major)
        if version is None:
            theirs = f"{msg.proto_min_major}..{msg.proto_max_major}"
            text = f"{self.me} speaks protocol 1..{p.PROTOCOL_VERSION}, {self.peer} {theirs}"
            self.reply(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, seq, text), now)
            self.log.warning("version mismatch", detail=text)
            self.end(p.ErrorCode.UNSUPPORTED_VERSION, text, now)
            return
        if self.secret is not None and not p.verify_response(
            self.secret, self.challenge, msg.client_name, msg.auth_response
        ):
            self.reply(p.Error(p.ErrorCode.AUTH_FAILED, seq, "authentication failed"), now)
            self.log.warning("authentication failed", client=msg.client_name)
            self.end(p.ErrorCode.AUTH_FAILED, "authentication failed", now)
            return
        self.state = target
        self.client_name = msg.client_name
        self.log = self.log.bind(**{self.peer: msg.client_name})
        self.log.info(f"{self.peer} hello", version=version)
        self.reply(p.Ack(seq, 0, version), now)

    def check_subscribe(self, seq: int, msg: p.Subscribe, now: float) -> tuple[int, ...] | None:
        """The cells of a SUBSCRIBE if it may be carried out; else a NAK is sent and None returned."""
        cells = tuple(dict.fromkeys(int(c) for c in msg.cells))  # a cell named twice is subscribed once
        allowed = self.subscribable_cells()
        bad = [c for c in cells if c not in allowed]
        if bad:
            self.reply(
                p.Nak(seq, 0, p.ErrorCode.UNKNOWN_CELL, self.refused_cells_text(bad)[:DETAIL_MAX]), now
            )
            return None
        if msg.eis_mode not in tuple(p.EisMode):
            self.reply(
                p.Nak(seq, 0, p.ErrorCode.OUT_OF_RANGE, f"eis_mode {msg.eis_mode} is not 0, 1 or 2"), now
            )
            return None
        return cells

    # -- time ------------------------------------------------------------------------------------------------
    def expired(self, now: float) -> str | None:
        """Why the peer has timed out (the text of the BYE HEARTBEAT_TIMEOUT), or None: no CLIENT_HELLO within
        ``handshake_timeout_s`` of the connection opening (whatever else the peer sends), or nothing at all
        received for ``peer_timeout_s``."""
        silent_s = now - self.last_rx
        if self.opened is None:
            self.opened = self.last_rx
        if self.state is SessionState.HANDSHAKE:
            if self.handshake_timeout_s is None:
                return None
            if now - self.opened > self.handshake_timeout_s:
                return "no CLIENT_HELLO in time"
        if silent_s > self.peer_timeout_s:
            return f"nothing received for {self.peer_timeout_s:g} s"
        return None


def lateness_percentiles_us(values_us: Sequence[float]) -> tuple[int, int, int]:
    """p50, p99 and max of send lateness (µs) for a HEARTBEAT, clamped to its u32 fields; 0 when empty."""
    lat = np.asarray(values_us, dtype=float) if len(values_us) else np.zeros(1)
    return tuple(  # type: ignore[return-value]
        int(min(2**32 - 1, max(0.0, v))) for v in (np.percentile(lat, 50), np.percentile(lat, 99), lat.max())
    )


def heartbeat(
    t_sim_us: int,
    t_wall_us: int,
    sent: int,
    dropped: int,
    rx_bad: int,
    lateness_us: tuple[int, int, int],
    queued: int,
    sim_state: int,
) -> p.Heartbeat:
    """The HEARTBEAT a server sends its peer: what it sent, dropped, rejected, how late."""
    p50, p99, mx = lateness_us
    return p.Heartbeat(
        t_sim_us, t_wall_us, sent, dropped, rx_bad & 0xFFFFFFFF, p50, p99, mx, min(queued, 0xFFFF), sim_state
    )
