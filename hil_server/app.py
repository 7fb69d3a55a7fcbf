"""The composition root: where the production objects are built and wired together.

``build_engine`` makes the simulation engine of a scenario (model loaded, cells placed), ``start_server``
wraps it in a stream source and starts the server on it (listening on TCP, or not: ``serial-bridge
--scenario`` attaches its serial port as the server's transport), with an optional recording. The command
line (``eis-hil serve``, ``demo``, the bridges' ``--scenario``) and ``hil_server.testing`` call these;
nothing below this module builds a server.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hil_server import __version__
from hil_server.model.store import BUNDLED_MODEL_DIR
from hil_server.sim.run import build_engine
from hil_server.stream.source import EngineSource
from hil_server.stream.source import Identity as ServerIdentity
from hil_server.transport.tcp import HilServer, ServerConfig


def identity_for(scenario_path: Any, scenario_name: str, model_sha256: str, model_id: str) -> ServerIdentity:
    from hil_server.scenario import scenario_hash

    return ServerIdentity(model_id, model_sha256, scenario_name, scenario_hash(scenario_path))


async def start_server(
    scenario: str | Path,
    *,
    model_dir: Path = BUNDLED_MODEL_DIR,
    seed: int | None = None,
    record: str | Path | None = None,
    listen: bool = True,
    **config: Any,
) -> HilServer:
    """A started server on ``scenario``; ``config``: ServerConfig fields (default: ephemeral port, speed 0).
    ``record``: also write the whole stream to this capture file. ``listen`` False: no TCP port; another
    transport attaches its sessions (the serial port of ``serial-bridge --scenario``)."""
    engine, sc, meta = build_engine(Path(scenario), model_dir, seed)
    cfg = dataclasses.replace(ServerConfig(port=0, speed=0.0), **config)
    identity = identity_for(Path(scenario), sc.name, meta.model_sha256, "eis-pinn")
    source = EngineSource(engine, identity, __version__)
    recorder = None
    if record is not None:
        from hil_server.capture.meta import hello_meta
        from hil_server.capture.writer import CaptureWriter

        info = hello_meta(source.hello(), recorder="eis-hil serve --record", scenario_path=str(scenario))
        recorder = CaptureWriter(record, info)
    server = HilServer(source, config=cfg, recorder=recorder)
    try:
        await server.start(listen=listen)
    except BaseException:  # e.g. the port is taken: no half-made capture left to block the next try
        if recorder is not None:
            recorder.close()
            recorder.path.unlink(missing_ok=True)
        raise
    return server


__all__ = ["build_engine", "identity_for", "start_server"]
