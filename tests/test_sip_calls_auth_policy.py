"""Inbound trunk authentication policy: IP allow-list, trunk hosts, unknown sources."""
import ipaddress

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


def basic_trunk():
    return TrunkAuth.from_number({"id": 3, "sip_trunk_name": "b", "config": {
        "sip_host": "trunk.example.com", "auth_type": "basic", "sip_username": "carrier"},
        "secrets": {"sip_password": "s3cret"}})


class AuthReq:
    method = "INVITE"
    uri = "sip:+15550001111@gw.example.com"

    def __init__(self, header=None):
        self.headers = {"Authorization": header} if header else {}


async def test_digest_challenge_then_accept_then_wrong_password():
    from gateway.sip.digest import build_authorization, parse_challenge

    auth = InboundAuth(realm="gw.test", resolver=fake_resolver)
    t = basic_trunk()
    v = await auth.check(t, AuthReq(), "8.8.8.8")          # any source may try digest
    assert v.status == 401
    (name, value), = v.headers
    assert name == "WWW-Authenticate"
    ch = parse_challenge(value)
    assert ch.realm == "gw.test"
    good = build_authorization(ch, "INVITE", AuthReq.uri, "carrier", "s3cret")
    assert (await auth.check(t, AuthReq(good), "8.8.8.8")).ok
    bad = build_authorization(ch, "INVITE", AuthReq.uri, "carrier", "guess", nc=2)
    v = await auth.check(t, AuthReq(bad), "8.8.8.8")
    assert (v.ok, v.status) == (False, 403)
    other = build_authorization(ch, "INVITE", AuthReq.uri, "mallory", "s3cret", nc=3)
    assert (await auth.check(t, AuthReq(other), "8.8.8.8")).status == 403


async def test_digest_stale_nonce_rechallenges():
    from gateway.sip.digest import DigestServer, build_authorization, parse_challenge

    now = [1_000_000.0]
    auth = InboundAuth(realm="gw.test", resolver=fake_resolver, nonce_ttl=60)
    auth.digest = DigestServer(nonce_ttl=60, clock=lambda: now[0])
    ch = parse_challenge((await auth.check(basic_trunk(), AuthReq(), "1.2.3.4")).headers[0][1])
    now[0] += 120
    v = await auth.check(basic_trunk(), AuthReq(build_authorization(ch, "INVITE", AuthReq.uri, "carrier", "s3cret")),
                         "1.2.3.4")
    assert v.status == 401 and "stale=true" in v.headers[0][1]


async def test_digest_trunk_without_password_refuses():
    t = TrunkAuth.from_number({"id": 4, "config": {"sip_host": "h", "auth_type": "basic", "sip_username": "u"},
                               "secrets": {}})
    assert (await InboundAuth().check(t, AuthReq(), "1.2.3.4")).status == 403
