"""Parser/serializer tests: tolerant where RFC 3261 asks for robustness, strict where matching depends on it."""
from __future__ import annotations

import pytest

from gateway.sip.message import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    SipUri,
    Via,
    make_response,
    new_branch,
    parse_message,
    split_header_list,
)

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def invite(extra: bytes = b"", body: bytes = SDP, cl: int | None = None) -> bytes:
    cl = len(body) if cl is None else cl
    return (b"INVITE sip:+15551234567@127.0.0.1:5060 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK-abc;rport\r\n"
            b"Max-Forwards: 70\r\n"
            b"Contact: <sip:alice@10.0.0.1:5061>\r\n"
            b"To: <sip:+15551234567@127.0.0.1>\r\n"
            b"From: \"Alice, A.\" <sip:alice@10.0.0.1:5061>;tag=9fxced76sl\r\n"
            b"Call-ID: 3848276298220188511@10.0.0.1\r\n"
            b"CSeq: 1 INVITE\r\n"
            + extra +
            b"Content-Type: application/sdp\r\n"
            b"Content-Length: " + str(cl).encode() + b"\r\n\r\n" + body)


def test_parse_invite_accessors():
    m = parse_message(invite())
    assert isinstance(m, SipRequest)
    assert m.method == "INVITE" and m.uri == "sip:+15551234567@127.0.0.1:5060"
    assert m.call_id == "3848276298220188511@10.0.0.1"
    assert m.cseq == (1, "INVITE")
    assert m.from_.display == "Alice, A." and m.from_.uri == "sip:alice@10.0.0.1:5061"
    assert m.from_tag == "9fxced76sl" and m.to_tag is None
    assert m.top_via.transport == "UDP" and m.top_via.host == "10.0.0.1" and m.top_via.port == 5061
    assert m.branch == "z9hG4bK-abc" and "rport" in m.top_via.params and m.top_via.rport is None
    assert m.body == SDP and m.content_type == "application/sdp" and m.max_forwards == 70
    assert m.request_uri.user == "+15551234567" and m.request_uri.port == 5060
    assert m.contacts[0].uri == "sip:alice@10.0.0.1:5061"


def test_compact_forms_case_and_folding():
    data = (b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
            b"v: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1\r\n"
            b"f: <sip:a@x>;tag=1\r\n"
            b"t: <sip:b@y>\r\n"
            b"i: abc\r\n"
            b"cseq: 7 OPTIONS\r\n"
            b"k: timer,\r\n  replaces\r\n"          # folded continuation line
            b"SUBJECT: hello\r\n\tworld\r\n"
            b"m: <sip:a@10.0.0.1>\r\n"
            b"l: 0\r\n\r\n")
    m = parse_message(data)
    assert m.call_id == "abc" and m.cseq == (7, "OPTIONS")
    assert m.headers.getlist("Supported") == ["timer", "replaces"]
    assert m.headers["subject"] == "hello world"
    assert m.headers.get("CONTACT") == "<sip:a@10.0.0.1>"
    assert m.top_via.transport == "TCP" and m.top_via.port is None
    assert m.max_forwards is None  # tolerated when missing
    out = m.to_bytes()
    assert b"Call-ID: abc\r\n" in out and b"Supported: timer, replaces\r\n" in out
    assert parse_message(out).headers.getlist("supported") == ["timer", "replaces"]


def test_multiple_via_in_one_header_and_several():
    data = invite(extra=b"").replace(
        b"Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK-abc;rport\r\n",
        b"Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK-abc;rport, SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp\r\n"
        b"v: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKq;received=1.2.3.4\r\n")
    m = parse_message(data)
    vias = m.vias
    assert [v.host for v in vias] == ["10.0.0.1", "proxy.example.com", "[2001:db8::1]"]
    assert vias[2].port == 5070 and vias[2].received == "1.2.3.4"
    resp = make_response(m, 200)
    assert [v.branch for v in parse_message(resp.to_bytes()).vias] == ["z9hG4bK-abc", "z9hG4bKp", "z9hG4bKq"]


def test_split_not_inside_quotes_or_brackets():
    v = '"Doe, John" <sip:j@x;a=1,2>;q=0.5, <sip:k@y>, sip:z@w;expires=10'
    assert split_header_list(v) == ['"Doe, John" <sip:j@x;a=1,2>;q=0.5', "<sip:k@y>", "sip:z@w;expires=10"]
    m = parse_message(invite(extra=b"Contact: " + v.encode() + b"\r\n"))
    assert [c.uri for c in m.contacts] == ["sip:alice@10.0.0.1:5061", "sip:j@x;a=1,2", "sip:k@y", "sip:z@w"]
    assert m.contacts[3].params == {"expires": "10"}
    # Auth headers are not lists: their commas stay.
    m = parse_message(invite(extra=b'Authorization: Digest username="a", realm="r", qop=auth\r\n'))
    assert m.headers.getlist("authorization") == ['Digest username="a", realm="r", qop=auth']


def test_bare_lf_and_leading_crlf_tolerated():
    head, body = invite().split(b"\r\n\r\n", 1)
    m = parse_message(b"\r\n\r\n" + head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert m.body == SDP
    assert m.method == "INVITE" and m.cseq == (1, "INVITE")


def test_udp_extra_bytes_truncated_and_short_body_rejected():
    m = parse_message(invite(body=SDP + b"garbage", cl=len(SDP)))
    assert m.body == SDP
    with pytest.raises(SipParseError, match="shorter than Content-Length"):
        parse_message(invite(cl=len(SDP) + 10))
    m = parse_message(invite().replace(b"Content-Length: 128\r\n", b""))
    assert m.body == SDP  # no Content-Length on UDP: body runs to the end of the datagram


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), "does not match"),
    (lambda d: d.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), "malformed CSeq"),
    (lambda d: d.replace(b"CSeq: 1 INVITE", b"CSeq: 4294967296 INVITE"), "CSeq"),
    (lambda d: d.replace(b"Call-ID: 3848276298220188511@10.0.0.1\r\n", b""), "missing Call-ID"),
    (lambda d: d.replace(b"Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK-abc;rport\r\n", b""), "missing Via"),
    (lambda d: d.replace(b"To: <sip:+15551234567@127.0.0.1>\r\n", b""), "missing To"),
    (lambda d: d.replace(b"From: ", b"From: <sip:broken"), "malformed From"),
    (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: lots"), "Max-Forwards"),
    (lambda d: d.replace(b"Content-Length: 128", b"Content-Length: -3"), "Content-Length"),
    (lambda d: d.replace(b"SIP/2.0/UDP 10.0.0.1:5061", b"SIP/2.0/UDP"), "Via"),
    (lambda d: d.replace(b"INVITE sip:", b"INVITE  "), "Request-URI"),
    (lambda d: d.replace(b"5060 SIP/2.0", b"5060 SIP/2.0 x"), "request line"),
    (lambda d: d[:200], "blank line"),
    (lambda d: d.replace(b"Max-Forwards: 70", b"Max Forwards 70"), "header"),
])
def test_malformed_requests_give_reasons(mutate, reason):
    with pytest.raises(SipParseError, match=reason) as ei:
        parse_message(mutate(invite()))
    assert ei.value.status == 400


def test_wrong_version_is_505_with_partial():
    with pytest.raises(SipParseError) as ei:
        parse_message(invite().replace(b"5060 SIP/2.0", b"5060 SIP/3.0"))
    assert ei.value.status == 505


def test_partial_message_available_for_400():
    with pytest.raises(SipParseError) as ei:
        parse_message(invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"))
    p = ei.value.partial
    assert isinstance(p, SipRequest) and p.top_via.branch == "z9hG4bK-abc"


def test_response_parse_and_make_response():
    req = parse_message(invite(extra=b"Timestamp: 54\r\n"))
    trying = make_response(req, 100, to_tag="abc")
    assert trying.reason == "Trying" and trying.headers["Timestamp"] == "54" and trying.to.tag is None
    ok = make_response(req, 200, to_tag="xyz", headers=[("Contact", "<sip:gw@127.0.0.1>"),
                                                       ("Content-Type", "application/sdp")], body=SDP)
    raw = ok.to_bytes()
    assert raw.startswith(b"SIP/2.0 200 OK\r\n") and raw.endswith(SDP)
    r = parse_message(raw)
    assert isinstance(r, SipResponse) and r.status == 200 and r.reason == "OK"
    assert r.to_tag == "xyz" and r.from_tag == "9fxced76sl" and r.cseq == (1, "INVITE")
    assert r.call_id == req.call_id and r.headers["content-length"] == str(len(SDP))
    # A To that already has a tag keeps it.
    req2 = parse_message(invite().replace(b"To: <sip:+15551234567@127.0.0.1>", b"To: <sip:b@y>;tag=old"))
    assert make_response(req2, 200, to_tag="new").to_tag == "old"


def test_response_reason_phrase_kept_even_unusual():
    data = (b"SIP/2.0 486 Busy Here Right Now\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n")
    r = parse_message(data)
    assert r.status == 486 and r.reason == "Busy Here Right Now"
    with pytest.raises(SipParseError):
        parse_message(data.replace(b"486", b"86"))
    with pytest.raises(SipParseError, match="response without Call-ID"):
        parse_message(data.replace(b"Call-ID: x\r\n", b""))


def test_via_and_nameaddr_roundtrip():
    v = Via.parse("SIP / 2.0 / udp 1.2.3.4:5060 ; branch=z9hG4bKx;RPORT")
    assert v.transport == "UDP" and v.port == 5060 and v.params == {"branch": "z9hG4bKx", "rport": None}
    v.params["rport"] = "5062"
    v.params["received"] = "9.9.9.9"
    assert str(v) == "SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bKx;rport=5062;received=9.9.9.9"
    assert Via.parse(str(v)).rport == 5062
    na = NameAddr.parse('"Bob \\"B\\"" <sip:bob@h>;tag=7')
    assert na.display == 'Bob "B"' and na.tag == "7"
    assert NameAddr.parse(str(na)) == na
    assert NameAddr.parse("sip:bob@h;tag=9").params == {"tag": "9"}
    assert SipUri.parse("SIP:alice@example.com:5070;transport=tcp").params == {"transport": "tcp"}
    with pytest.raises(SipParseError):
        SipUri.parse("not a uri")


def test_headers_store():
    h = Headers([("Route", "<sip:p1;lr>, <sip:p2;lr>"), ("X-Foo", "1")])
    assert h.getlist("route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    h.prepend("Route", "<sip:p0;lr>")
    h.add("x-foo", "2")
    assert h.getlist("ROUTE")[0] == "<sip:p0;lr>" and h.getlist("X-FOO") == ["1", "2"]
    h.add("Supported", "100rel, timer")
    h.add("k", "replaces")
    assert h.get("supported") == "100rel" and h.joined("Supported") == "100rel, timer, replaces"
    assert h.joined("Require") is None and h.joined("Require", "") == ""
    h.set("X-Foo", "3")
    assert ("X-Foo", "3") in list(h.items()) and h.getlist("x-foo") == ["3"] and "x-foo" in h
    h.remove("route")
    assert "Route" not in h and h.get("route") is None
    with pytest.raises(KeyError):
        h["Route"]


def test_new_message_serializes_content_length():
    req = SipRequest("OPTIONS", "sip:b@127.0.0.1", [("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()}"),
                                                    ("From", "<sip:a@h>;tag=1"), ("To", "<sip:b@h>"),
                                                    ("Call-ID", "c1"), ("CSeq", "1 OPTIONS"),
                                                    ("Content-Length", "999")])
    raw = req.to_bytes()
    assert raw.count(b"Content-Length") == 1 and raw.endswith(b"Content-Length: 0\r\n\r\n")
    assert parse_message(raw).branch.startswith("z9hG4bK")


def test_stream_parser_framing():
    sp = SipStreamParser()
    msg = invite()
    data = b"\r\n\r\n" + msg + msg + b"\r\n"
    out = []
    for i in range(0, len(data), 7):  # dribble in 7-byte pieces
        out += sp.feed(data[i:i + 7])
    assert out == [msg, msg] and sp.pings == 1 and sp.buffered == 0
    assert sp.feed(msg[:50]) == [] and sp.buffered == 50
    with pytest.raises(SipParseError, match="Content-Length"):
        SipStreamParser().feed(invite().replace(b"Content-Length: 128", b"Content-Length: x") )
    with pytest.raises(SipParseError, match="too large"):
        SipStreamParser().feed(b"INVITE " + b"a" * 70000)


# --- RFC 4475 torture-test style messages (reconstructed; the names follow RFC 4475 §3.1) ----------------------

WSINV_BODY = (b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\n"
              b"m=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n")
WSINV = (b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
         b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
         b"from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n"
         b"MaX-fOrWaRdS: 0068\r\n"
         b"Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
         b"Content-Length   : " + str(len(WSINV_BODY)).encode() + b"\r\n"
         b"cseq: 0009\r\n  INVITE\r\n"
         b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n"
         b"s :\r\n"
         b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
         b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
         b"Content-Type: application/sdp\r\n"
         b"Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n"
         b"v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n"
         b" SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n"
         b"m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n"
         b"  secondparam ; q = 0.33\r\n\r\n" + WSINV_BODY)


def test_rfc4475_wsinv_short_tortuous_invite():
    m = parse_message(WSINV)
    assert m.method == "INVITE" and m.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.to.uri == "sip:vivekg@chair-dnrc.example.com" and m.to_tag == "1918181833n"
    assert m.from_.display == 'J Rosenberg \\"' and m.from_tag == "98asjd8"
    assert m.max_forwards == 68 and m.cseq == (9, "INVITE") and m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    assert m.headers["Subject"] == "" and m.headers["newfangledheader"] == (
        "newfangled value continued newfangled value")
    assert m.headers["UnknownHeaderWithUnusualValue"] == ";;,,;;,;"
    c = m.contacts[0]
    assert c.display == 'Quoted string ""' and c.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.body == WSINV_BODY
    # And it survives a round trip through our serializer.
    again = parse_message(m.to_bytes())
    assert again.vias == m.vias and again.from_ == m.from_ and again.contacts == m.contacts


BASE = (b"OPTIONS sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        b"To: sip:user@example.com\r\nFrom: <sip:caller@example.com>;tag=323\r\nMax-Forwards: 70\r\n"
        b"Call-ID: t1@192.0.2.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def test_rfc4475_valid_oddities():
    # lwsdisp: no LWS between display name and <
    m = parse_message(BASE.replace(b"From: <sip:caller", b"From: caller<sip:caller"))
    assert m.from_.display == "caller" and m.from_tag == "323"
    # semiuri: ';' and escaped '@' inside the user part
    m = parse_message(BASE.replace(b"To: sip:user@example.com", b"To: <sip:user;par=u%40example.net@example.com>"))
    assert m.to.uri == "sip:user;par=u%40example.net@example.com" and m.to.params == {}
    # RFC 2543 peer (no magic cookie), unknown method whose CSeq matches, Max-Forwards 0
    m = parse_message(BASE.replace(b"branch=z9hG4bK1", b"branch=old").replace(b"OPTIONS", b"NEWMETHOD")
                      .replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
    assert m.method == "NEWMETHOD" and m.branch == "old" and m.max_forwards == 0
    # unknown URI scheme in the Request-URI is syntactically fine (the UA answers 416)
    assert parse_message(BASE.replace(b"OPTIONS sip:user@example.com", b"OPTIONS nobodyKnowsThisScheme:opaque"))


@pytest.mark.parametrize("name,data,reason", [
    ("quotbal", BASE.replace(b"To: sip:user@example.com", b'To: "Mr. J. User <sip:j.user@example.com>'),
     "unterminated"),
    ("ltgtruri", BASE.replace(b"OPTIONS sip:user@example.com", b"OPTIONS <sip:user@example.com>"), "Request-URI"),
    ("lwsruri", BASE.replace(b"OPTIONS sip:user@example.com", b"OPTIONS sip:user@example.com; lr"), "request line"),
    ("multi01", BASE.replace(b"Call-ID: t1@192.0.2.1\r\n", b"Call-ID: t1@192.0.2.1\r\nCall-ID: t2@192.0.2.1\r\n"),
     "more than one Call-ID"),
    ("mcl01", BASE.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 81\r\n"),
     "more than one Content-Length"),
    ("scalar02 Max-Forwards", BASE.replace(b"Max-Forwards: 70", b"Max-Forwards: 300"), "Max-Forwards"),
    ("scalar02 CSeq", BASE.replace(b"CSeq: 1 OPTIONS", b"CSeq: 36893488147419103232 OPTIONS"), "CSeq"),
    ("ncl", BASE.replace(b"Content-Length: 0", b"Content-Length: -999"), "Content-Length"),
    ("insuf", BASE.replace(b"Call-ID: t1@192.0.2.1\r\n", b"").replace(b"To: sip:user@example.com\r\n", b""),
     "missing"),
    ("bigcode", b"SIP/2.0 4294967301 better not break the receiver\r\n" + BASE.split(b"\r\n", 1)[1], "status line"),
])
def test_rfc4475_invalid_messages(name, data, reason):
    with pytest.raises(SipParseError, match=reason):
        parse_message(data)


def test_rfc4475_badvers_is_505_and_stream_conflicting_lengths():
    with pytest.raises(SipParseError) as ei:
        parse_message(BASE.replace(b"example.com SIP/2.0", b"example.com SIP/7.0"))
    assert ei.value.status == 505 and ei.value.partial is not None  # the transport can still answer
    with pytest.raises(SipParseError, match="conflicting Content-Length"):
        SipStreamParser().feed(BASE.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 4\r\n") + b"abcd")
