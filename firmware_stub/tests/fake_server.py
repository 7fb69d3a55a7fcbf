#!/usr/bin/env python3
"""Stand-in server for testing examples/hil_tcp_client: serves golden-vector frames on 127.0.0.1.

    fake_server.py VECTORS_JSON CLIENT_BINARY

Runs the client against a one-connection server: SERVER_HELLO with authentication, checks the client's
CLIENT_HELLO MAC and SUBSCRIBE, streams states, a spectrum split across writes with noise and a corrupted
frame, waits for the client's heartbeat, sends BYE, and checks that the client exits 0 after printing
the values the Python decoder sees. Every step has a timeout; the whole run takes about 2 s.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import numpy as np

import protocol as p

SECRET = b"bench-secret"
NAME = "bms-ecu-1"


def fail(msg: str) -> NoReturn:
    raise SystemExit(f"fake_server: FAIL: {msg}")


def next_message(conn: socket.socket, dec: p.FrameDecoder, deadline: float) -> p.Frame:
    while True:
        for item in dec.events():
            if isinstance(item, p.Frame):
                return item
            fail(f"client sent a bad frame: {item!r}")
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        data = conn.recv(4096)
        if not data:
            fail("client closed the connection early")
        dec.feed(data)


def serve(conn: socket.socket, vec: dict[str, bytes]) -> None:
    dec = p.FrameDecoder()
    conn.sendall(vec["server_hello"])
    hello = next_message(conn, dec, time.monotonic() + 3)
    msg = hello.message
    if not isinstance(msg, p.ClientHello) or hello.seq != 0:
        fail(f"expected CLIENT_HELLO with seq 0, got {hello!r}")
    if not p.verify_response(SECRET, bytes(range(16)), msg.client_name, msg.auth_response):
        fail("wrong auth_response")
    conn.sendall(p.encode_frame(p.Ack(ack_seq=hello.seq, command=0, result=1), seq=2))
    sub = next_message(conn, dec, time.monotonic() + 3)
    if not isinstance(sub.message, p.Subscribe) or sub.seq != 1:
        fail(f"expected SUBSCRIBE with seq 1, got {sub!r}")
    conn.sendall(p.encode_frame(p.Ack(ack_seq=sub.seq, command=0, result=96), seq=3))
    conn.sendall(vec["cell_states_3"] + b"\x00\xe1\x5a noise" + vec["bad_crc"])
    spectrum = vec["eis_spectrum_61"]
    for i in range(0, len(spectrum), 100):  # split across writes: the client must reassemble it
        conn.sendall(spectrum[i : i + 100])
        time.sleep(0.01)
    conn.sendall(vec["fault_event"] + vec["heartbeat"])
    beat = next_message(conn, dec, time.monotonic() + 3)
    hb = beat.message
    if not isinstance(hb, p.Heartbeat) or beat.seq != 2:
        fail(f"expected HEARTBEAT with seq 2 within 3 s, got {beat!r}")
    if hb.rx_bad_frames != 2:  # the noise run and the BAD_CRC frame
        fail(f"heartbeat rx_bad_frames {hb.rx_bad_frames}, expected 2")
    conn.sendall(vec["bye"])


def check_output(out: str, vec: dict[str, bytes]) -> None:
    """The client's lines against what the Python decoder makes of the same frames."""

    def decode(raw: bytes) -> p.Message:
        d = p.FrameDecoder()
        d.feed(raw)
        frame = d.next_frame()
        assert isinstance(frame, p.Frame)
        return frame.message

    lines = out.splitlines()
    states = decode(vec["cell_states_3"])
    assert isinstance(states, p.CellStates)
    line = next((x for x in lines if x.startswith("CELL_STATES")), None)
    if line is None:
        fail("no CELL_STATES line")
    for rec in states.records:
        want = (
            f"cell {rec['cell']} {rec['voltage_uV']} uV {rec['current_uA']} uA "
            f"{rec['temperature_mdegC']} mdegC"
        )
        if want not in line:
            fail(f"CELL_STATES line lacks {want!r}: {line}")
    spectrum = decode(vec["eis_spectrum_61"])
    assert isinstance(spectrum, p.EisSpectrum)
    line = next((x for x in lines if x.startswith("EIS_SPECTRUM")), None)
    if line is None:
        fail("no EIS_SPECTRUM line")
    points = [part.split() for part in line.split(" | ")[1:]]
    got = np.array([[float(q[0]), float(q[2]), float(q[3])] for q in points], dtype=np.float32)
    want_arr = np.stack([spectrum.freq_hz, spectrum.z_re_ohm, spectrum.z_im_ohm], axis=1)
    if got.shape != want_arr.shape or not np.array_equal(got, want_arr):
        fail("EIS_SPECTRUM values differ from the Python decoder's")
    for needle in (
        "decoder: GARBAGE, 9 bytes",
        "decoder: BAD_CRC, 70 bytes",
        "FAULT_EVENT id 9",
        "BYE reason 26",
    ):
        if not any(needle in x for x in lines):
            fail(f"no line with {needle!r}")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)  # noqa: T201
        return 2
    doc = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    vec = {v["name"]: bytes.fromhex(v["hex"]) for v in doc["vectors"]}
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(5)
        port = srv.getsockname()[1]
        client = subprocess.Popen(
            [sys.argv[2], "127.0.0.1", str(port), "--secret", SECRET.decode(), "--name", NAME],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = srv.accept()
            with conn:
                serve(conn, vec)
                out, _ = client.communicate(timeout=5)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    if client.returncode != 0:
        fail(f"client exited with {client.returncode}")
    check_output(out, vec)
    print(f"fake_server: TCP client OK ({len(out.splitlines())} lines printed)")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
