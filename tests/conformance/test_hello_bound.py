"""SPEC.md section 4, SERVER_HELLO: a live server sends a hello of at most HELLO_PAYLOAD_MAX bytes of payload,
with the grid empty when the whole hello would not fit, and the spectra carry the grid all the same."""

from __future__ import annotations

from pathlib import Path

import pytest

import protocol as p
from hil_server.testing import loopback

from .conftest import SCENARIO

LONG_GRID = SCENARIO.replace(
    "name: conformance",
    "name: a-scenario-name-of-the-longest-length-a-scenario-file-allows-64",
).replace(
    "frequencies: {min_hz: 1, max_hz: 1000, points_per_decade: 2}",
    "frequencies: {min_hz: 0.01, max_hz: 10000, points_per_decade: 56}",
)
"""The conformance scenario with a 64-character name and a 337-point grid: a whole hello of 1.5 kB."""


@pytest.mark.asyncio
async def test_a_long_grid_is_not_in_the_hello_but_in_every_spectrum(tmp_path: Path) -> None:
    path = tmp_path / "long_grid.yaml"
    path.write_text(LONG_GRID, encoding="utf-8")
    async with loopback(path) as (server, client):  # TCP, the hello as a TCP client gets it
        whole = server.source.hello()
        assert whole.freq_hz.size == 337
        assert len(p.encode_payload(whole)) > p.HELLO_PAYLOAD_MAX
        assert client.hello is not None
        assert len(p.encode_payload(client.hello)) <= p.HELLO_PAYLOAD_MAX
        assert client.hello.freq_hz.size == 0
        assert client.hello.scenario_id == whole.scenario_id  # the strings fit once the grid is out
        assert client.hello.model_hash == whole.model_hash
        await client.subscribe(mask=p.SubscribeMask.EIS_SPECTRUM)
        while True:
            msg = (await client.next_frame(timeout=20)).message
            if isinstance(msg, p.EisSpectrum):
                break
        assert msg.freq_hz.size == 337
        assert (msg.freq_hz == whole.freq_hz.astype("float32")).all()


@pytest.mark.asyncio
async def test_a_hello_that_fits_keeps_its_grid(scenario: Path) -> None:
    async with loopback(scenario) as (server, client):
        assert client.hello is not None
        assert client.hello.freq_hz.size == server.source.hello().freq_hz.size == 7
        assert len(p.encode_payload(client.hello)) <= p.HELLO_PAYLOAD_MAX
