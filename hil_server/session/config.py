"""What a server is told at start: where it listens, how fast it streams, and its limits per client."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7700
    speed: float = 1.0
    secret: bytes | None = None
    max_clients: int = 64
    queue_frames: int = 1024
    """Telemetry frames queued per client before the oldest are dropped."""
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 5.0
    handshake_timeout_s: float = 5.0
    stuck_s: float = 10.0
    """A client whose socket accepts nothing for this long is disconnected (SLOW_CONSUMER)."""
    control_rate_per_s: float = 50.0
    max_seek_ahead_s: float = 3600.0
    """A SEEK further ahead is refused: the simulation runs to the target inside the event loop, so a jump
    of days would stall every client (seeking back restarts from a checkpoint and is bounded)."""
    max_seek_stall_s: float = 5.0
    """A SEEK whose work (steps to simulate x the measured cost of a step) would take longer is refused:
    no client gets a frame while it runs."""
