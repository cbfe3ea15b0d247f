"""Inbound trunk authentication policy: IP allow-list, trunk hosts, unknown sources."""
import ipaddress

import pytest

from gateway.sip.inbound_auth import InboundAuth, TrunkAuth


def trunk(**cfg):
    row = {"id": 1, "sip_trunk_name": "t", "config": {"sip_host": "trunk.example.com", "auth_type": "ip", **cfg},
           "secrets": {}}
    return TrunkAuth.from_number(row)


async def fake_resolver(host):
    return {"trunk.example.com": ["203.0.113.5"], "proxy.example.com": ["198.51.100.7"]}.get(host, [])


class Req:
    method = "INVITE"
    headers: dict = {}


async def test_allow_list_cidr():
    auth = InboundAuth(resolver=fake_resolver)
    t = trunk(allowed_ips=["10.0.0.0/8", "192.0.2.1/32"])
    assert (await auth.check(t, Req(), "10.20.30.40")).ok
    assert (await auth.check(t, Req(), "192.0.2.1")).ok
    v = await auth.check(t, Req(), "192.0.2.2")
    assert not v.ok and v.status == 403
    # an explicit list replaces the trunk hosts
    assert not (await auth.check(t, Req(), "203.0.113.5")).ok


async def test_empty_list_means_trunk_hosts():
    auth = InboundAuth(resolver=fake_resolver)
    t = trunk(outbound_proxy="proxy.example.com:5090")
    assert t.hosts == ("trunk.example.com", "proxy.example.com")
    assert (await auth.check(t, Req(), "203.0.113.5")).ok
    assert (await auth.check(t, Req(), "198.51.100.7")).ok
    assert (await auth.check(t, Req(), "127.0.0.1")).status == 403


async def test_ip_literal_host_and_bad_source():
    auth = InboundAuth(resolver=fake_resolver)
    t = trunk(sip_host="127.0.0.1")
    assert (await auth.check(t, Req(), "127.0.0.1")).ok
    assert not (await auth.check(t, Req(), "not-an-ip")).ok


async def test_resolution_cached_and_failure_denies():
    calls = []

    async def resolver(host):
        calls.append(host)
        raise OSError("no such host")

    auth = InboundAuth(resolver=resolver)
    t = trunk()
    assert (await auth.check(t, Req(), "203.0.113.5")).status == 403
    assert (await auth.check(t, Req(), "203.0.113.5")).status == 403
    assert calls == ["trunk.example.com"]


async def test_known_source_decides_404_vs_403():
    auth = InboundAuth(resolver=fake_resolver)
    trunks = [trunk(allowed_ips=["10.0.0.0/8"]), trunk()]
    assert await auth.known_source(trunks, "10.1.1.1")
    assert await auth.known_source(trunks, "203.0.113.5")
    assert not await auth.known_source(trunks, "8.8.8.8")
    # a digest trunk without an allow-list does not make every source "known"
    basic = TrunkAuth.from_number({"id": 2, "config": {"sip_host": "x.example.com", "auth_type": "basic"},
                                   "secrets": {"sip_password": "pw"}})
    assert not await auth.known_source([basic], "8.8.8.8")


def test_from_number_parses_allowed():
    t = trunk(allowed_ips=["10.0.0.1/32"])
    assert t.allowed == (ipaddress.ip_network("10.0.0.1/32"),)
