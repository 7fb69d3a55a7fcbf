"""Typed, frozen message classes: what the rest of the code sees instead of construct containers.

Field names and order match the payload declarations in ``_schema.py`` (element counts and reserved bytes
are implied by the arrays); ``_codec.py`` checks that at import time. Units are in the names (SPEC.md
section 4 gives type, resolution and range of each). Array fields are read-only numpy arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ._constants import (
    ALL_CELLS,
    AUTH_CHALLENGE_SIZE,
    AUTH_RESPONSE_SIZE,
    HASH_SIZE,
    PROTOCOL_MINOR,
    PROTOCOL_VERSION,
    ControlCommand,
    EisMode,
    MsgType,
    SubscribeMask,
)
from ._errors import LocalProtocolError

F32 = np.dtype("<f4")
U16 = np.dtype("<u2")
CELL_STATE_DTYPE = np.dtype(
    {
        "names": ["cell", "flags", "voltage_uV", "current_uA", "temperature_mdegC", "soc_ppm", "soh_ppm"],
        "formats": ["<u2", "<u2", "<i4", "<i4", "<i4", "<u4", "<u4"],
    }
)
"""One CELL_STATES record (24 bytes); ``_codec`` checks it equals the construct declaration."""

FloatArray = npt.NDArray[np.floating[Any]]
"""Any float array on construction; stored as read-only little-endian float32."""
U16Array = npt.NDArray[np.integer[Any]]
"""Any integer array on construction; stored as read-only little-endian uint16."""


def _frozen_array(value: Any, dtype: np.dtype[Any]) -> Any:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != 1:
        raise LocalProtocolError(f"expected a 1-D array, got shape {arr.shape}")
    if arr.flags.writeable:
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise LocalProtocolError(f"{name} must be {size} bytes, got {len(value)}")


class Message:
    """Base of every message class. Equality compares arrays by value (NaN equal to NaN)."""

    __slots__ = ()
    MSG_TYPE: ClassVar[MsgType]
    ARRAY_FIELDS: ClassVar[dict[str, np.dtype[Any]]] = {}
    FLOAT32_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name, dtype in self.ARRAY_FIELDS.items():
            object.__setattr__(self, name, _frozen_array(getattr(self, name), dtype))
        # Scalars carried as float32 are rounded now, so that decode(encode(m)) == m.
        for name in self.FLOAT32_FIELDS:
            object.__setattr__(self, name, float(np.float32(getattr(self, name))))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            a, b = getattr(self, field.name), getattr(other, field.name)
            if isinstance(a, np.ndarray):
                nan_ok = a.dtype.kind == "f"
                if a.shape != b.shape or not np.array_equal(a, b, equal_nan=nan_ok):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible fields: bytes as hex, arrays as lists (CELL_STATES records as dicts)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            out[field.name] = _to_json(getattr(self, field.name))
        return out

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Message:
        """Inverse of ``to_dict``."""
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = fields[field.name]
            if field.type in ("bytes",):
                value = bytes.fromhex(value)
            elif field.name in cls.ARRAY_FIELDS:
                dtype = cls.ARRAY_FIELDS[field.name]
                if dtype.names:
                    value = np.array([tuple(r[n] for n in dtype.names) for r in value], dtype=dtype)
                else:
                    value = np.array(value, dtype=dtype)
            kwargs[field.name] = value
        return cls(**kwargs)


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, np.ndarray):
        if value.dtype.names:
            return [{n: int(r[n]) for n in value.dtype.names} for r in value]
        return [float(v) if value.dtype.kind == "f" else int(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class ServerHello(Message):
    """First frame on every connection, from the server: who it is, what it streams, how to authenticate."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.SERVER_HELLO
    ARRAY_FIELDS: ClassVar[dict[str, np.dtype[Any]]] = {"freq_hz": F32}

    proto_max_major: int = PROTOCOL_VERSION
    proto_min_major: int = PROTOCOL_VERSION
    proto_minor: int = PROTOCOL_MINOR
    auth_required: int = 0
    seed: int = 0
    cell_count: int = 0
    step_period_us: int = 0
    auth_challenge: bytes = bytes(AUTH_CHALLENGE_SIZE)
    model_hash: bytes = bytes(HASH_SIZE)
    scenario_hash: bytes = bytes(HASH_SIZE)
    server_version: str = ""
    model_id: str = ""
    scenario_id: str = ""
    freq_hz: FloatArray = dataclasses.field(default_factory=lambda: np.zeros(0, F32))

    def __post_init__(self) -> None:
        _check_bytes("auth_challenge", self.auth_challenge, AUTH_CHALLENGE_SIZE)
        _check_bytes("model_hash", self.model_hash, HASH_SIZE)
        _check_bytes("scenario_hash", self.scenario_hash, HASH_SIZE)
        Message.__post_init__(self)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class ClientHello(Message):
    """The client's answer to ServerHello: the major versions it speaks and, if required, its auth MAC."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.CLIENT_HELLO

    proto_min_major: int = PROTOCOL_VERSION
    proto_max_major: int = PROTOCOL_VERSION
    auth_response: bytes = bytes(AUTH_RESPONSE_SIZE)
    client_name: str = ""

    def __post_init__(self) -> None:
        _check_bytes("auth_response", self.auth_response, AUTH_RESPONSE_SIZE)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Subscribe(Message):
    """What the client wants streamed. May be sent again at any time to change the subscription."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.SUBSCRIBE
    ARRAY_FIELDS: ClassVar[dict[str, np.dtype[Any]]] = {"cells": U16}

    msg_mask: int = SubscribeMask.ALL
    state_divider: int = 1
    eis_mode: int = EisMode.SCENARIO_DEFAULT
    cells: U16Array = dataclasses.field(default_factory=lambda: np.zeros(0, U16))
    """Cell indices wanted; empty means every cell."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Heartbeat(Message):
    """Sent by both sides at least once per heartbeat interval; counters are the sender's own."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT

    t_sim_us: int = 0
    t_wall_us: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    rx_bad_frames: int = 0
    lateness_p50_us: int = 0
    lateness_p99_us: int = 0
    lateness_max_us: int = 0
    queue_depth: int = 0
    sim_state: int = 0


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Bye(Message):
    """Orderly close: the sender will close the connection after this frame."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.BYE

    reason: int = 0
    message: str = ""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Error(Message):
    """A problem the receiver should know of; ``ref_seq`` is the seq of the offending frame (0 if none)."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.ERROR

    code: int = 0
    ref_seq: int = 0
    message: str = ""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class CellStates(Message):
    """The state of one or more cells at one simulation instant (``records`` has CELL_STATE_DTYPE)."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.CELL_STATES
    ARRAY_FIELDS: ClassVar[dict[str, np.dtype[Any]]] = {"records": CELL_STATE_DTYPE}

    t_sim_us: int
    t_wall_us: int
    step: int
    records: npt.NDArray[np.void]

    @classmethod
    def from_columns(
        cls,
        t_sim_us: int,
        t_wall_us: int,
        step: int,
        *,
        cell: npt.ArrayLike,
        voltage_uV: npt.ArrayLike,
        current_uA: npt.ArrayLike,
        temperature_mdegC: npt.ArrayLike,
        soc_ppm: npt.ArrayLike,
        soh_ppm: npt.ArrayLike,
        flags: npt.ArrayLike = 0,
    ) -> CellStates:
        cells = np.atleast_1d(np.asarray(cell))
        records = np.zeros(cells.shape[0], CELL_STATE_DTYPE)
        columns = {
            "cell": cells,
            "flags": flags,
            "voltage_uV": voltage_uV,
            "current_uA": current_uA,
            "temperature_mdegC": temperature_mdegC,
            "soc_ppm": soc_ppm,
            "soh_ppm": soh_ppm,
        }
        for name, value in columns.items():
            _checked_assign(records, name, value)
        return cls(t_sim_us, t_wall_us, step, records)

    def column(self, name: str) -> npt.NDArray[Any]:
        """One field of every record, for example ``column("voltage_uV")``."""
        return self.records[name]


def _checked_assign(records: npt.NDArray[np.void], name: str, value: npt.ArrayLike) -> None:
    dtype = records.dtype.fields[name][0]  # type: ignore[index]
    info = np.iinfo(dtype)
    arr = np.asarray(value)
    if arr.size and (np.any(arr < info.min) or np.any(arr > info.max)):
        raise LocalProtocolError(f"{name} out of range {info.min}..{info.max}")
    records[name] = arr


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class EisSpectrum(Message):
    """A whole impedance spectrum of one cell. Standard sign: ``z_im_ohm > 0`` is inductive."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.EIS_SPECTRUM
    ARRAY_FIELDS: ClassVar[dict[str, np.dtype[Any]]] = {"freq_hz": F32, "z_re_ohm": F32, "z_im_ohm": F32}
    FLOAT32_FIELDS: ClassVar[tuple[str, ...]] = ("kk_residual",)

    t_sim_us: int
    spectrum_id: int
    sweep_duration_ms: int
    cell: int
    cell_flags: int
    soc_ppm: int
    soh_ppm: int
    temperature_mdegC: int
    current_uA: int
    kk_residual: float
    freq_hz: FloatArray
    z_re_ohm: FloatArray
    z_im_ohm: FloatArray

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if not (self.freq_hz.shape == self.z_re_ohm.shape == self.z_im_ohm.shape):
            raise LocalProtocolError(
                f"freq_hz, z_re_ohm, z_im_ohm lengths differ: "
                f"{self.freq_hz.size}, {self.z_re_ohm.size}, {self.z_im_ohm.size}"
            )


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class EisPoint(Message):
    """One point of a sweep-timed spectrum, sent when a real instrument would have measured it."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.EIS_POINT
    FLOAT32_FIELDS: ClassVar[tuple[str, ...]] = ("freq_hz", "z_re_ohm", "z_im_ohm")

    t_sim_us: int
    spectrum_id: int
    cell: int
    point_index: int
    n_points: int
    cell_flags: int
    freq_hz: float
    z_re_ohm: float
    z_im_ohm: float


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class FaultEvent(Message):
    """Ground truth for the bench: a fault started or ended on the listed cells."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.FAULT_EVENT
    ARRAY_FIELDS: ClassVar[dict[str, np.dtype[Any]]] = {"cells": U16}

    t_sim_us: int
    fault_id: int
    severity_ppm: int
    kind: int
    phase: int
    cells: U16Array


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Control(Message):
    """A command from the client. ``cell``, ``value`` and ``aux`` mean what SPEC.md says per command."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.CONTROL

    command: int
    fault_kind: int = 0
    cell: int = ALL_CELLS
    aux: int = 0
    value: int = 0

    @classmethod
    def seek(cls, t_sim_us: int) -> Control:
        return cls(ControlCommand.SEEK, value=t_sim_us)

    @classmethod
    def set_load_current(cls, current_uA: int, cell: int = ALL_CELLS) -> Control:
        return cls(ControlCommand.SET_LOAD_CURRENT, cell=cell, value=current_uA)

    @classmethod
    def set_ambient_temperature(cls, temperature_mdegC: int) -> Control:
        return cls(ControlCommand.SET_AMBIENT_TEMPERATURE, value=temperature_mdegC)

    @classmethod
    def inject_fault(
        cls, kind: int, *, cell: int = ALL_CELLS, severity_ppm: int = 1_000_000, duration_ms: int = 0
    ) -> Control:
        return cls(
            ControlCommand.INJECT_FAULT, fault_kind=kind, cell=cell, aux=duration_ms, value=severity_ppm
        )

    @classmethod
    def clear_fault(cls, fault_id: int = 0) -> Control:
        return cls(ControlCommand.CLEAR_FAULT, aux=fault_id)

    @classmethod
    def request_spectrum(cls, cell: int = ALL_CELLS) -> Control:
        return cls(ControlCommand.REQUEST_SPECTRUM, cell=cell)

    @classmethod
    def set_speed(cls, speed_ppm: int) -> Control:
        return cls(ControlCommand.SET_SPEED, value=speed_ppm)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Ack(Message):
    """Positive answer to the CONTROL frame whose seq is ``ack_seq``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.ACK

    ack_seq: int
    command: int
    result: int = 0


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Nak(Message):
    """Negative answer to the CONTROL frame whose seq is ``ack_seq``, with an ErrorCode and a reason."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.NAK

    ack_seq: int
    command: int
    code: int
    message: str = ""


MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.MSG_TYPE: cls
    for cls in (
        ServerHello,
        ClientHello,
        Subscribe,
        Heartbeat,
        Bye,
        Error,
        CellStates,
        EisSpectrum,
        EisPoint,
        FaultEvent,
        Control,
        Ack,
        Nak,
    )
}
