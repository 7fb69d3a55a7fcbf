"""The text forms of control commands and subscription masks (``eis-hil client --control``, ``--mask``)."""

from __future__ import annotations

import argparse
import math

import protocol as p

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_SEQ_MOD = 2**32


# -- command line: control commands, subscription mask ---------------------------------------------------

CONTROL_FORMS = (
    "pause, resume, stop, start, seek=SECONDS, speed=X (1 = real time, 0 = as fast as the slowest client), "
    "load=AMPS[@CELL] (positive = discharge), load=off[@CELL], ambient=DEGC, ambient=off, "
    "inject=KIND:SEVERITY[@CELL][/SECONDS] (KIND a fault kind name such as contact_resistance or its number, "
    "SEVERITY a fraction 0..1 or a percentage like 50%), clear=FAULT_ID (0 or all: every injected fault), "
    "spectrum[@CELL]"
)


class ControlSyntaxError(ValueError):
    """A ``--control`` argument that is not one of :data:`CONTROL_FORMS`."""

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"--control {text!r}: {problem}; accepted forms: {CONTROL_FORMS}")
        self.text = text
        self.problem = problem


def _number(text: str, what: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ControlSyntaxError(whole, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ControlSyntaxError(whole, f"{what} {text!r} is not a finite number")
    return value


def _scaled(text: str, what: str, whole: str, scale: float, lo: int, hi: int) -> int:
    value = round(_number(text, what, whole) * scale)
    if not lo <= value <= hi:
        raise ControlSyntaxError(
            whole, f"{what} {text!r} does not fit the wire field ({lo}..{hi} after scaling)"
        )
    return value


def _cell(text: str, whole: str) -> int:
    if text.lower() == "all":
        return p.ALL_CELLS
    try:
        cell = int(text)
    except ValueError:
        raise ControlSyntaxError(whole, f"cell {text!r} is not a cell index (0, 1, ...) or 'all'") from None
    if not 0 <= cell <= _U16_MAX:
        raise ControlSyntaxError(whole, f"cell {cell} is outside 0..{_U16_MAX}")
    return cell


def _fault_kind(text: str, whole: str) -> int:
    name = text.strip().upper().replace("-", "_")
    if name in p.FaultKind.__members__:
        return int(p.FaultKind[name])
    try:
        value = int(text, 0)
    except ValueError:
        known = ", ".join(k.name.lower() for k in p.FaultKind)
        raise ControlSyntaxError(whole, f"fault kind {text!r} is not one of {known} or a number") from None
    if not 0 <= value <= 0xFF:
        raise ControlSyntaxError(whole, f"fault kind {value} is outside 0..255")
    return value


def _severity_ppm(text: str, whole: str) -> int:
    if text.endswith("%"):
        return _scaled(text[:-1], "severity", whole, 1e4, _I64_MIN, _I64_MAX)
    return _scaled(text, "severity", whole, 1e6, _I64_MIN, _I64_MAX)


def parse_control(text: str) -> p.Control:
    """One ``--control`` argument as a CONTROL message. Only the syntax and what the wire fields can carry
    are checked here; whether a value makes sense (a negative seek, an unknown cell) is the server's to say,
    in its NAK."""
    head, eq, arg = text.strip().partition("=")
    name, at, cell_text = head.partition("@")
    name = name.lower()
    cmd = p.ControlCommand
    simple = {"pause": cmd.PAUSE, "resume": cmd.RESUME, "stop": cmd.STOP, "start": cmd.START}
    if name in simple:
        if eq or at:
            raise ControlSyntaxError(text, f"{name} takes no value and no cell")
        return p.Control(simple[name])
    if name == "spectrum":
        if eq:
            raise ControlSyntaxError(text, "spectrum takes no value, only an optional @CELL")
        return p.Control.request_spectrum(_cell(cell_text, text) if at else p.ALL_CELLS)
    if at:
        raise ControlSyntaxError(text, "a cell goes after the value (load=AMPS@CELL), not after the name")
    if name not in ("seek", "speed", "load", "ambient", "inject", "clear"):
        raise ControlSyntaxError(text, f"unknown command {name!r}")
    if not eq or not arg:
        raise ControlSyntaxError(text, f"{name} needs a value ({name}=...)")
    if name == "seek":
        return p.Control.seek(_scaled(arg, "seek target (seconds)", text, 1e6, _I64_MIN, _I64_MAX))
    if name == "speed":
        return p.Control.set_speed(_scaled(arg, "speed factor", text, 1e6, _I64_MIN, _I64_MAX))
    if name == "load":
        amps, at, cell_text = arg.partition("@")
        cell = _cell(cell_text, text) if at else p.ALL_CELLS
        if amps.lower() == "off":
            return p.Control(cmd.SET_LOAD_CURRENT, cell=cell, aux=1)
        return p.Control.set_load_current(_scaled(amps, "current (A)", text, 1e6, _I64_MIN, _I64_MAX), cell)
    if name == "ambient":
        if arg.lower() == "off":
            return p.Control(cmd.SET_AMBIENT_TEMPERATURE, aux=1)
        return p.Control.set_ambient_temperature(
            _scaled(arg, "ambient temperature (C)", text, 1e3, _I64_MIN, _I64_MAX)
        )
    if name == "clear":
        if arg.lower() == "all":
            return p.Control.clear_fault(0)
        try:
            fault_id = int(arg)
        except ValueError:
            raise ControlSyntaxError(text, f"fault id {arg!r} is not a whole number or 'all'") from None
        if not 0 <= fault_id <= _U32_MAX:
            raise ControlSyntaxError(text, f"fault id {fault_id} is outside 0..{_U32_MAX}")
        return p.Control.clear_fault(fault_id)
    # inject=KIND:SEVERITY[@CELL][/SECONDS]
    rest, slash, seconds = arg.partition("/")
    rest, at, cell_text = rest.partition("@")
    kind_text, colon, severity = rest.partition(":")
    if not colon or not kind_text or not severity:
        raise ControlSyntaxError(text, "inject needs KIND:SEVERITY")
    return p.Control.inject_fault(
        _fault_kind(kind_text, text),
        cell=_cell(cell_text, text) if at else p.ALL_CELLS,
        severity_ppm=_severity_ppm(severity, text),
        duration_ms=_scaled(seconds, "duration (seconds)", text, 1e3, 0, _U32_MAX) if slash else 0,
    )


MASK_NAMES: dict[str, p.SubscribeMask] = {
    "states": p.SubscribeMask.CELL_STATES,
    "spectra": p.SubscribeMask.EIS_SPECTRUM,
    "points": p.SubscribeMask.EIS_POINT,
    "faults": p.SubscribeMask.FAULT_EVENT,
    "heartbeats": p.SubscribeMask.HEARTBEAT,
    "all": p.SubscribeMask.ALL,
}


def parse_mask(text: str) -> int:
    """``states,spectra,...`` as a SUBSCRIBE mask."""
    mask = 0
    for raw in text.split(","):
        name = raw.strip().lower()
        if name not in MASK_NAMES:
            raise argparse.ArgumentTypeError(
                f"{raw.strip()!r} is not a stream; give a comma-separated list of {', '.join(MASK_NAMES)}"
            )
        mask |= MASK_NAMES[name]
    return mask


def control_arg(text: str) -> p.Control:
    try:
        return parse_control(text)
    except ControlSyntaxError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {exc.problem}; accepted forms: {CONTROL_FORMS}"
        ) from None


EIS_MODES = {"default": p.EisMode.SCENARIO_DEFAULT, "instant": p.EisMode.INSTANT, "sweep": p.EisMode.SWEEP}


# -- what has been received: a state the table is drawn from -----------------------------------------------
