"""Transports: thin adapters that carry the sessions of one server (``session.ServerSession`` for the
protocol, ``stream.StreamScheduler`` for what is sent when).

- ``tcp``: ``HilServer``, the server itself (sessions, pacing, controls, recording, heartbeats) and its TCP
  listener; ``Session`` is one TCP connection.
- ``serial``: a UART, either as a session of a ``HilServer`` (``serial.served``: ``serial-bridge
  --scenario``) or bridged to a remote server as its client (``serial.bridge``: ``--server HOST:PORT``).
- ``loopback``: an in-process pipe to a ``HilServer`` with a manipulator (split, delay, corrupt, drop).
- ``can``: the CAN bridge, a client of a server.
- ``subscriber``: what every session is to the stream, whatever carries its bytes.
"""
