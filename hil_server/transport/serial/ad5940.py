"""Instrument-style text output: what the Analog Devices AD5940 battery-impedance example prints on its UART.

Source of the formats (Analog Devices, ``analogdevicesinc/ad5940-examples``):

- ``examples/AD5940_BATImpedance/AD5940Main.c``, ``BATShowResult()``, one line per measured point::

      printf("Freq: %f (real, image) = ,%f , %f ,mOhm \\n",freq, pImp[i].Real,pImp[i].Image);

  ``freq`` is a ``float`` (Hz), ``Real`` and ``Image`` are the ``float`` fields of ``fImpCar_Type`` in
  milliohms (the firmware scales the ratio to RCAL by ``RcalVal`` = 50.0 mOhm). ``%f`` prints six decimals;
  the line ends with a space and a bare ``\\n`` (the ADICUP3029 ``fputc`` writes bytes unchanged, no CR).
- ``examples/AD5940_BATImpedance/ADICUP3029/main.c``, once after reset::

      printf("Hello AD5940-Build Time:%s\\n",__TIME__);

Impedance sign: the firmware's ``Image`` is the imaginary part of Vbat / Vrcal * Rcal, the standard sign
(capacitive < 0), the same as ``z_im_ohm`` of the protocol, so values are printed as they are, only scaled
to milliohms in single precision like the firmware's ``float`` arithmetic. ``hil_server/SERIAL.md`` gives
the grammar.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import numpy as np

import protocol as p

BANNER_PREFIX = "Hello AD5940-Build Time:"
LINE_ENDING = "\n"

_NUM = r"(-?(?:\d+\.\d{6}|nan|inf))"
_LINE = re.compile(rf"^Freq: {_NUM} \(real, image\) = ,{_NUM} , {_NUM} ,mOhm $")

TYPICAL_LINE_BYTES = 64
"""About the length of one point line (``Freq: 1000.000000 (real, image) = ,12.345678 , -3.456789 ,mOhm``),
for the line-rate estimate."""


def c_float(value: float) -> str:
    """``printf("%f", (double)value_as_float)``: the float32 value with six decimals; ``nan``/``inf`` as
    newlib and glibc print them (a NaN's sign bit is not printed)."""
    v = float(np.float32(value))
    if math.isnan(v):
        return "nan"
    return f"{v:f}"


def _mohm(ohm: float) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.float32(ohm) * np.float32(1000.0))


def format_point(freq_hz: float, z_re_ohm: float, z_im_ohm: float) -> str:
    """One ``BATShowResult`` line, ending in `` \\n``."""
    return (
        f"Freq: {c_float(freq_hz)} (real, image) = ,{c_float(_mohm(z_re_ohm))} , "
        f"{c_float(_mohm(z_im_ohm))} ,mOhm {LINE_ENDING}"
    )


def format_spectrum(spectrum: p.EisSpectrum) -> str:
    """Every point of a spectrum, in measurement order, one line each."""
    return "".join(
        format_point(f, re_, im)
        for f, re_, im in zip(
            spectrum.freq_hz.tolist(), spectrum.z_re_ohm.tolist(), spectrum.z_im_ohm.tolist(), strict=True
        )
    )


def format_banner(build_time: time.struct_time | None = None) -> str:
    """The reset banner; ``__TIME__`` is ``HH:MM:SS`` (here: local time when the bridge opened the port)."""
    return f"{BANNER_PREFIX}{time.strftime('%H:%M:%S', build_time or time.localtime())}{LINE_ENDING}"


@dataclasses.dataclass(frozen=True)
class Ad5940Point:
    freq_hz: float
    z_re_mohm: float
    z_im_mohm: float

    @property
    def z_ohm(self) -> complex:
        return complex(self.z_re_mohm, self.z_im_mohm) / 1000.0


def parse_line(line: str) -> Ad5940Point:
    """Parse one ``Freq:`` line (with or without its line ending). ValueError names what did not match."""
    text = line.rstrip("\r\n")
    m = _LINE.match(text)
    if m is None:
        raise ValueError(
            f"not an AD5940 BATImpedance result line: {text!r}; expected "
            "'Freq: <f> (real, image) = ,<re> , <im> ,mOhm ' with %f numbers"
        )
    return Ad5940Point(float(m.group(1)), float(m.group(2)), float(m.group(3)))


class Ad5940Formatter:
    """Turns the protocol stream into the example firmware's text: spectra and sweep points only.

    Sweep-timed spectra arrive as EIS_POINTs (printed one by one as they are measured, like the firmware)
    followed by the complete EIS_SPECTRUM, which is then not printed again. Everything else (cell states,
    fault events, heartbeats) has no counterpart in this output and yields no text.
    """

    def __init__(self) -> None:
        self._swept: set[tuple[int, int]] = set()

    def text(self, message: p.Message) -> str:
        if isinstance(message, p.EisPoint):
            self._swept.add((message.cell, message.spectrum_id))
            return format_point(message.freq_hz, message.z_re_ohm, message.z_im_ohm)
        if isinstance(message, p.EisSpectrum):
            key = (message.cell, message.spectrum_id)
            if key in self._swept:  # its points were printed as they were measured
                self._swept.discard(key)
                return ""
            return format_spectrum(message)
        return ""
