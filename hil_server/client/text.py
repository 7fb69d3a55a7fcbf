"""One-line, human-readable rendering of frames and decode errors (CLI output, mock clients, logs)."""

from __future__ import annotations

import enum
from collections.abc import Iterable

import numpy as np

import protocol as p


def enum_name(enum_type: type[enum.IntEnum], value: int, unknown: str = "0x{value:02x}") -> str:
    """The member's name, or ``unknown`` formatted with the value (a newer peer may send values we lack)."""
    try:
        return enum_type(value).name
    except ValueError:
        return unknown.format(value=value)


def cell_ranges(values: Iterable[int], sep: str = "..") -> str:
    """Cell indices as ranges: ``[0, 1, 2, 5]`` -> ``0..2, 5`` (``none`` when empty)."""
    cells = sorted(values)
    if not cells:
        return "none"
    out, start, prev = [], cells[0], cells[0]
    for v in [*cells[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}{sep}{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _short(value: object) -> object:
    """Long arrays as a count; hashes and challenges (hex strings) cut to 8 digits."""
    if isinstance(value, list):
        return value if len(value) <= 4 else f"[{len(value)} values]"
    if isinstance(value, str) and len(value) >= 32 and all(c in "0123456789abcdef" for c in value):
        return f"{value[:8]}.." if value.strip("0") else "0"
    return value


def _z_text(spectrum: p.EisSpectrum, i: int) -> str:
    re_mohm, im_mohm = spectrum.z_re_ohm[i] * 1e3, spectrum.z_im_ohm[i] * 1e3
    return f"Z({spectrum.freq_hz[i]:.3g} Hz)={re_mohm:.2f}{im_mohm:+.2f}j mOhm"


def describe_message(message: p.Message) -> str:
    """A compact summary with units; arrays summarised, not dumped."""
    match message:
        case p.CellStates():
            r = message.records
            if r.size == 0:
                return f"t={message.t_sim_us / 1e6:.3f}s step={message.step} no cells"
            v = r["voltage_uV"] / 1e6
            return (
                f"t={message.t_sim_us / 1e6:.3f}s step={message.step} cells={r.size} "
                f"V={v.min():.4f}..{v.max():.4f} I={r['current_uA'][0] / 1e6:+.3f}A "
                f"T={r['temperature_mdegC'][0] / 1e3:.2f}C SOC={r['soc_ppm'][0] / 1e4:.2f}% "
                f"SOH={r['soh_ppm'][0] / 1e4:.2f}%"
            )
        case p.EisSpectrum():
            n = message.freq_hz.size
            if n == 0:
                return f"cell={message.cell} id={message.spectrum_id} empty"
            lo = int(np.argmin(message.freq_hz))
            hi = int(np.argmax(message.freq_hz))
            return (
                f"t={message.t_sim_us / 1e6:.3f}s cell={message.cell} id={message.spectrum_id} {n} points "
                f"{message.freq_hz[hi]:.3g}..{message.freq_hz[lo]:.3g} Hz "
                f"{_z_text(message, hi)} {_z_text(message, lo)} "
                f"SOC={message.soc_ppm / 1e4:.1f}% T={message.temperature_mdegC / 1e3:.1f}C "
                + (f"KK={message.kk_residual:.3%}" if np.isfinite(message.kk_residual) else "KK=n/a")
            )
        case p.FaultEvent():
            phase = "START" if message.phase == p.FaultPhase.START else "END"
            return (
                f"t={message.t_sim_us / 1e6:.3f}s fault {message.fault_id} "
                f"{enum_name(p.FaultKind, message.kind)} {phase} "
                f"cells={message.cells.tolist()} severity={message.severity_ppm / 1e4:.1f}%"
            )
        case p.Control():
            command = enum_name(p.ControlCommand, message.command)
            return f"{command} cell={message.cell} value={message.value} aux={message.aux}"
        case p.Nak() | p.Error() | p.Bye():
            fields = message.to_dict()
            code = fields.get("code", fields.get("reason", 0))
            return f"{enum_name(p.ErrorCode, code)}: {fields['message']}"
        case _:
            return " ".join(f"{name}={_short(value)}" for name, value in message.to_dict().items())


def describe(item: p.Frame | p.RemoteProtocolError) -> str:
    if isinstance(item, p.Frame):
        name = p.MsgType(item.message.MSG_TYPE).name
        flags = f" flags=0x{item.flags:04x}" if item.flags else ""
        return f"#{item.seq:<6d} {name:<12} {describe_message(item.message)}{flags}"
    seq = f" seq={item.seq}" if item.seq is not None else ""
    return f"!       {item.kind.name:<12} {item.detail}{seq}"
