"""SipTransport on real loopback sockets: UDP and TCP on one ephemeral port, rport/received, 400s, fuzzing."""
from __future__ import annotations

import asyncio
import random
import socket

import pytest

from gateway.sip.message import SipRequest, SipResponse, make_response, parse_message
from gateway.sip.transport import SipTransport, TransportError

INVITE = (b"INVITE sip:+15551234567@127.0.0.1 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 10.9.9.9:5999;branch=z9hG4bK-fuzz;rport\r\n"
          b"Max-Forwards: 70\r\n"
          b"From: \"Alice\" <sip:alice@10.9.9.9>;tag=abc\r\n"
          b"To: <sip:+15551234567@127.0.0.1>\r\n"
          b"Call-ID: fuzz-1@10.9.9.9\r\n"
          b"CSeq: 1 INVITE\r\n"
          b"Contact: <sip:alice@10.9.9.9:5999>\r\n"
          b"Content-Type: application/sdp\r\n"
          b"Content-Length: 40\r\n\r\n"
          b"v=0\r\nm=audio 4000 RTP/AVP 0\r\nt=0 0\r\nxx\r\n")


class Collector:
    def __init__(self):
        self.items: list = []
        self.event = asyncio.Event()

    def __call__(self, msg, addr, conn):
        self.items.append((msg, addr, conn))
        self.event.set()

    async def wait(self, n=1, timeout=3.0):
        async def _w():
            while len(self.items) < n:
                self.event.clear()
                await self.event.wait()
        await asyncio.wait_for(_w(), timeout)
        return self.items[n - 1]


@pytest.fixture
async def transport():
    col = Collector()
    t = SipTransport("127.0.0.1", 0, on_message=col)
    await t.start()
    t.collector = col
    yield t
    await t.stop()


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.queue.put_nowait(data)


async def udp_client():
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
    return tr, proto


async def test_udp_and_tcp_share_the_port(transport):
    assert transport.port > 0
    # Both sockets are bound to the same number.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(("127.0.0.1", transport.port))
    finally:
        s.close()


async def test_udp_request_gets_received_and_rport(transport):
    tr, proto = await udp_client()
    try:
        tr.sendto(INVITE, ("127.0.0.1", transport.port))
        msg, addr, conn = await transport.collector.wait()
        assert isinstance(msg, SipRequest) and conn.protocol == "udp"
        port = tr.get_extra_info("sockname")[1]
        assert addr == ("127.0.0.1", port)
        via = msg.top_via
        assert via.received == "127.0.0.1" and via.rport == port and via.host == "10.9.9.9"
        # The response goes back to received:rport, not to the (unreachable) sent-by 10.9.9.9:5999.
        resp = make_response(msg, 180, to_tag="t1")
        assert transport.response_destination(resp) == (("127.0.0.1", port), "udp")
        await transport.send_response(resp, conn)
        data = await asyncio.wait_for(proto.queue.get(), 3)
        r = parse_message(data)
        assert r.status == 180 and r.to_tag == "t1" and r.top_via.rport == port
    finally:
        tr.close()


async def test_no_rport_uses_sent_by_port_with_received(transport):
    tr, proto = await udp_client()
    try:
        port = tr.get_extra_info("sockname")[1]
        data = INVITE.replace(b"10.9.9.9:5999;branch=z9hG4bK-fuzz;rport", f"127.0.0.1:{port};branch=z9hG4bK-x".encode())
        tr.sendto(data, ("127.0.0.1", transport.port))
        msg, _, _ = await transport.collector.wait()
        assert msg.top_via.received is None  # sent-by already equals the source address
        await transport.send_response(make_response(msg, 100))
        assert parse_message(await asyncio.wait_for(proto.queue.get(), 3)).status == 100
    finally:
        tr.close()


async def test_malformed_udp_request_gets_400_with_reason(transport):
    tr, proto = await udp_client()
    try:
        tr.sendto(INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), ("127.0.0.1", transport.port))
        r = parse_message(await asyncio.wait_for(proto.queue.get(), 3))
        assert r.status == 400 and "does not match" in r.reason and r.call_id == "fuzz-1@10.9.9.9"
        assert "does not match" in r.headers["Warning"]
        # Garbage with no Via cannot be answered: dropped, and the transport still works afterwards.
        tr.sendto(b"HELLO\r\n\r\n", ("127.0.0.1", transport.port))
        tr.sendto(INVITE, ("127.0.0.1", transport.port))
        await transport.collector.wait()
        assert transport.stats["parse_errors"] == 2 and transport.stats["dropped"] == 1
        assert proto.queue.empty()
    finally:
        tr.close()


async def test_tcp_framing_keepalive_and_response_on_same_connection(transport):
    reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
    try:
        tcp_invite = INVITE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        # keep-alive ping, then two messages split at awkward places
        writer.write(b"\r\n\r\n")
        blob = tcp_invite + tcp_invite.replace(b"fuzz-1", b"fuzz-2")
        writer.write(blob[:100])
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(2), 3) == b"\r\n"  # pong
        writer.write(blob[100:])
        await writer.drain()
        m2, _, conn = await transport.collector.wait(2)
        m1 = transport.collector.items[0][0]
        assert (m1.call_id, m2.call_id) == ("fuzz-1@10.9.9.9", "fuzz-2@10.9.9.9") and conn.protocol == "tcp"
        assert m1.body == b"v=0\r\nm=audio 4000 RTP/AVP 0\r\nt=0 0\r\nxx\r\n"
        await transport.send_response(make_response(m2, 486), conn)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        r = parse_message(head)
        assert r.status == 486 and r.call_id == "fuzz-2@10.9.9.9"
        # A broken Content-Length kills the connection (the stream cannot be resynchronised).
        writer.write(tcp_invite.replace(b"Content-Length: 40", b"Content-Length: zz"))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()


async def test_tcp_send_opens_connection_and_reports_failure(transport):
    got = asyncio.Queue()

    async def server(reader, writer):
        got.put_nowait(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    srv = await asyncio.start_server(server, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        req = parse_message(INVITE.replace(b"Content-Length: 40", b"Content-Length: 0").split(b"\r\n\r\n")[0]
                            + b"\r\n\r\n")
        await asyncio.wait_for(transport.send(req, ("127.0.0.1", port), "tcp"), 3)
        data = await asyncio.wait_for(got.get(), 3)
        assert data.startswith(b"INVITE sip:+15551234567@127.0.0.1 SIP/2.0")
    finally:
        srv.close()
        await srv.wait_closed()
    # Nobody listens there any more: the future fails with TransportError, nothing raises synchronously.
    with pytest.raises(TransportError):
        await asyncio.wait_for(transport.send(req, ("127.0.0.1", port), "tcp"), 5)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        i = rng.randrange(len(b)) if b else 0
        if op < 0.3 and b:
            b[i] = rng.randrange(256)
        elif op < 0.5 and b:
            del b[i:i + rng.randint(1, 20)]
        elif op < 0.7:
            b[i:i] = rng.choice([b"\r\n", b":", b",", b"<", b'"', b";", b" ", b"\t", b"\x00", b"\xff", b"=",
                                 b"SIP/2.0", b"Via: x\r\n", b"\r\n\r\n", b"99999999999"])
        elif op < 0.85 and b:
            j = rng.randrange(len(b))
            b[i], b[j] = b[j], b[i]
        else:
            b = b[: rng.randrange(len(b) + 1)]
    return bytes(b)


async def test_fuzzed_invites_never_escape_the_transport(transport):
    """Thousands of random mutations through the real receive path: no exception escapes, no handler sees junk."""
    rng = random.Random(5060)
    seen = []
    transport.on_message = lambda msg, addr, conn: seen.append(msg)
    udp = transport.udp
    for _ in range(3000):
        udp.datagram_received(mutate(rng, INVITE), ("127.0.0.1", 9))  # port 9: discard, replies go nowhere
    assert transport.stats["internal_errors"] == 0 and transport.stats["handler_errors"] == 0
    assert transport.stats["parse_errors"] > 1000  # the mutations really produced malformed input
    for msg in seen:  # everything handed up is well-formed enough for the layers above
        _ = msg.call_id, msg.cseq, msg.top_via, msg.from_, msg.to
    # Same over a real TCP connection: the transport survives and stays usable.
    for _ in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
        writer.write(b"".join(mutate(rng, INVITE.replace(b"UDP", b"TCP")) for _ in range(20)))
        await writer.drain()
        writer.close()
    tr, proto = await udp_client()
    try:
        transport.on_message = transport.collector
        tr.sendto(INVITE, ("127.0.0.1", transport.port))
        msg, _, _ = await transport.collector.wait()
        assert msg.call_id == "fuzz-1@10.9.9.9"
    finally:
        tr.close()
    assert transport.stats["internal_errors"] == 0 and transport.stats["handler_errors"] == 0


async def test_handler_exception_is_contained(transport):
    def boom(msg, addr, conn):
        raise RuntimeError("handler bug")

    transport.on_message = boom
    transport.udp.datagram_received(INVITE, ("127.0.0.1", 9))
    assert transport.stats["handler_errors"] == 1


def test_response_destination_rules():
    def dest(via):
        resp = parse_message((f"SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n"
                              f"Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
        return SipTransport.response_destination(None, resp)

    # UDP: received + rport (RFC 3581 §4), else received + sent-by port, else sent-by, default 5060
    assert dest("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;rport=40000;received=192.0.2.1") == \
        (("192.0.2.1", 40000), "udp")
    assert dest("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;received=192.0.2.1") == (("192.0.2.1", 5070), "udp")
    assert dest("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1") == (("10.0.0.1", 5060), "udp")
    # TCP with the connection gone: received + sent-by port, never the ephemeral rport (RFC 3261 §18.2.2)
    assert dest("SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1;rport=40000;received=192.0.2.1") == \
        (("192.0.2.1", 5070), "tcp")
    assert dest("SIP/2.0/TLS [2001:db8::1];branch=z9hG4bK1") == (("2001:db8::1", 5061), "tls")


async def test_fuzz_through_transport_and_transaction_layer(transport):
    """Mutated requests and responses of every kind through transport + transaction layer + a TU: nothing escapes."""
    from gateway.sip.transaction import TransactionLayer

    layer = TransactionLayer(transport)
    layer.on_request = lambda req, txn: txn.respond(make_response(req, 200, to_tag="fz"))
    layer.on_ack = lambda *a: None
    layer.on_stray_response = lambda *a: None
    seeds = [INVITE]
    for method in ("ACK", "BYE", "CANCEL", "OPTIONS"):
        seeds.append(INVITE.replace(b"INVITE sip:", method.encode() + b" sip:")
                     .replace(b"CSeq: 1 INVITE", b"CSeq: 1 " + method.encode()))
    seeds.append(b"SIP/2.0 180 Ringing\r\n" + INVITE.split(b"\r\n", 1)[1])
    seeds.append(b"SIP/2.0 486 Busy Here\r\n" + INVITE.split(b"\r\n", 1)[1].replace(b"tag=abc", b"tag=abc")
                 .replace(b"To: <sip:+15551234567@127.0.0.1>", b"To: <sip:+15551234567@127.0.0.1>;tag=x"))
    rng = random.Random(3581)
    udp = transport.udp
    for i in range(3000):
        data = mutate(rng, rng.choice(seeds)) if i % 4 else rng.choice(seeds)
        udp.datagram_received(data, ("127.0.0.1", 9))
    await asyncio.sleep(0.05)  # let the TU tasks run
    assert transport.stats["internal_errors"] == 0 and transport.stats["handler_errors"] == 0
    assert layer.stats["tu_errors"] == 0 and layer.stats["server_transactions"] > 10
    assert layer.stats["retransmissions_absorbed"] > 100  # repeated seeds hit existing transactions
    await layer.close()


async def test_ipv6_loopback_via_and_received():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    col = Collector()
    t = SipTransport("::1", 0, on_message=col)
    try:
        await t.start()
    except OSError:
        pytest.skip("IPv6 loopback not available")
    try:
        assert t.via("z9hG4bKx").startswith(f"SIP/2.0/UDP [::1]:{t.port};")
        loop = asyncio.get_running_loop()
        tr, proto = await loop.create_datagram_endpoint(UdpClient, local_addr=("::1", 0))
        try:
            data = INVITE.replace(b"10.9.9.9:5999;branch=z9hG4bK-fuzz;rport", b"[::1]:5999;branch=z9hG4bK-6")
            tr.sendto(data, ("::1", t.port))
            msg, addr, _ = await col.wait()
            assert msg.top_via.host == "[::1]" and msg.top_via.received is None  # same host: no received
            await t.send_response(make_response(msg, 200, to_tag="v6"), None)
        finally:
            tr.close()
    finally:
        await t.stop()


def _self_signed(tmp_path):
    """A throwaway certificate for 127.0.0.1 / localhost (cryptography is installed with aiortc)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_tls_transport_with_transaction_layers(tmp_path):
    import ssl

    from gateway.sip.transaction import TransactionLayer, TransactionTransportError

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    b = SipTransport("127.0.0.1", 0, tls_context=server_ctx, tls_port=0)
    a = SipTransport("127.0.0.1", 0, tls_client_context=ssl.create_default_context(cafile=cert))
    stranger = SipTransport("127.0.0.1", 0)  # default trust store: our self-signed cert must be refused
    for t in (a, b, stranger):
        await t.start()
    try:
        assert b.tls_port and b.tls_port != b.port
        assert b.via("z9hG4bKt", "tls") == f"SIP/2.0/TLS 127.0.0.1:{b.tls_port};branch=z9hG4bKt;rport"
        la, lb, ls = TransactionLayer(a), TransactionLayer(b), TransactionLayer(stranger)
        seen = []

        def uas(req, txn):
            seen.append(txn.conn.protocol)
            txn.respond(make_response(req, 200, to_tag="tls"))

        lb.on_request = uas

        def options(cid):
            return SipRequest("OPTIONS", f"sips:gw@localhost:{b.tls_port}", [
                ("From", "<sips:a@localhost>;tag=1"), ("To", "<sips:gw@localhost>"), ("Call-ID", cid),
                ("CSeq", "1 OPTIONS"), ("Max-Forwards", "70")])

        # by name: resolved by the layer, certificate checked against "localhost"
        resp = await asyncio.wait_for(la.send_request(options("tls-1"), ("localhost", b.tls_port), "tls"), 10)
        assert resp.status == 200 and seen == ["tls"]
        resp = await asyncio.wait_for(la.send_request(options("tls-2"), ("127.0.0.1", b.tls_port), "tls"), 10)
        assert resp.status == 200 and len(seen) == 2
        with pytest.raises(TransactionTransportError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            await asyncio.wait_for(ls.send_request(options("tls-3"), ("127.0.0.1", b.tls_port), "tls"), 10)
        assert len(seen) == 2
    finally:
        for t in (a, b, stranger):
            await t.stop()


async def test_an_unchecked_tls_connection_is_never_reused_for_a_checked_send(tmp_path):
    """A trunk with tls_verify false and one with it on may share an address: the connection opened without a
    certificate check must not carry the checked trunk's requests (it would skip the check)."""
    import ssl

    from gateway.sip.tls import SELF_SIGNED
    from gateway.sip.transaction import TransactionLayer, TransactionTransportError
    from gateway.sip.transport import TlsPeer

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    b = SipTransport("127.0.0.1", 0, tls_context=server_ctx, tls_port=0)
    a = SipTransport("127.0.0.1", 0)      # the system's trust store: the self-signed certificate is not in it
    for t in (a, b):
        await t.start()
    try:
        la, lb = TransactionLayer(a), TransactionLayer(b)
        lb.on_request = lambda req, txn: txn.respond(make_response(req, 200, to_tag="x"))

        def options(cid):
            return SipRequest("OPTIONS", f"sip:gw@127.0.0.1:{b.tls_port};transport=tls", [
                ("From", "<sip:a@127.0.0.1>;tag=1"), ("To", "<sip:gw@127.0.0.1>"), ("Call-ID", cid),
                ("CSeq", "1 OPTIONS"), ("Max-Forwards", "70")])

        dest = ("127.0.0.1", b.tls_port)
        unchecked, checked = TlsPeer("localhost", verify=False), TlsPeer("localhost")
        # both at once (the second must not wait for the first's connection), then the checked one again
        first, second = await asyncio.gather(
            la.send_request(options("u-1"), dest, "tls", tls=unchecked),
            la.send_request(options("c-1"), dest, "tls", tls=checked), return_exceptions=True)
        assert isinstance(first, SipResponse) and first.status == 200
        assert isinstance(second, TransactionTransportError) and second.cause.verdict == SELF_SIGNED
        assert a.connection("tls", dest).tls_peer == unchecked
        with pytest.raises(TransactionTransportError):
            await asyncio.wait_for(la.send_request(options("c-2"), dest, "tls", tls=checked), 10)
        resp = await asyncio.wait_for(la.send_request(options("u-2"), dest, "tls", tls=unchecked), 10)
        assert resp.status == 200           # and the unchecked trunk keeps its connection
    finally:
        for t in (a, b):
            await t.stop()


async def test_a_registration_over_tcp_pings_its_connection_between_refreshes():
    """The trunk sends calls down a TCP/TLS registration's connection: between refreshes it gets RFC 5626 CRLF
    keep-alives, so neither our idle reaper nor a NAT closes it."""
    from gateway.sip.registration import Registration
    from gateway.sip.transaction import TransactionLayer
    from gateway.sip.ua import UserAgent

    registrar, ours = SipTransport("127.0.0.1", 0), SipTransport("127.0.0.1", 0)
    for t in (registrar, ours):
        await t.start()
    layer = TransactionLayer(registrar)
    layer.on_request = lambda req, txn: txn.respond(make_response(
        req, 200, to_tag="r", headers=[("Contact", f"{req.headers.get('Contact')};expires=3600")]))

    class NoStore:
        async def patch_number_status(self, *_):
            return None

    ua = UserAgent(ours, TransactionLayer(ours))
    number = {"id": 1, "config": {"sip_host": "127.0.0.1", "sip_port": registrar.port, "transport": "tcp",
                                  "sip_username": "alice"}, "secrets": {}}
    reg = Registration(ua, number, NoStore())
    reg.keepalive = 0.05
    reg.start()
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 10

        def pings() -> int:
            return sum(c.framer.pings for c in registrar._tcp_conns.values())

        while pings() < 3 and loop.time() < end:
            await asyncio.sleep(0.02)
        assert reg.registered and reg.granted == 3600 and reg.flow == ("tcp", ("127.0.0.1", registrar.port))
        assert pings() >= 3
        assert ours.connection("tcp", ("127.0.0.1", registrar.port)) is not None
    finally:
        await reg.stop(unregister=False)
        await ua.close()
        for t in (registrar, ours):
            await t.stop()


async def test_udp_reads_every_waiting_datagram_when_the_socket_is_readable(transport, monkeypatch):
    """SIP before media: a backlog that built up while the loop was busy is handled at the first readable event,
    not one datagram (asyncio) or 32 (uvloop) per loop iteration behind every RTP socket of a busy worker."""
    from gateway.sip.transport import UdpConnection

    events = []
    handed = UdpConnection.datagram_received

    def counting(self, data, addr):
        events.append(len(transport.collector.items))     # messages handled before this readable event
        handed(self, data, addr)

    monkeypatch.setattr(UdpConnection, "datagram_received", counting)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for k in range(100):    # all queued before the loop runs again: one readable event finds them all
            s.sendto(INVITE.replace(b"fuzz-1@", f"backlog-{k}@".encode()), ("127.0.0.1", transport.port))
        await transport.collector.wait(100)
    assert events == [0], events[:5]
    assert [m.call_id for m, _, _ in transport.collector.items] == [f"backlog-{k}@10.9.9.9" for k in range(100)]
