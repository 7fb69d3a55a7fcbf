"""The server side of a session as data (SPEC.md section 6), the way h11's ``_state.py`` holds its rules.

Rule: what a server accepts from its peer in each state, and the state an accepted request leads to, lives in
these tables and nowhere else. ``hil_server.session.ServerSession`` walks them; the TCP server and the serial
bridge (toward its device) differ only in the table they pass.

    HANDSHAKE --CLIENT_HELLO ok--> READY --SUBSCRIBE ok--> STREAMING
        |  bad version / auth / timeout        any state --BYE, EOF, timeout, slow--> CLOSED
        +--> CLOSED (ERROR + BYE)

BYE and HEARTBEAT are accepted in every state and are not in the tables: BYE closes, a HEARTBEAT only proves
the peer is alive. A message type missing from a state's row is refused with ERROR NOT_ALLOWED_IN_STATE.
"""

from __future__ import annotations

import enum

from ._constants import PROTOCOL_VERSION, ControlCommand, MsgType, SimState


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    STREAMING = "streaming"
    CLOSED = "closed"


Transitions = dict[SessionState, dict[MsgType, SessionState]]

SERVER_TRANSITIONS: Transitions = {
    SessionState.HANDSHAKE: {MsgType.CLIENT_HELLO: SessionState.READY},
    SessionState.READY: {MsgType.SUBSCRIBE: SessionState.STREAMING, MsgType.CONTROL: SessionState.READY},
    SessionState.STREAMING: {
        MsgType.SUBSCRIBE: SessionState.STREAMING,
        MsgType.CONTROL: SessionState.STREAMING,
    },
    SessionState.CLOSED: {},
}
"""A client of the TCP server: one CLIENT_HELLO, then SUBSCRIBE and CONTROL."""

DEVICE_TRANSITIONS: Transitions = {
    SessionState.HANDSHAKE: {MsgType.CLIENT_HELLO: SessionState.READY},
    SessionState.READY: {
        MsgType.CLIENT_HELLO: SessionState.READY,
        MsgType.SUBSCRIBE: SessionState.READY,
        MsgType.CONTROL: SessionState.READY,
    },
    SessionState.STREAMING: {},
    SessionState.CLOSED: {},
}
"""A device behind the serial bridge: it streams the default subscription before any SUBSCRIBE (so READY is
where it stays), and a device that reboots says CLIENT_HELLO again on the same line."""


SimTransitions = dict[SimState, dict[ControlCommand, SimState]]

_C, _S = ControlCommand, SimState
SIM_COMMANDS = (  # commands that act on the simulation: they take effect at its next step
    _C.SET_LOAD_CURRENT,
    _C.SET_AMBIENT_TEMPERATURE,
    _C.INJECT_FAULT,
    _C.CLEAR_FAULT,
    _C.REQUEST_SPECTRUM,
)

SIM_TRANSITIONS: SimTransitions = {
    _S.IDLE: {},
    _S.RUNNING: {
        _C.PAUSE: _S.PAUSED,
        _C.STOP: _S.STOPPED,
        _C.SEEK: _S.RUNNING,
        **dict.fromkeys(SIM_COMMANDS, _S.RUNNING),
        _C.SET_SPEED: _S.RUNNING,
    },
    _S.PAUSED: {
        _C.RESUME: _S.RUNNING,
        _C.STOP: _S.STOPPED,
        _C.SEEK: _S.PAUSED,
        **dict.fromkeys(SIM_COMMANDS, _S.PAUSED),
        _C.SET_SPEED: _S.PAUSED,
    },
    _S.STOPPED: {_C.START: _S.RUNNING, _C.SET_SPEED: _S.STOPPED},
    _S.FINISHED: {
        _C.START: _S.RUNNING,
        _C.STOP: _S.STOPPED,
        _C.SEEK: _S.PAUSED,
        _C.SET_SPEED: _S.FINISHED,
    },
}
"""What a server does with each CONTROL command in each ``SimState`` (SPEC.md section 6.3 is generated
from it by ``tools/gen_spec.py``): a command in a state's row is carried out (ACK, unless its arguments are
refused) and leads to the state given; one missing from the row gets NAK NOT_ALLOWED_IN_STATE and changes
nothing. START, PAUSE, RESUME and STOP are accepted only where they change the state; START always begins a
new run at t = 0. IDLE: no stream to act on (a serial bridge before its server has said its state)."""


def sim_table_markdown(table: SimTransitions = SIM_TRANSITIONS) -> str:
    """The table as the Markdown of SPEC.md: one row per command, one column per state; each cell the state
    an ACK leads to, or NAK."""
    states = list(table)
    lines = [
        "| command | " + " | ".join(s.name for s in states) + " |",
        "|---|" + "---|" * len(states),
    ]
    for cmd in ControlCommand:
        cells = [f"ACK → {table[s][cmd].name}" if cmd in table[s] else "NAK" for s in states]
        lines.append(f"| {cmd.value} {cmd.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def negotiate_version(proto_min_major: int, proto_max_major: int) -> int | None:
    """The highest protocol major version both sides speak (ours: 1..PROTOCOL_VERSION), or None."""
    lo, hi = max(proto_min_major, 1), min(proto_max_major, PROTOCOL_VERSION)
    return hi if lo <= hi else None


def state_diagram(transitions: Transitions) -> str:
    """The table as text, one accepted request per line (``python -m protocol._session``)."""
    lines = []
    for state, row in transitions.items():
        for msg_type, target in row.items():
            lines.append(f"{state.name:10} --{msg_type.name}--> {target.name}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write("server:\n" + state_diagram(SERVER_TRANSITIONS) + "\n")
    sys.stdout.write("device:\n" + state_diagram(DEVICE_TRANSITIONS) + "\n")
