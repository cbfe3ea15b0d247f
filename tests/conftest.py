"""Shared fixtures: a real Gateway on ephemeral loopback ports with a real SQLite file in a temp dir."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import pytest_asyncio

from gateway.carrier import load_carriers
from gateway.config import Settings
from gateway.runtime import Gateway

API_KEY = "test-api-key"
#: one key for every test gateway, so gateways of one test with separate data dirs (nodes sharing a PostgreSQL
#: database) read each other's encrypted secrets, as production nodes sharing GATEWAY_SECRET_KEY do
SECRET_KEY = "dGVzdC1vbmx5LWtleS10ZXN0LW9ubHkta2V5LTAwMDA="


def load_example(name: str) -> ModuleType:
    """examples/<name>.py as a module (the examples are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def reset_postgres_schema(url: str) -> None:
    """Drop and re-create every table of a test PostgreSQL database (rows of earlier tests may be sealed with
    keys this test does not have)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from gateway.store.models import Base
    from gateway.store.store import database_url

    engine = create_async_engine(database_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()


@pytest_asyncio.fixture
async def make_gateway(tmp_path):
    """`gw = await make_gateway(carriers={...}, engine="echo", **settings)`: started now, stopped after the test.

    `carriers` maps names to Carrier classes; None loads every installed carrier; default: none.
    """
    started: list[Gateway] = []

    async def factory(carriers: dict | None = {}, **overrides) -> Gateway:  # noqa: B006 (read only; None = all)
        kw = dict(host="127.0.0.1", http_port=0, sip_host="127.0.0.1", sip_port=0, data_dir=str(tmp_path),
                  api_key=API_KEY, engine="echo", advertised_ip="127.0.0.1", public_url="", secret_key=SECRET_KEY)
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
