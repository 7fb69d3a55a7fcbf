"""The live browser view of a stream (``eis-hil view``, ``eis-hil serve --view``).

``state``: what the page shows, folded frame by frame from the protocol stream (pure: no I/O, no clock).
``server``: one more protocol client (``client.HilClient``) whose state is served to browsers over HTTP and a
WebSocket (the ``view`` extra: ``websockets``). ``static/``: the page itself, plain JavaScript and SVG, no
build step and nothing fetched from elsewhere.
"""
