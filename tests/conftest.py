"""Shared fixtures: a real Gateway on ephemeral loopback ports with a real SQLite file in a temp dir."""
from __future__ import annotations

import pytest
import pytest_asyncio

from gateway.carrier import load_carriers
from gateway.config import Settings
from gateway.runtime import Gateway

API_KEY = "test-api-key"


@pytest_asyncio.fixture
async def make_gateway(tmp_path):
    """`gw = await make_gateway(carriers={...}, engine="echo", **settings)`: started now, stopped after the test.

    `carriers` maps names to Carrier classes; None loads every installed carrier; default: none.
    """
    started: list[Gateway] = []

    async def factory(carriers: dict | None = {}, **overrides) -> Gateway:
        kw = dict(host="127.0.0.1", http_port=0, sip_host="127.0.0.1", sip_port=0, data_dir=str(tmp_path),
                  api_key=API_KEY, engine="echo", advertised_ip="127.0.0.1", public_url="")
        kw.update(overrides)
        gw = Gateway(Settings(**kw), carriers={})
        gw.carriers = load_carriers(gw) if carriers is None else {n: cls(gw) for n, cls in carriers.items()}
        await gw.start()
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        if gw.started:
            await gw.stop()


@pytest.fixture
def auth_headers():
    return {"Authorization": f"Bearer {API_KEY}"}
