"""``eis-hil export FILE --pcap OUT.pcapng``: a capture as a packet capture that Wireshark opens.

A capture (CAPTURE.md) holds frames, not packets. This module puts them back on a wire: one TCP
connection over IPv4 on the loopback interface (Ethernet framing with zero MAC addresses, as Linux
captures ``lo``), client 127.0.0.1:49152, server 127.0.0.1 on the port the recording was made against
(metadata ``server``; else the server's default, 7700). It opens with the three-way handshake and ends
with both FINs, and sequence and acknowledgement numbers are those of a real stream, so Wireshark's TCP
analysis and reassembly work on it as on a live capture, and ``tools/wireshark/eis_hil.lua`` decodes it.

Frames recorded at the same instant in the same direction are sent in one segment, like a socket's send
buffer, and a segment carries at most ``mss`` bytes (default 1460, an Ethernet link), so frames straddle
segments as they do on a real network and the dissector's reassembly is exercised. Each packet is stamped
``start_unix_us + t_us`` (metadata ``start_unix_us``; the Unix epoch when it is missing).

Direction: the side that sent SERVER_HELLO is the server. A client recording (``eis-hil record``) marks
it RX, a server recording (``eis-hil serve --record``) TX; a capture without one is taken for a client's.

pcapng is written by hand (section header, one interface, enhanced packet blocks: draft-ietf-opsawg-pcapng):
a dozen lines, no dependency.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import protocol as p

from .export import warn_truncated, warnings_suffix
from .format import DIR_RX, DIR_TX, DamagedSpan, Record, iter_records, open_capture

DEFAULT_PORT = 7700
"""The server's default TCP port, and the dissector's."""
CLIENT_PORT = 49152
LOOPBACK = bytes([127, 0, 0, 1])
DEFAULT_MSS = 1460
LINKTYPE_ETHERNET = 1

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT, _SHB_USERAPPL, _IF_NAME, _IF_TSRESOL = 0, 1, 4, 2, 9
_TCP_FIN, _TCP_SYN, _TCP_PSH, _TCP_ACK = 0x01, 0x02, 0x08, 0x10


@dataclasses.dataclass
class PcapResult:
    path: Path
    records: int = 0
    frames_to_client: int = 0
    frames_to_server: int = 0
    packets: int = 0
    server_port: int = DEFAULT_PORT
    truncated_bytes: int = 0
    damage: list[DamagedSpan] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"wrote {self.records} frames ({self.frames_to_client} server->client, {self.frames_to_server} "
            f"client->server) as {self.packets} TCP packets to {self.path}, server port {self.server_port}; "
            f"open it in Wireshark with tools/wireshark/eis_hil.lua installed"
        )
        return text + warnings_suffix(0, self.truncated_bytes, self.damage)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PcapngWriter:
    """Ethernet/IPv4/TCP packets of one loopback connection into a pcapng file (already opened)."""

    def __init__(self, out: IO[bytes], *, server_port: int, comment: str, mss: int = DEFAULT_MSS) -> None:
        from hil_server import __version__

        self.out = out
        self.server_port = server_port
        self.client_port = CLIENT_PORT
        self.mss = mss
        self.packets = 0
        self._ip_id = 0
        self._seq = {True: 0x1000_0000, False: 0x2000_0000}  # next seq of each side, keyed "from server"
        shb_opts = _option(_SHB_USERAPPL, f"eis-hil {__version__} export --pcap".encode()) + _option(
            _OPT_COMMENT, comment.encode()
        )
        out.write(
            _block(
                _SHB,
                struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + shb_opts + _option(_OPT_END, b""),
            )
        )
        idb_opts = _option(_IF_NAME, b"lo") + _option(_IF_TSRESOL, b"\x06") + _option(_OPT_END, b"")
        out.write(_block(_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 262144) + idb_opts))

    def _packet(self, t_unix_us: int, from_server: bool, flags: int, payload: bytes = b"") -> None:
        client, server = self.client_port, self.server_port
        sport, dport = (server, client) if from_server else (client, server)
        seq = self._seq[from_server]
        ack = self._seq[not from_server] if flags & _TCP_ACK else 0
        options = struct.pack("!BBH", 2, 4, self.mss) if flags & _TCP_SYN else b""
        offset_words = (20 + len(options)) // 4
        tcp = (
            struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset_words << 4, flags, 65535, 0, 0) + options
        )
        pseudo = LOOPBACK + LOOPBACK + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
        csum = _checksum(pseudo + tcp + payload)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(tcp) + len(payload),
            self._ip_id,
            0x4000,
            64,
            6,
            0,
            LOOPBACK,
            LOOPBACK,
        )
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        data = bytes(12) + b"\x08\x00" + ip + tcp + payload
        ts = max(0, t_unix_us)
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
        self.out.write(_block(_EPB, body + data + b"\0" * (-len(data) % 4)))
        self._seq[from_server] = (
            seq + len(payload) + (1 if flags & (_TCP_SYN | _TCP_FIN) else 0)
        ) & 0xFFFFFFFF
        self.packets += 1

    def open_connection(self, t_unix_us: int, client_port: int = CLIENT_PORT) -> None:
        """Handshake of a new connection from ``client_port``; later packets belong to it."""
        self.client_port = client_port
        self._seq = {True: 0x1000_0000, False: 0x2000_0000}
        self._packet(t_unix_us, False, _TCP_SYN)
        self._packet(t_unix_us, True, _TCP_SYN | _TCP_ACK)
        self._packet(t_unix_us, False, _TCP_ACK)

    def send(self, t_unix_us: int, from_server: bool, data: bytes) -> None:
        """Bytes one side wrote at one instant: as many segments of at most ``mss`` bytes as they need."""
        for k in range(0, len(data), self.mss):
            self._packet(t_unix_us, from_server, _TCP_ACK | _TCP_PSH, data[k : k + self.mss])

    def close_connection(self, t_unix_us: int) -> None:
        self._packet(t_unix_us, False, _TCP_FIN | _TCP_ACK)
        self._packet(t_unix_us, True, _TCP_FIN | _TCP_ACK)
        self._packet(t_unix_us, False, _TCP_ACK)


def _server_port(meta: dict[str, object]) -> int:
    server = meta.get("server")
    if isinstance(server, str) and ":" in server:
        port = server.rsplit(":", 1)[1]
        if port.isdigit() and 0 < int(port) < 65536:
            return int(port)
    return DEFAULT_PORT


def _bursts(records: Iterator[Record], server_dir: int | None) -> Iterator[tuple[int, bool, bytes, int]]:
    """(t_us, from_server, bytes, frames): consecutive frames of one side at one instant, joined."""
    pending: list[bytes] = []
    key: tuple[int, bool] | None = None
    for record in records:
        if server_dir is None:  # the first SERVER_HELLO tells which recorded direction is the server's
            is_hello = len(record.frame) > 3 and record.frame[3] == p.MsgType.SERVER_HELLO
            server_dir = record.direction if is_hello else DIR_RX
        this = (record.t_us, record.direction == server_dir)
        if key is not None and this != key:
            yield key[0], key[1], b"".join(pending), len(pending)
            pending = []
        key = this
        pending.append(record.frame)
    if key is not None and pending:
        yield key[0], key[1], b"".join(pending), len(pending)


def export_pcap(
    capture_path: Path, out_path: Path, *, mss: int = DEFAULT_MSS, force: bool = True
) -> PcapResult:
    """Write the capture at ``capture_path`` as pcapng to ``out_path``. The capture is opened (and refused
    if it is not one) before the output is created; a truncated capture exports what is complete.
    Raises CaptureError (input) or OSError (output)."""
    if not 64 <= mss <= 65495:
        raise ValueError(f"mss {mss} out of range 64..65495")
    capture = open_capture(capture_path)
    meta = capture.meta
    result = PcapResult(out_path, server_port=_server_port(meta))
    start = meta.get("start_unix_us")
    start_us = start if isinstance(start, int) else 0
    comment = f"eis-hil capture {capture_path.name}"
    if "scenario_id" in meta:
        comment += f", scenario {meta['scenario_id']}"
    if "server" in meta:
        comment += f", recorded from {meta['server']}"
    with out_path.open("wb" if force else "xb") as out:
        writer = PcapngWriter(out, server_port=result.server_port, comment=comment, mss=mss)
        last = start_us
        opened = False
        for t_us, from_server, data, frames in _bursts(iter_records(capture), None):
            t = start_us + t_us
            if not opened:
                writer.open_connection(t)
                opened = True
            writer.send(t, from_server, data)
            last = max(last, t)
            result.records += frames
            if from_server:
                result.frames_to_client += frames
            else:
                result.frames_to_server += frames
        if opened:
            writer.close_connection(last)
        result.packets = writer.packets
    result.truncated_bytes = capture.truncated_bytes
    result.damage = capture.skipped
    warn_truncated(capture, capture_path)
    return result


__all__ = ["DEFAULT_MSS", "DEFAULT_PORT", "DIR_RX", "DIR_TX", "PcapResult", "PcapngWriter", "export_pcap"]
