"""The eis-hil command through its real entry point."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import structlog

from hil_server.cli import main
from hil_server.cli._logging import configure_logging

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "vectors.json").read_text(encoding="utf-8")
)


def _vector_hex(name: str) -> str:
    return str(next(v["hex"] for v in VECTORS["vectors"] if v["name"] == name))


def test_demo_delivers_every_intact_frame(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--protocol-only", "--seconds", "12"]) == 0
    out = capsys.readouterr().out
    assert "intact frames lost: 0" in out
    assert "BAD_CRC" in out
    assert "EIS_SPECTRUM" in out


def test_decode_hex_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "capture.txt"
    text = _vector_hex("two_frames")
    capture.write_text(" ".join(text[i : i + 2] for i in range(0, len(text), 2)) + "\n")
    assert main(["decode", "--hex", str(capture)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[1] == "HEARTBEAT"
    assert out[1].split()[1] == "CONTROL"
    assert out[-1].endswith("2 frames, 0 errors {}")


def test_decode_binary_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "capture.bin"
    capture.write_bytes(bytes.fromhex(_vector_hex("bad_crc_then_frame")))
    assert main(["decode", "--json", str(capture)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "BAD_CRC" in lines[0]
    assert json.loads(lines[1])["type"] == "HEARTBEAT"


def test_decode_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", str(tmp_path / "nope.bin")]) == 2
    assert "nope.bin" in capsys.readouterr().err


def test_decode_odd_hex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "odd.txt"
    capture.write_text("e15")
    assert main(["decode", "--hex", str(capture)]) == 2
    assert "odd number of hex digits" in capsys.readouterr().err


def test_logging_follows_a_replaced_stderr() -> None:
    """configure_logging must not keep the stderr object of its call: streams get replaced and closed."""
    first = io.StringIO()
    sys.stderr = first
    configure_logging()
    first.close()
    sys.stderr = second = io.StringIO()
    try:
        structlog.get_logger("t").info("after replacement", n=1)
    finally:
        sys.stderr = sys.__stderr__
    assert "after replacement" in second.getvalue()
