"""CAN output of the eis-hil stream, driven by a DBC (cantools) on any python-can interface.

``mapping``: the YAML mapping file (stream fields -> DBC signals) and its binding to a DBC; ``budget``: bus
load from the DBC and the rates, before starting; ``bridge``: the encoder and the asyncio glue. The command
is ``eis-hil can-bridge`` (``hil_server/cli/can_bridge.py``). Control back from the BMS over CAN is not
handled.
"""
