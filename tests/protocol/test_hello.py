"""SERVER_HELLO within HELLO_PAYLOAD_MAX (SPEC.md section 4, SERVER_HELLO): what ``bounded_hello`` sends."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import protocol as p

GRID = np.logspace(5, -3, 337).astype(np.float32)


def _size(hello: p.ServerHello) -> int:
    return len(p.encode_payload(hello))


def test_a_hello_that_fits_is_sent_unchanged() -> None:
    hello = p.ServerHello(server_version="0.1.0", model_id="pinn", scenario_id="us06", freq_hz=GRID[:61])
    assert _size(hello) <= p.HELLO_PAYLOAD_MAX
    assert p.bounded_hello(hello) is hello


def test_a_long_grid_is_sent_empty_and_the_strings_kept() -> None:
    hello = p.ServerHello(
        cell_count=96, server_version="0.1.0", model_id="pinn", scenario_id="s", freq_hz=GRID
    )
    assert _size(hello) == p.fixed_payload_size(p.MsgType.SERVER_HELLO) + 5 + 4 + 1 + 4 * 337
    sent = p.bounded_hello(hello)
    assert sent.freq_hz.size == 0
    assert (sent.server_version, sent.model_id, sent.scenario_id, sent.cell_count) == (
        "0.1.0",
        "pinn",
        "s",
        96,
    )


def test_long_strings_are_cut_to_one_length_at_a_character_boundary() -> None:
    hello = p.ServerHello(server_version="0.1.0", model_id="m" * 255, scenario_id="x" + "\u00b0" * 127)
    sent = p.bounded_hello(hello)
    assert _size(sent) == 511  # the cap is 202 bytes; the scenario's 202nd byte would split a character
    assert sent.server_version == "0.1.0"
    assert sent.model_id == "m" * 202
    assert sent.scenario_id == "x" + "\u00b0" * 100


def test_truncate_utf8() -> None:
    assert p.truncate_utf8("abc", 2) == "ab"
    assert p.truncate_utf8("a\u00b0", 2) == "a"
    assert p.truncate_utf8("\U0001f50b" * 100) == "\U0001f50b" * 63  # 252 of 255 bytes: a whole character
    assert p.truncate_utf8("short") == "short"


_TEXT = st.text(max_size=255).map(p.truncate_utf8)


@given(
    server_version=_TEXT,
    model_id=_TEXT,
    scenario_id=_TEXT,
    n_freq=st.integers(0, 337),
    limit=st.integers(p.fixed_payload_size(p.MsgType.SERVER_HELLO), 4096),
)
def test_every_hello_is_bounded_and_keeps_what_fits(
    server_version: str, model_id: str, scenario_id: str, n_freq: int, limit: int
) -> None:
    hello = p.ServerHello(
        server_version=server_version, model_id=model_id, scenario_id=scenario_id, freq_hz=GRID[:n_freq]
    )
    sent = p.bounded_hello(hello, limit)
    assert _size(sent) <= limit
    if _size(hello) <= limit:
        assert sent is hello
        return
    assert sent.freq_hz.size == 0
    strings = ("server_version", "model_id", "scenario_id")
    for name in strings:
        assert getattr(hello, name).startswith(getattr(sent, name))
    assert dataclasses.replace(sent, server_version="", model_id="", scenario_id="") == dataclasses.replace(
        hello, server_version="", model_id="", scenario_id="", freq_hz=sent.freq_hz
    )


def test_the_bound_is_the_same_in_spec_md_and_the_c_client() -> None:
    root = Path(__file__).resolve().parents[2]
    spec = (root / "protocol" / "SPEC.md").read_text(encoding="utf-8")
    assert f"payload exceeds **{p.HELLO_PAYLOAD_MAX} bytes** (`HELLO_PAYLOAD_MAX`" in spec
    header = (root / "firmware_stub" / "hil_client.h").read_text(encoding="utf-8")
    assert re.search(rf"^#define HIL_HELLO_PAYLOAD_MAX {p.HELLO_PAYLOAD_MAX} ", header, flags=re.M)
