"""Hypothesis strategies for every message type, derived from the codec's plan of the schema.

Deriving them from the same declarations as the codec means a new field is covered without editing tests.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from hypothesis import strategies as st

import protocol as p
from protocol._codec import CODECS, _Array, _Fixed, _String

_INT_RANGES = {
    "B": (0, 2**8 - 1),
    "H": (0, 2**16 - 1),
    "I": (0, 2**32 - 1),
    "L": (0, 2**32 - 1),
    "Q": (0, 2**64 - 1),
    "b": (-(2**7), 2**7 - 1),
    "h": (-(2**15), 2**15 - 1),
    "i": (-(2**31), 2**31 - 1),
    "l": (-(2**31), 2**31 - 1),
    "q": (-(2**63), 2**63 - 1),
}


def _fixed_values(step: _Fixed) -> list[tuple[str, st.SearchStrategy[Any]]]:
    out: list[tuple[str, st.SearchStrategy[Any]]] = []
    codes = [c for c in _split_format(step.st.format) if not c.endswith("x")]
    count_slots = {i for i, _ in step.counts}
    for i, (name, code) in enumerate(zip(step.names, codes, strict=True)):
        if i in count_slots:
            continue
        if code.endswith("s"):
            n = int(code[:-1])
            out.append((name, st.binary(min_size=n, max_size=n)))
        elif code == "f":
            out.append((name, st.floats(width=32, allow_nan=False)))
        else:
            lo, hi = _INT_RANGES[code]
            out.append((name, st.integers(lo, hi)))
    return out


def _split_format(fmt: str) -> list[str]:
    """'<QI2s4x' -> ['Q', 'I', '2s', '4x'] (the codec only puts counts on 's' and 'x')."""
    return [num + code for num, code in re.findall(r"(\d*)([a-zA-Z?])", fmt)]


_utf8_255 = st.text(max_size=80).filter(lambda s: len(s.encode("utf-8")) <= 255)


def message_strategy(msg_type: int, max_count: int = 40) -> st.SearchStrategy[p.Message]:
    codec = CODECS[msg_type]
    parts: dict[str, st.SearchStrategy[Any]] = {}
    shared_counts: dict[str, st.SearchStrategy[int]] = {}
    for step in codec.steps:
        if isinstance(step, _Fixed):
            parts.update(_fixed_values(step))
        elif isinstance(step, _String):
            parts[step.name] = _utf8_255
        else:
            shared_counts[step.count_name] = st.integers(0, max_count)
    arrays = [s for s in codec.steps if isinstance(s, _Array)]

    @st.composite
    def build(draw: st.DrawFn) -> p.Message:
        kwargs = {name: draw(strategy) for name, strategy in parts.items()}
        for step in arrays:
            count = draw(shared_counts[step.count_name])
            for name in step.names:
                size = count * step.dtype.itemsize
                kwargs[name] = np.frombuffer(draw(st.binary(min_size=size, max_size=size)), dtype=step.dtype)
        return codec.cls(**kwargs)

    return build()


any_message = st.sampled_from(sorted(CODECS)).flatmap(message_strategy)

__all__ = ["any_message", "message_strategy"]
