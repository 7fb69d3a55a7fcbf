"""eis-hil server side: everything that runs. The folders are the layers (README "Layout"):
``session`` (sans-IO server session) under ``stream`` (what is streamed, when) and ``transport`` (TCP,
serial, in-process pipe), ``capture``, ``client``, the composition root ``app`` and the command line ``cli``;
``sweep`` (dataset sweeps) beside ``stream``; ``view`` (the live browser view, a client) on ``client``; the
domain packages ``eis_data``, ``model``, ``scenario`` and ``sim``. Importing this package imports none of
them."""

__version__ = "0.1.0"

__all__ = ["__version__"]
