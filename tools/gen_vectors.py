#!/usr/bin/env python3
"""Write tests/vectors/vectors.json: the golden frames that the Python and C decoders both test against.

Each vector is a byte stream (hex) and the decoder's expected outcome after the whole stream and end of
stream: a list of frames (message type, header fields, decoded fields) and errors (kind, nbytes, seq).
Valid vectors cover every message type, with edge values; invalid ones cover the garbage cases of
SPEC.md section 5. The expected error kinds are written here by hand and checked against the decoder, so
a change in decoding behaviour fails generation instead of silently rewriting the vectors.

    python tools/gen_vectors.py            # rewrite the file
    python tools/gen_vectors.py --check    # exit 1 if the file is not what this script generates
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

import protocol as p
from protocol._codec import HEADER_STRUCT

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "vectors.json"
FREQS = np.logspace(4, -2, 61).astype(np.float32)  # 10 kHz .. 10 mHz, 10 per decade


def _spectrum(n: int) -> tuple[Any, Any, Any]:
    f = FREQS[:n] if n <= FREQS.size else np.logspace(5, -3, n).astype(np.float32)
    w = 2 * np.pi * f.astype(np.float64)
    z = 0.030 + 1e-7j * w + 0.015 / (1 + 1j * w * 0.015 * 0.5) + 0.01 / np.sqrt(1j * w)
    return f, z.real, z.imag


def valid_messages() -> list[tuple[str, str, p.Message, int]]:
    """(name, description, message, flags)."""
    f, re, im = _spectrum(61)
    f3, re3, im3 = _spectrum(3)
    return [
        (
            "server_hello",
            "ServerHello with auth required, 61-point grid, non-ASCII scenario name",
            p.ServerHello(
                auth_required=1,
                seed=0x0123456789ABCDEF,
                cell_count=96,
                step_period_us=100_000,
                auth_challenge=bytes(range(16)),
                model_hash=bytes(range(32)),
                scenario_hash=bytes(range(255, 223, -1)),
                server_version="0.1.0",
                model_id="pinn-eis-v1",
                scenario_id="us06-25°C",
                freq_hz=f,
            ),
            0,
        ),
        ("server_hello_empty", "ServerHello with defaults and no grid", p.ServerHello(), 0),
        (
            "client_hello",
            "ClientHello with an auth response",
            p.ClientHello(
                auth_response=p.auth_response(b"bench-secret", bytes(range(16)), "bms-ecu-1"),
                client_name="bms-ecu-1",
            ),
            0,
        ),
        (
            "subscribe_cells",
            "Subscribe to cells 0, 4, 95: states and spectra, every 10th state, sweep mode",
            p.Subscribe(
                msg_mask=p.SubscribeMask.CELL_STATES | p.SubscribeMask.EIS_SPECTRUM,
                state_divider=10,
                eis_mode=p.EisMode.SWEEP,
                cells=np.array([0, 4, 95]),
            ),
            0,
        ),
        ("subscribe_all", "Subscribe to everything (empty cell list)", p.Subscribe(), 0),
        (
            "heartbeat",
            "Heartbeat with large counters",
            p.Heartbeat(
                t_sim_us=3_600_000_000,
                t_wall_us=1_790_000_000_000_000,
                frames_sent=2**40 + 5,
                frames_dropped=7,
                rx_bad_frames=3,
                lateness_p50_us=120,
                lateness_p99_us=900,
                lateness_max_us=2500,
                queue_depth=4,
                sim_state=p.SimState.RUNNING,
            ),
            0,
        ),
        ("bye", "Bye on shutdown", p.Bye(p.ErrorCode.SHUTDOWN, "server shutting down"), 0),
        (
            "error",
            "Error answering a frame with a bad CRC",
            p.Error(p.ErrorCode.BAD_CRC, 41, "frame CRC mismatch"),
            0,
        ),
        (
            "cell_states_3",
            "CellStates of 3 cells with extreme values",
            p.CellStates.from_columns(
                12_500_000,
                1_790_000_000_123_456,
                125,
                cell=[0, 1, 65534],
                flags=[0, p.CellFlags.FAULT_ACTIVE | p.CellFlags.EXTRAPOLATED, 0xFFFF],
                voltage_uV=[3_712_345, 2_500_000, -(2**31)],
                current_uA=[-12_000_000, 0, 2**31 - 1],
                temperature_mdegC=[25_000, -30_125, 60_000],
                soc_ppm=[500_000, 0, 1_000_000],
                soh_ppm=[1_000_000, 700_000, 2**32 - 1],
            ),
            0,
        ),
        (
            "cell_states_0",
            "CellStates with no records",
            p.CellStates.from_columns(
                0, 0, 0, cell=[], voltage_uV=[], current_uA=[], temperature_mdegC=[], soc_ppm=[], soh_ppm=[]
            ),
            0,
        ),
        (
            "eis_spectrum_61",
            "EisSpectrum, 61 points 10 kHz..10 mHz of an R0+L+RC+Warburg cell, replayed measured data",
            p.EisSpectrum(
                t_sim_us=420_000_000,
                spectrum_id=17,
                sweep_duration_ms=0,
                cell=4,
                cell_flags=p.CellFlags.FAULT_ACTIVE,
                soc_ppm=812_500,
                soh_ppm=930_000,
                temperature_mdegC=-10_000,
                current_uA=-1_500_000,
                kk_residual=0.0042,
                freq_hz=f,
                z_re_ohm=re,
                z_im_ohm=im,
            ),
            p.FrameFlags.REPLAY | p.FrameFlags.MEASURED,
        ),
        (
            "eis_spectrum_3",
            "EisSpectrum of 3 points, sweep-timed duration",
            p.EisSpectrum(1, 2**32 - 1, 125_000, 0, 0, 0, 1_000_000, 45_000, 0, 0.0, f3, re3, im3),
            0,
        ),
        (
            "eis_point",
            "EisPoint 5 of 61",
            p.EisPoint(420_000_000, 17, 4, 5, 61, 0, float(f[5]), float(re[5]), float(im[5])),
            0,
        ),
        (
            "fault_event",
            "FaultEvent: contact resistance doubles on cells 3 and 4",
            p.FaultEvent(
                420_000_000,
                9,
                1_000_000,
                p.FaultKind.CONTACT_RESISTANCE,
                p.FaultPhase.START,
                np.array([3, 4]),
            ),
            0,
        ),
        (
            "fault_event_unknown_kind",
            "FaultEvent with a kind this version does not know (open set: still a valid frame)",
            p.FaultEvent(1, 1, 0, 0xEE, p.FaultPhase.END, np.array([], dtype=np.uint16)),
            0,
        ),
        ("control_seek", "Control SEEK to t = 120 s", p.Control.seek(120_000_000), 0),
        (
            "control_current",
            "Control SET_LOAD_CURRENT -25 A (charge) on all cells",
            p.Control.set_load_current(-25_000_000),
            0,
        ),
        (
            "control_temp",
            "Control SET_AMBIENT_TEMPERATURE -20 C",
            p.Control.set_ambient_temperature(-20_000),
            0,
        ),
        (
            "control_inject",
            "Control INJECT_FAULT sensor freeze on cell 9 for 30 s",
            p.Control.inject_fault(p.FaultKind.FROZEN, cell=9, severity_ppm=1_000_000, duration_ms=30_000),
            0,
        ),
        ("control_pause", "Control PAUSE", p.Control(p.ControlCommand.PAUSE), 0),
        (
            "ack",
            "Ack of seq 7 (INJECT_FAULT) with the fault id",
            p.Ack(7, p.ControlCommand.INJECT_FAULT, 12),
            0,
        ),
        (
            "nak",
            "Nak of seq 8: out of range",
            p.Nak(
                8,
                p.ControlCommand.SET_AMBIENT_TEMPERATURE,
                p.ErrorCode.OUT_OF_RANGE,
                "ambient -300 C below -273.15 C",
            ),
            0,
        ),
        # appended (SPEC.md 10): the two hellos order min and max differently; 0xFF is a NAK's command for a
        # CONTROL whose bytes could not be used
        (
            "server_hello_versions",
            "ServerHello speaking majors 1..3: proto_max_major (3) comes first",
            p.ServerHello(proto_max_major=3, proto_min_major=1, proto_minor=2),
            0,
        ),
        (
            "client_hello_versions",
            "ClientHello speaking majors 1..3: proto_min_major (1) comes first",
            p.ClientHello(proto_min_major=1, proto_max_major=3, client_name="v1-to-v3"),
            0,
        ),
        (
            "nak_unparsed_control",
            "Nak of a CONTROL with a bad frame CRC: command 0xFF, not a command code",
            p.Nak(9, p.UNPARSED_COMMAND, p.ErrorCode.BAD_CRC, "frame CRC mismatch"),
            0,
        ),
        # appended (SPEC.md 10): a hello as a server sends one whose full form exceeds HELLO_PAYLOAD_MAX
        (
            "server_hello_bounded",
            f"ServerHello of a 337-point grid and two 255-byte names, as sent: within {p.HELLO_PAYLOAD_MAX} "
            "bytes, grid empty, names cut to 202 bytes at a UTF-8 boundary (payload 511 bytes)",
            p.bounded_hello(
                p.ServerHello(
                    cell_count=96,
                    step_period_us=100_000,
                    server_version="0.1.0",
                    model_id="m" * p.MAX_STRING_BYTES,
                    scenario_id="x" + "\u00b0" * 127,
                    freq_hz=np.logspace(5, -3, 337).astype(np.float32),
                )
            ),
            0,
        ),
    ]


def _raw_frame(
    msg_type: int,
    payload: bytes,
    *,
    seq: int = 0,
    version: int = 1,
    flags: int = 0,
    length: int | None = None,
    crc_xor: int = 0,
) -> bytes:
    head = HEADER_STRUCT.pack(
        p.SYNC, version, msg_type, flags, len(payload) if length is None else length, seq
    )
    head += struct.pack("<H", p.crc16_ccitt_false(head))
    body = head + payload
    return body + struct.pack("<I", p.crc32c(body) ^ crc_xor)


def invalid_streams(frames: dict[str, bytes]) -> list[tuple[str, str, bytes, list[str]]]:
    """(name, description, stream, expected outcome kinds: FRAME or an error kind)."""
    hb = frames["heartbeat"]
    sp = frames["eis_spectrum_61"]
    ctl = frames["control_seek"]
    rng = np.random.default_rng(20261123)
    noise = bytes(rng.integers(0, 256, 256, dtype=np.uint8).tolist()).replace(p.SYNC, b"\x00\x00")
    corrupt_payload = bytearray(sp)
    corrupt_payload[100] ^= 0x01
    corrupt_header = bytearray(hb)
    corrupt_header[6] ^= 0x40  # payload_len: the header CRC catches it
    bye_payload = p.encode_payload(p.Bye(0, "ok"))
    bad_utf8 = bye_payload[:2] + b"\x02\xc3\x28"
    with_sync_inside = p.encode_frame(p.Control(p.ControlCommand.SEEK, value=0x5AE15AE1), seq=3)
    assert p.SYNC in with_sync_inside[2:]
    return [
        ("empty", "No bytes at all", b"", []),
        ("two_frames", "Two frames back to back", hb + ctl, ["FRAME", "FRAME"]),
        (
            "sync_in_payload",
            "A valid frame whose payload contains the sync bytes",
            with_sync_inside,
            ["FRAME"],
        ),
        (
            "garbage_around",
            "Noise before, between and after frames",
            noise[:37] + hb + noise[37:90] + ctl + noise[90:101],
            ["GARBAGE", "FRAME", "GARBAGE", "FRAME", "GARBAGE"],
        ),
        ("noise_only", "256 random bytes with no sync word", noise, ["GARBAGE"]),
        (
            "false_sync",
            "Noise holding a sync word whose header CRC fails, then a frame",
            b"\x11\xe1\x5a\x01\x04\x00\x00" + bytes(12) + hb,
            ["GARBAGE", "FRAME"],
        ),
        ("bad_crc", "Frame CRC wrong (last byte flipped)", hb[:-1] + bytes([hb[-1] ^ 0xFF]), ["BAD_CRC"]),
        (
            "bad_crc_then_frame",
            "Payload bit flip, then a good frame",
            bytes(corrupt_payload) + hb,
            ["BAD_CRC", "FRAME"],
        ),
        (
            "bad_header_crc",
            "Length field corrupted: header CRC fails, the frame's bytes are garbage",
            bytes(corrupt_header) + ctl,
            ["GARBAGE", "FRAME"],
        ),
        ("truncated", "Half a frame, then end of stream", sp[: len(sp) // 2], ["TRUNCATED"]),
        (
            "truncated_then_frame",
            "Half a frame cut off by a new frame: the new frame is not lost",
            sp[: len(sp) // 2] + hb + sp,
            ["BAD_CRC", "FRAME", "FRAME"],
        ),
        (
            "truncated_then_frame_eof",
            "Half a frame, a short frame, end of stream before the first would end",
            sp[:200] + hb,
            ["TRUNCATED", "FRAME"],
        ),
        (
            "oversized",
            "Length 0xFFFF (-1 as int16) over the maximum, then a good frame",
            _raw_frame(p.MsgType.HEARTBEAT, b"", seq=5, length=0xFFFF)[:14] + ctl,
            ["OVERSIZED", "FRAME"],
        ),
        (
            "oversized_4097",
            "Length 4097: one over the maximum",
            _raw_frame(p.MsgType.CELL_STATES, b"", seq=6, length=4097)[:14],
            ["OVERSIZED"],
        ),
        (
            "unknown_type",
            "Valid framing, message type 0x7F",
            _raw_frame(0x7F, b"\x01\x02\x03", seq=9) + hb,
            ["UNKNOWN_MESSAGE_TYPE", "FRAME"],
        ),
        (
            "wrong_version",
            "Valid framing, protocol version 2",
            _raw_frame(p.MsgType.HEARTBEAT, hb[14:-4], seq=10, version=2),
            ["UNSUPPORTED_VERSION"],
        ),
        (
            "short_payload",
            "CONTROL payload of 3 bytes (needs 16)",
            _raw_frame(p.MsgType.CONTROL, b"\x05\x00\x00", seq=11),
            ["MALFORMED_PAYLOAD"],
        ),
        (
            "array_past_end",
            "FAULT_EVENT announcing 5 cells but carrying 1",
            _raw_frame(p.MsgType.FAULT_EVENT, struct.pack("<QIIBBH", 0, 1, 0, 1, 1, 5) + b"\x00\x00", seq=12),
            ["MALFORMED_PAYLOAD"],
        ),
        (
            "bad_utf8",
            "BYE whose message is not UTF-8",
            _raw_frame(p.MsgType.BYE, bad_utf8, seq=13),
            ["MALFORMED_PAYLOAD"],
        ),
        (
            "longer_payload",
            "CONTROL with 4 extra bytes from a newer minor version: accepted, extra ignored",
            _raw_frame(p.MsgType.CONTROL, p.encode_payload(p.Control.seek(1)) + b"\xde\xad\xbe\xef", seq=14),
            ["FRAME"],
        ),
        ("lone_sync_byte", "One first-sync byte at end of stream", b"\xe1", ["GARBAGE"]),
        ("sync_then_eof", "Sync and part of a header, then end of stream", hb[:9], ["TRUNCATED"]),
    ]


def _outcome(stream: bytes) -> list[dict[str, Any]]:
    dec = p.FrameDecoder()
    dec.feed(stream)
    dec.feed_eof()
    out: list[dict[str, Any]] = []
    for item in dec.events():
        if isinstance(item, p.Frame):
            out.append(
                {
                    "frame": {
                        "msg_type": p.MsgType(item.message.MSG_TYPE).name,
                        "seq": item.seq,
                        "flags": item.flags,
                        "version": item.version,
                        "fields": item.message.to_dict(),
                    }
                }
            )
        else:
            out.append(
                {"error": item.kind.name, "nbytes": item.nbytes, "seq": item.seq, "msg_type": item.msg_type}
            )
    return out


def generate() -> dict[str, Any]:
    vectors: list[dict[str, Any]] = []
    frames: dict[str, bytes] = {}
    for seq, (name, description, message, flags) in enumerate(valid_messages()):
        raw = p.encode_frame(message, seq=seq + 1, flags=flags)
        frames[name] = raw
        outcome = _outcome(raw)
        assert [next(iter(o)) for o in outcome] == ["frame"], (name, outcome)
        vectors.append(
            {"name": name, "valid": True, "description": description, "hex": raw.hex(), "outcome": outcome}
        )
    for name, description, stream, expected in invalid_streams(frames):
        outcome = _outcome(stream)
        kinds = ["FRAME" if "frame" in o else o["error"] for o in outcome]
        if kinds != expected:
            raise SystemExit(f"vector {name}: decoder gave {kinds}, expected {expected}")
        vectors.append(
            {
                "name": name,
                "valid": False,
                "description": description,
                "hex": stream.hex(),
                "outcome": outcome,
            }
        )
    return {
        "protocol_version": p.PROTOCOL_VERSION,
        "max_payload_size": p.MAX_PAYLOAD_SIZE,
        "note": "Generated by tools/gen_vectors.py; do not edit. Outcome = decoder output after the whole "
        "stream and end of stream. Floats are float32 values written as exact decimals.",
        "vectors": vectors,
    }


def render() -> str:
    return json.dumps(generate(), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the checked-in vectors are stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python tools/gen_vectors.py", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    n = len(json.loads(text)["vectors"])
    print(f"wrote {n} vectors to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
