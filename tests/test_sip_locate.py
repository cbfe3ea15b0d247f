"""RFC 3263 trunk location (gateway/sip/locate.py): RFC 2782 ordering and weights, and NAPTR/SRV/A lookups against
a real dnsmasq on loopback."""
import random
from collections import Counter

import pytest

from dns_server import Dnsmasq, needs_dnsmasq
from gateway.sip.locate import LocateError, Locator, SrvRecord, order_srv, parse_server


def rec(prio, weight, port, target="t.test"):
    return SrvRecord(prio, weight, port, target)


def test_priority_orders_before_weight():
    records = [rec(20, 100, 3), rec(10, 0, 1), rec(30, 1, 4), rec(10, 0, 2)]
    ordered = order_srv(records, random.Random(1))
    assert [r.priority for r in ordered] == [10, 10, 20, 30]
    assert {r.port for r in ordered[:2]} == {1, 2}


def test_weights_share_first_place_in_proportion():
    records = [rec(10, 60, 1), rec(10, 30, 2), rec(10, 10, 3)]
    rng = random.Random(7)
    first = Counter(order_srv(records, rng)[0].port for _ in range(20000))
    assert abs(first[1] / 20000 - 0.6) < 0.02
    assert abs(first[2] / 20000 - 0.3) < 0.02
    assert abs(first[3] / 20000 - 0.1) < 0.02


def test_zero_weight_is_rarely_first_but_never_lost():
    records = [rec(10, 0, 1), rec(10, 100, 2)]
    rng = random.Random(3)
    orders = [tuple(r.port for r in order_srv(records, rng)) for _ in range(5000)]
    assert set(orders) == {(2, 1), (1, 2)}
    assert orders.count((1, 2)) < 5000 * 0.02   # chance 1/101 (RFC 2782: "a very small chance")


def test_dot_target_means_no_service():
    assert order_srv([rec(10, 0, 5060, ".")]) == []


@pytest.mark.parametrize("value,expected", [("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
                                            ("::1", ("::1", 53)), ("[::1]:5353", ("::1", 5353))])
def test_parse_server(value, expected):
    assert parse_server(value) == expected


def test_parse_server_rejects_a_name():
    with pytest.raises(ValueError):
        parse_server("dns.example.com:53")


RECORDS = ["--srv-host=_sip._udp.trunk.test,uas1.trunk.test,5071,10,60",
           "--srv-host=_sip._udp.trunk.test,uas2.trunk.test,5072,20,0",
           "--srv-host=_sips._tcp.trunk.test,tls.trunk.test,5081,10,0",
           "--host-record=uas1.trunk.test,127.0.0.1", "--host-record=uas2.trunk.test,127.0.0.2",
           "--host-record=tls.trunk.test,127.0.0.3", "--host-record=plain.test,127.0.0.4",
           "--srv-host=_sip._tcp.naptr.test,tcp.trunk.test,5090,10,0", "--host-record=tcp.trunk.test,127.0.0.5",
           "--naptr-record=naptr.test,20,10,s,SIP+D2U,,_sip._udp.trunk.test",
           "--naptr-record=naptr.test,10,10,s,SIP+D2T,,_sip._tcp.naptr.test"]


@needs_dnsmasq
async def test_srv_naptr_and_fallbacks_from_dnsmasq():
    async with Dnsmasq(RECORDS) as dns:
        loc = Locator(dns.server)
        udp = await loc.locate("trunk.test", None, "udp")
        assert [(t.address, t.port, t.name) for t in udp] == [("127.0.0.1", 5071, "uas1.trunk.test"),
                                                              ("127.0.0.2", 5072, "uas2.trunk.test")]
        assert udp[0].via == "SRV _sip._udp.trunk.test"
        tls = await loc.locate("trunk.test", None, "tls")
        assert [t.dest for t in tls] == [("127.0.0.3", 5081, "tls")]
        # NAPTR picks the SRV name of the service matching the trunk's transport, whatever its order
        tcp = await loc.locate("naptr.test", None, "tcp")
        assert [t.dest for t in tcp] == [("127.0.0.5", 5090, "tcp")]
        assert tcp[0].via == "NAPTR SIP+D2T → SRV _sip._tcp.naptr.test"
        udp = await loc.locate("naptr.test", None, "udp")
        assert [t.port for t in udp] == [5071, 5072]
        # no SRV: the host's A record on 5060 / 5061
        assert [t.dest for t in await loc.locate("plain.test", None, "udp")] == [("127.0.0.4", 5060, "udp")]
        assert [t.dest for t in await loc.locate("plain.test", None, "tls")] == [("127.0.0.4", 5061, "tls")]
        # an explicit port or an IP address skips SRV (RFC 3263 §4.2)
        with pytest.raises(LocateError):   # trunk.test has SRV records but no A record
            await loc.locate("trunk.test", 5099, "udp")
        assert [t.dest for t in await loc.locate("uas1.trunk.test", 5099, "udp")] == [("127.0.0.1", 5099, "udp")]
        assert [t.dest for t in await loc.locate("127.0.0.9", None, "udp")] == [("127.0.0.9", 5060, "udp")]
        with pytest.raises(LocateError):
            await loc.locate("missing.test", None, "udp")
