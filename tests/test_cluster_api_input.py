"""Call endpoints given ids no call can have answer a 4xx naming the field, on both backends: PostgreSQL refuses a
string with a NUL character outright, so `GET /api/v1/calls/logs/%00` and `POST /api/v1/calls/%00/hangup` were 500s
in cluster mode (the lookup reached the database)."""
from __future__ import annotations

import pytest

from cluster_env import db_url  # noqa: F401  (fixture: SQLite, then a fresh PostgreSQL database)
from sipp import api


@pytest.mark.parametrize("method,path", [("GET", "/calls/logs/%00"), ("POST", "/calls/%00/hangup"),
                                         ("POST", "/calls/ab%00cd/transfer"), ("POST", "/calls/%00/mute")])
async def test_a_call_id_with_a_nul_is_not_found(make_gateway, db_url, method, path):  # noqa: F811
    gw = await make_gateway(db=db_url, enable_sip=False)
    body = await api(gw, method, path, {"number": "+14155550100"} if "transfer" in path else None, expect=404)
    assert body["field"] == "id", body
