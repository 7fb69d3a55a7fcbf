"""Coverage-guided fuzzing of the server's input path (atheris), and the harness the Hypothesis tests share.

    .venv/bin/python tests/fuzz_server_input.py -max_total_time=10        # exits 0 when nothing broke
    .venv/bin/python tests/fuzz_server_input.py -runs=2000 corpus_dir/    # libFuzzer options as usual

The server runs in this process (``hil_server.testing.start_server``, on loopback), so atheris sees the
coverage of the server's decoder, handshake, subscription and control code. Each input is one connection:
its first byte picks how far the harness takes the session before the hostile bytes (none, CLIENT_HELLO,
CLIENT_HELLO and SUBSCRIBE); the rest is written as it is. The server's public interfaces are the only
contact (a TCP socket and ``HilServer``'s ``sessions`` and ``rx_bad``), because ``transport/tcp.py`` is being
refactored; a loopback connection costs about a millisecond per input.

Invariants checked for every input:

- nothing escapes: no exception reaches the event loop's exception handler (a crashed session task or
  callback), and the server's own tasks (pacing, heartbeats) are still running;
- the session still answers: after the input, ``MAX_FRAME_SIZE`` zero bytes flush any half frame, then a
  CONTROL probe with a known ``seq`` must get its NAK (NOT_ALLOWED_IN_STATE before the handshake), unless
  the server closed the session with a BYE, whose reason must be a known ``ErrorCode``;
- counters agree: the server's ``rx_bad`` grew by exactly the number of errors a reference
  ``FrameDecoder`` reports for the same bytes (when the session stayed open: after BYE the server discards);
- nothing leaks: after the client closes, the server's session table is empty again.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run as a script, this file's folder comes first on sys.path, where tests/protocol/ (the protocol's
    # tests) would shadow the protocol package: the repository root goes first instead.
    sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
    # Coverage-guided: atheris instruments the server's modules as they are first imported, so they must be
    # imported here, before anything else pulls them in uninstrumented.
    import atheris

    with atheris.instrument_imports(include=["protocol", "hil_server"]):
        import hil_server.client.client
        import hil_server.testing  # noqa: F401
        import protocol  # noqa: F401

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

import protocol as p

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "us06_25c.yaml"
PROBE_SEQ = 0xFFFF_FFF0
"""The seq of the CONTROL probe sent after every input (unknown command 0: a NAK without side effects)."""
REPLY_TIMEOUT_S = 5.0

MODE_RAW = 0
MODE_HELLO = 1
MODE_SUBSCRIBED = 2


class InvariantError(AssertionError):
    """The server broke one of the invariants in the module docstring for an input."""


@dataclasses.dataclass
class Outcome:
    mode: int
    bye: p.Bye | None
    """The server's BYE when it closed the session (version mismatch, a BYE frame in the input, ...)."""
    probe_reply: p.Message | None
    rx_bad_delta: int
    expected_bad: int
    frames: list[p.Message]


def reference_decode(data: bytes) -> tuple[int, bool]:
    """What a conforming receiver makes of ``data``: how many bad-input events it reports, and whether the
    bytes hold a valid BYE frame (the client closing, which the server answers by closing, not with BYE)."""
    decoder = p.FrameDecoder()
    decoder.feed(data)
    items = list(decoder.events())
    errors = sum(isinstance(item, p.RemoteProtocolError) for item in items)
    bye = any(isinstance(item, p.Frame) and isinstance(item.message, p.Bye) for item in items)
    return errors, bye


class Harness:
    """A server on loopback in its own event loop; ``run(data)`` plays one input against it."""

    def __init__(self, scenario: Path = SCENARIO, **config: Any) -> None:
        from hil_server.testing import start_server

        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        cfg: dict[str, Any] = {"speed": 1.0, "heartbeat_s": 0.5, "peer_timeout_s": 30.0}
        cfg.update(config)
        self.server = self.loop.run_until_complete(start_server(scenario, **cfg))
        self.inputs = 0
        self.alive_every = 50

    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.server.stop())
            self.loop.close()

    def run(self, data: bytes) -> Outcome:
        """Play one input (first byte: mode, rest: bytes sent); raise InvariantError if the server broke."""
        self.inputs += 1
        outcome = self.loop.run_until_complete(asyncio.wait_for(self._one(data), 20.0))
        self._check_loop()
        if self.inputs % self.alive_every == 0:
            self.check_alive()
        return outcome

    def _check_loop(self) -> None:
        if self.loop_errors:
            context = self.loop_errors[0]
            raise InvariantError(f"exception escaped to the event loop: {context.get('message')}: {context}")

    def check_alive(self) -> None:
        """The simulation still steps: a fresh client gets CELL_STATES (after undoing what inputs did to the
        shared simulation: PAUSE, STOP, a speed of 0, the end of the scenario)."""
        self.loop.run_until_complete(asyncio.wait_for(self._alive(), 20.0))
        self._check_loop()

    async def _alive(self) -> None:
        from hil_server.client.client import HilClient

        c = p.ControlCommand
        fixer = await HilClient.connect("127.0.0.1", self.server.port, name="liveness-fixer")
        try:
            state = self.server.sim_state
            if state is p.SimState.PAUSED:
                await fixer.control(p.Control(c.RESUME))
            elif state is not p.SimState.RUNNING:
                await fixer.control(p.Control(c.START))
            await fixer.control(p.Control(c.SET_SPEED, value=100_000_000))
            # Inputs may carry valid INJECT_FAULT frames (the fuzzer solves CRC comparisons): physics and
            # measurement faults act on every client: clear them before checking continuity.
            await fixer.control(p.Control(c.CLEAR_FAULT, aux=0))
        finally:
            await fixer.close()
        client = await HilClient.connect("127.0.0.1", self.server.port, name="liveness")
        try:
            await client.subscribe(mask=p.SubscribeMask.CELL_STATES)
            for _ in range(20):
                try:
                    await client.next_message(p.CellStates, timeout=REPLY_TIMEOUT_S)
                except TimeoutError:
                    raise InvariantError(
                        f"no CELL_STATES within {REPLY_TIMEOUT_S} s: the simulation loop stopped "
                        f"(sim_state {self.server.sim_state.name}, speed {self.server.speed})"
                    ) from None
            if client.gaps or client.errors:
                raise InvariantError(
                    f"liveness client saw {client.gaps} gaps, {len(client.errors)} bad frames"
                )
        finally:
            await client.close()
        await self._until_no_sessions()

    async def _one(self, data: bytes) -> Outcome:
        mode = data[0] % 3 if data else MODE_RAW
        body = data[1:]
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        decoder = p.FrameDecoder()
        frames: list[p.Message] = []
        try:
            return await self._session(mode, body, reader, writer, decoder, frames)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            await self._until_no_sessions()

    async def _session(
        self,
        mode: int,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: p.FrameDecoder,
        frames: list[p.Message],
    ) -> Outcome:
        async def next_message() -> p.Message | None:
            """The next frame's message from the server; None at end of stream."""
            while True:
                for item in decoder.events():
                    if isinstance(item, p.RemoteProtocolError):
                        raise InvariantError(f"the server sent a bad frame: {item}")
                    frames.append(item.message)
                    return item.message
                chunk = await asyncio.wait_for(reader.read(65536), REPLY_TIMEOUT_S)
                if not chunk:
                    return None
                decoder.feed(chunk)

        async def expect(kind: type[p.Message]) -> p.Message:
            while True:
                msg = await next_message()
                if msg is None:
                    raise InvariantError(f"connection closed while waiting for {kind.__name__}")
                if isinstance(msg, kind):
                    return msg

        encoder = p.FrameEncoder()
        await expect(p.ServerHello)
        if mode >= MODE_HELLO:
            writer.write(encoder.encode(p.ClientHello(client_name="fuzz")))
            await expect(p.Ack)
        if mode >= MODE_SUBSCRIBED:
            writer.write(encoder.encode(p.Subscribe(msg_mask=p.SubscribeMask.HEARTBEAT)))
            await expect(p.Ack)
        # The hostile bytes, then zeros that complete (and reject) any frame they left half-way, then the
        # probe. Every candidate frame starts inside ``body``, so MAX_FRAME_SIZE bytes after it settle them.
        flush = bytes(p.MAX_FRAME_SIZE)
        probe = p.encode_frame(p.Control(0), seq=PROBE_SEQ)
        rx_bad_before = self.server.rx_bad
        writer.write(body + flush + probe)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        expected, client_bye = reference_decode(body + flush + probe)
        bye: p.Bye | None = None
        reply: p.Message | None = None
        while reply is None:
            try:
                msg = await next_message()
            except TimeoutError:
                raise InvariantError(
                    f"no reply to the probe within {REPLY_TIMEOUT_S} s (mode {mode}, {len(body)} bytes)"
                ) from None
            except (ConnectionError, OSError):
                msg = None
            if msg is None:
                if bye is None and not client_bye:
                    raise InvariantError("the server closed the connection without BYE and without a reply")
                break
            if isinstance(msg, p.Bye):
                if msg.reason not in set(p.ErrorCode):
                    raise InvariantError(f"BYE with unknown reason {msg.reason}: {msg.message!r}")
                bye = msg
            elif (isinstance(msg, p.Nak) and msg.ack_seq == PROBE_SEQ) or (
                isinstance(msg, p.Error) and msg.ref_seq == PROBE_SEQ
            ):
                reply = msg
        delta = self.server.rx_bad - rx_bad_before
        if reply is not None and bye is None and not client_bye and delta != expected:
            raise InvariantError(
                f"server counted {delta} bad inputs, a reference decoder {expected} (mode {mode}, "
                f"{len(body)} bytes: {body[:64].hex()}...)"
            )
        if reply is not None and isinstance(reply, p.Nak):
            known = {p.ErrorCode.UNKNOWN_COMMAND, p.ErrorCode.RATE_LIMITED, p.ErrorCode.NOT_ALLOWED_IN_STATE}
            if reply.code not in known:
                raise InvariantError(f"probe NAK with code {reply.code}, expected one of {sorted(known)}")
        return Outcome(mode, bye, reply, delta, expected, frames)

    async def _until_no_sessions(self) -> None:
        for i in range(5000):
            if not self.server.sessions:
                return
            await asyncio.sleep(0 if i < 50 else 0.001)
        raise InvariantError(f"{len(self.server.sessions)} session(s) still open 5 s after the client closed")


def _seeds() -> list[bytes]:
    """A few valid sessions' worth of frames, so the fuzzer starts from inputs that reach deep code."""
    enc = p.FrameEncoder(first_seq=1)
    c = p.ControlCommand
    frames = [
        enc.encode(p.Heartbeat()),
        enc.encode(p.Subscribe(cells=np.array([0], dtype=np.uint16))),
        enc.encode(p.Control(c.PAUSE)),
        enc.encode(p.Control(c.RESUME)),
        enc.encode(p.Control.seek(5_000_000)),
        enc.encode(p.Control.set_load_current(10_000)),
        enc.encode(p.Control.inject_fault(p.FaultKind.NOISE, severity_ppm=100_000, duration_ms=10)),
        enc.encode(p.Control(c.CLEAR_FAULT)),
        enc.encode(p.Control(c.SET_SPEED, value=1_000_000)),
        enc.encode(p.ClientHello(client_name="again")),
    ]
    return [bytes([mode]) + b"".join(frames[i:]) for mode in range(3) for i in range(len(frames))]


def main(argv: list[str]) -> None:
    """libFuzzer's command line (``-max_total_time=N``, ``-runs=N``, corpus directories, ...)."""
    import atheris
    import structlog

    from hil_server.cli._logging import configure_logging

    configure_logging(level="error")  # a warning per bad input would drown libFuzzer's output
    harness = Harness()
    for seed in _seeds():  # the seeds must pass before fuzzing starts
        harness.run(seed)
    structlog.get_logger(__name__).error("seeds passed; fuzzing", port=harness.server.port)

    def one_input(data: bytes) -> None:
        harness.run(data)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def write_seeds(directory: Path) -> list[Path]:
    """The seed inputs as files of a libFuzzer corpus directory."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, seed in enumerate(_seeds()):
        path = directory / f"seed-{i:03d}"
        path.write_bytes(seed)
        paths.append(path)
    return paths


if __name__ == "__main__":
    main(sys.argv)
