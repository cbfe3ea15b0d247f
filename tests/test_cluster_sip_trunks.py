"""A SIP trunk edited through one process of a cluster is used at once by the other (control op `store:changed`):
its allow-list and digest credentials, for calls to its number (the store's cached number) and for sources and
REGISTERs that name no imported number (the SIP carrier's trunk list, gateway/store/derived.py).

Two gateways on one fresh PostgreSQL database, each with its own control-bus connection, SIP port and RTP range,
called by SIPp. Node b's caches are given an hour's TTL, so only the cross-process invalidation can refresh them:
without it b would refuse the edited trunk's calls for the rest of that hour.
"""
from __future__ import annotations

import pytest
import pytest_asyncio

from cluster_env import create_database, drop_database, require_pg
from sipp import api, call_rows, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(180)]

HOUR = 3600.0


@pytest_asyncio.fixture
async def pg_db():
    require_pg()
    url = await create_database("gw_trunks")
    yield url
    await drop_database(url)


async def test_a_trunk_edited_on_one_node_is_used_at_once_by_the_other(make_gateway, pg_db, tmp_path, caplog):
    a, b = [await sip_gateway(make_gateway, db=pg_db, node_id=f"trunk-{n}", data_dir=str(tmp_path / n))
            for n in "ab"]
    await wait_for(lambda: _sees(b, a), 30, what="node b to see node a alive")
    await wait_for(lambda: _sees(a, b), 30, what="node a to see node b alive")
    b.store.CACHE_TTL = HOUR
    b.carriers["sip"]._trunks.ttl = HOUR
    port = b.carriers["sip"].port
    num = await sip_number(a, allowed_ips=["10.9.9.9"])

    # b reads (and keeps) the trunk: our source is not on its allow-list
    (await sipp_uac("uac_auth_rejected.xml", port, service="15550001111", timeout_s=10)).assert_calls(successful=1)
    (await sipp_uac("uac_auth_rejected.xml", port, service="15550008888", timeout_s=10)).assert_calls(successful=1)

    await api(a, "PATCH", f"/phone_number/{num['id']}", {"allowed_ips": ["127.0.0.1"]}, expect=200)
    # b now knows our source: a number not imported is 404 (not 403), and the trunk's number is answered
    (await sipp_uac("uac_unknown_number.xml", port, service="15550008888", timeout_s=10)).assert_calls(successful=1)
    res = await sipp_uac("uac_pcma_echo.xml", port, service="15550001111", duration_ms=300, timeout_s=15)
    res.assert_calls(successful=1)

    await api(a, "PATCH", f"/phone_number/{num['id']}", {"auth_type": "basic", "allowed_ips": [],
                                                          "sip_username": "carrier", "sip_password": "new-s3cret"},
              expect=200)
    res = await sipp_uac("uac_digest.xml", port, service="15550001111", duration_ms=300, timeout_s=15,
                         extra=["-au", "carrier", "-ap", "new-s3cret"])
    res.assert_calls(successful=1)
    rows = await wait_for(lambda: _ended(b, 2), 20, what="node b's two calls to end")
    assert [r["owner"] for r in rows] == ["trunk-b", "trunk-b"]
    assert not [r for r in caplog.records if r.getMessage().startswith("cache sync")]   # b confirmed each edit


async def _sees(gw, other) -> bool:
    return other.settings.proc_id in await gw.membership.alive_procs()


async def _ended(gw, n: int) -> list[dict] | None:
    rows = [r for r in await call_rows(gw) if r.get("ended_at")]
    return rows if len(rows) >= n else None
