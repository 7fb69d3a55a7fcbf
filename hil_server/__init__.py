"""eis-hil server side: everything that runs (CLI now; model, simulation, transports as they land)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
