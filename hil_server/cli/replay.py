"""``eis-hil replay``: serve a recorded capture with its original timing."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

import protocol as p
from hil_server.cli._common import add_listen_args
from hil_server.stream.replay_source import ReplayError, ReplaySource

log = structlog.get_logger(__name__)


def add_arguments(rp: argparse.ArgumentParser) -> None:
    rp.add_argument("file", help="capture file (eis-hil record, or serve --record)")
    add_listen_args(rp, "1 = original timing, N = N times faster, 0 = as fast as the slowest client reads")
    rp.add_argument("--loop", type=int, default=1, help="play it N times (0: forever)")
    rp.add_argument(
        "--skip", type=float, default=0.0, metavar="SECONDS", help="start this far into the capture"
    )
    rp.add_argument("--max-gap", type=float, metavar="SECONDS", help="shorten silences longer than this")
    rp.add_argument("--paused", action="store_true", help="start paused: a client sends RESUME (or START)")
    rp.add_argument(
        "--salvage",
        action="store_true",
        help="serve a damaged capture (records lost in the middle, CAPTURE.md 6.2) instead of exiting 1",
    )


def run(args: argparse.Namespace) -> int:
    from hil_server import __version__
    from hil_server.capture.format import CaptureError
    from hil_server.cli._common import read_secret
    from hil_server.cli._loop import run
    from hil_server.cli.export import damage_error
    from hil_server.cli.serve import serve_until_stopped
    from hil_server.transport.tcp import HilServer, ServerConfig

    async def go() -> int:
        source = ReplaySource(
            args.file, loop=args.loop, skip_s=args.skip, max_gap_s=args.max_gap, server_version=__version__
        )
        damage = source.capture.skipped
        if damage and not args.salvage:
            log.error("replay", error=damage_error("replay", args.file, damage))
            return 1
        config = ServerConfig(
            host=args.host,
            port=args.port,
            speed=args.speed,
            secret=read_secret(args),
            max_clients=args.max_clients,
        )
        server = HilServer(source, config=config)
        if args.paused:
            server.sim_state = p.SimState.PAUSED
        await server.start()
        banner = (
            f"eis-hil replaying {Path(args.file).name} ({source.duration_us / 1e6:.1f} s, "
            f"{'forever' if args.loop == 0 else f'{args.loop} time(s)'}) on {args.host}:{server.port} "
            f"at {args.speed:g}x{', paused' if args.paused else ''}; Ctrl-C stops\n"
            + (
                ""
                if args.paused
                else "playing from now, whether or not a client is connected (--paused waits for a "
                "client's RESUME or START)\n"
            )
        )
        return await serve_until_stopped(server, banner)

    try:
        return run(go(), args.event_loop)
    except (ReplayError, CaptureError, ValueError, OSError) as exc:
        log.error("replay", error=str(exc))
        return 2
    except KeyboardInterrupt:
        return 0
