"""Dialog state (RFC 3261 §12): route sets, CSeq ordering, tags, loose vs strict routing."""
from gateway.sip.dialog import Dialog
from gateway.sip.message import parse_message

INVITE = (
    b"INVITE sip:+15550001111@gw.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy2.example.com;branch=z9hG4bK2\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1\r\n"
    b"Record-Route: <sip:proxy2.example.com;lr>\r\n"
    b"Record-Route: <sip:proxy1.example.com:5070;lr>\r\n"
    b"From: \"Alice\" <sip:+15557654321@carrier.example.com>;tag=abc\r\n"
    b"To: <sip:+15550001111@gw.example.com>\r\n"
    b"Call-ID: call-1@carrier\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.1:5062>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_uas_dialog_and_bye():
    inv = parse_message(INVITE)
    d = Dialog.as_uas(inv, "ourtag", source=("10.0.0.1", 5062))
    assert d.id == ("call-1@carrier", "ourtag", "abc")
    assert d.remote_target == "sip:alice@10.0.0.1:5062"
    assert d.next_hop() == ("proxy2.example.com", 5060, "udp")
    start = d.local_cseq
    bye = d.new_request("BYE", ("192.0.2.10", 5060), headers=[("Reason", 'SIP;cause=200;text="done"')])
    assert bye.uri == "sip:alice@10.0.0.1:5062"
    assert bye.headers.getlist("Route") == ["<sip:proxy2.example.com;lr>", "<sip:proxy1.example.com:5070;lr>"]
    assert bye.cseq == (start + 1, "BYE")
    assert bye.from_tag == "ourtag" and bye.to_tag == "abc"
    assert bye.to.uri == "sip:+15557654321@carrier.example.com"
    assert bye.top_via.branch.startswith("z9hG4bK")
    # serialises and parses back
    assert parse_message(bye.to_bytes()).cseq == bye.cseq


def test_remote_cseq_ordering_and_target_refresh():
    d = Dialog.as_uas(parse_message(INVITE), "t")
    reinv = parse_message(INVITE.replace(b"CSeq: 10 INVITE", b"CSeq: 11 INVITE")
                          .replace(b"To: <sip:+15550001111@gw.example.com>", b"To: <sip:x@gw>;tag=t")
                          .replace(b"alice@10.0.0.1:5062", b"alice@10.0.0.9:5062"))
    assert d.accept_request(reinv)
    assert d.remote_target == "sip:alice@10.0.0.9:5062"
    old = parse_message(INVITE.replace(b"CSeq: 10 INVITE", b"CSeq: 9 BYE").replace(b"INVITE sip", b"BYE sip"))
    assert not d.accept_request(old)


def test_uac_dialog_reverses_route_set_and_strict_routing():
    inv = parse_message(INVITE)
    resp = parse_message(
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1\r\n"
        b"Record-Route: <sip:p2.example.com;lr>\r\n"
        b"Record-Route: <sip:p1.example.com>\r\n"
        b"From: <sip:a@x>;tag=abc\r\nTo: <sip:b@y>;tag=remote\r\nCall-ID: call-1@carrier\r\n"
        b"CSeq: 10 INVITE\r\nContact: <sip:b@203.0.113.9:5080>\r\nContent-Length: 0\r\n\r\n")
    d = Dialog.as_uac(inv, resp)
    assert d.id == ("call-1@carrier", "abc", "remote")
    assert d.route_set == ["<sip:p1.example.com>", "<sip:p2.example.com;lr>"]
    # p1 is a strict router: it becomes the Request-URI and the target goes last
    req = d.new_request("BYE", ("192.0.2.1", 5060))
    assert req.uri == "sip:p1.example.com"
    assert req.headers.getlist("Route") == ["<sip:p2.example.com;lr>", "<sip:b@203.0.113.9:5080>"]
    ack = d.new_request("ACK", ("192.0.2.1", 5060), cseq=10)
    assert ack.cseq == (10, "ACK")
