"""The recommended metadata of a capture (CAPTURE.md section 4), from a SERVER_HELLO."""

from __future__ import annotations

import time
from typing import Any


def hello_meta(hello: Any, *, start_unix_us: int | None = None, **extra: Any) -> dict[str, Any]:
    """The recommended metadata of a capture (CAPTURE.md section 4) from a ``protocol.ServerHello``, plus
    ``extra`` keys (server address, recorder, subscription...). ``start_unix_us``: the wall-clock time of
    ``t_us`` = 0 (default: now). Tool version and start time are added."""
    from hil_server import __version__

    now_us = time.time_ns() // 1000 if start_unix_us is None else start_unix_us
    meta: dict[str, Any] = {
        "tool_version": __version__,
        "start_unix_us": now_us,
        "start_wall_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_us / 1e6))
        + f".{now_us % 1_000_000:06d}Z",
        "scenario_id": hello.scenario_id,
        "scenario_hash": bytes(hello.scenario_hash).hex(),
        "model_id": hello.model_id,
        "model_hash": bytes(hello.model_hash).hex(),
        "server_version": hello.server_version,
        "seed": int(hello.seed),
        "cell_count": int(hello.cell_count),
        "step_period_us": int(hello.step_period_us),
        "freq_hz": [float(f) for f in hello.freq_hz],
        "protocol": {
            "max_major": int(hello.proto_max_major),
            "min_major": int(hello.proto_min_major),
            "minor": int(hello.proto_minor),
        },
        "auth_required": bool(hello.auth_required),
    }
    meta.update(extra)
    return meta


__all__ = ["hello_meta"]
