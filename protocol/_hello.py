"""SERVER_HELLO within ``HELLO_PAYLOAD_MAX`` bytes (SPEC.md section 4, SERVER_HELLO): the rule every server
transport applies to the hello it sends."""

from __future__ import annotations

import dataclasses

import numpy as np

from ._codec import encode_payload, fixed_payload_size
from ._constants import HELLO_PAYLOAD_MAX, MAX_STRING_BYTES, MsgType
from ._messages import ServerHello


def truncate_utf8(text: str, max_bytes: int = MAX_STRING_BYTES) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


def bounded_hello(hello: ServerHello, limit: int = HELLO_PAYLOAD_MAX) -> ServerHello:
    """``hello`` as a server may send it: unchanged if its payload fits ``limit`` bytes; else with an empty
    frequency grid (each EIS_SPECTRUM carries its own frequencies); if still too long, each of the three
    strings cut (at a UTF-8 character boundary) to at most the same byte count, the largest that fits."""
    if len(encode_payload(hello)) <= limit:
        return hello
    hello = dataclasses.replace(hello, freq_hz=np.zeros(0, np.float32))
    room = limit - fixed_payload_size(MsgType.SERVER_HELLO)  # bytes left for the strings' text
    strings = (hello.server_version, hello.model_id, hello.scenario_id)
    lengths = [len(s.encode("utf-8")) for s in strings]
    if sum(lengths) <= room:
        return hello
    cap = max(c for c in range(room + 1) if sum(min(n, c) for n in lengths) <= room)
    version, model, scenario = (truncate_utf8(s, cap) for s in strings)
    return dataclasses.replace(hello, server_version=version, model_id=model, scenario_id=scenario)
