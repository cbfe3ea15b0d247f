"""Cost of the SIP hot path (sip-core layers): parse, serialize, build responses, and whole call signalling.

1. Micro: parse one INVITE with our parser (including the Via/From/To/CSeq validation the layers need) against
   `sipmessage.Message.parse` alone and with the equivalent typed accessors; serialize; make_response.
   CPU time (process_time), best of several repeats, so a busy machine inflates the numbers less.
2. Signalling: two TransactionLayers on real UDP loopback sockets in ONE process, a UAC and a UAS, run
   INVITE → 100/180/200 → ACK → BYE → 200 with N calls in flight. Both ends share the process, so the figure is a
   lower bound for a gateway that only plays the UAS side.

    python bench/sip_core.py [--quick] [--calls 3000] [--concurrency 100] [--no-write]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import table, write_section  # noqa: E402
from gateway.sip.message import SipRequest, make_response, new_branch, new_tag, parse_message  # noqa: E402
from gateway.sip.transaction import TransactionLayer  # noqa: E402
from gateway.sip.transport import SipTransport  # noqa: E402

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")
INVITE = (b"INVITE sip:+15551234567@127.0.0.1:5060 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-524287-1---abcdef;rport\r\n"
          b"Max-Forwards: 70\r\n"
          b"Contact: <sip:alice@127.0.0.1:5061>\r\n"
          b"To: <sip:+15551234567@127.0.0.1>\r\n"
          b"From: \"Alice\" <sip:alice@127.0.0.1:5061>;tag=9fxced76sl\r\n"
          b"Call-ID: 3848276298220188511@127.0.0.1\r\n"
          b"CSeq: 1 INVITE\r\n"
          b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n"
          b"Content-Type: application/sdp\r\n"
          b"Supported: replaces, timer\r\n"
          b"User-Agent: SIPp\r\n"
          b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP)


def cpu_us(fn, n: int, repeat: int) -> float:
    return min(timeit.Timer(fn, timer=time.process_time).repeat(number=n, repeat=repeat)) / n * 1e6


def micro(quick: bool) -> list[list]:
    import sipmessage

    n, rep = (2000, 3) if quick else (10000, 7)
    req = parse_message(INVITE)

    def sm_with_accessors():
        m = sipmessage.Message.parse(INVITE)
        return m.via[0].parameters["branch"], m.from_address.parameters.get("tag"), m.to_address, m.cseq

    def ours_with_accessors():
        m = parse_message(INVITE)
        return m.branch, m.from_tag, m.to, m.cseq

    rows = [
        ["parse INVITE — sipmessage.Message.parse (no validation)",
         cpu_us(lambda: sipmessage.Message.parse(INVITE), n, rep)],
        ["parse INVITE + Via/From/To/CSeq — sipmessage", cpu_us(sm_with_accessors, n, rep)],
        ["parse INVITE + Via/From/To/CSeq — gateway.sip.message", cpu_us(ours_with_accessors, n, rep)],
        ["serialize INVITE — gateway.sip.message", cpu_us(req.to_bytes, n, rep)],
        ["serialize INVITE — sipmessage", cpu_us(sipmessage.Message.parse(INVITE).__bytes__, n, rep)],
        ["make_response(200) + serialize", cpu_us(lambda: make_response(req, 200, to_tag="x").to_bytes(), n, rep)],
    ]
    return [[name, f"{v:.1f}"] for name, v in rows]


async def signalling(calls: int, concurrency: int) -> dict:
    uac_t, uas_t = SipTransport("127.0.0.1", 0), SipTransport("127.0.0.1", 0)
    await uac_t.start()
    await uas_t.start()
    uac, uas = TransactionLayer(uac_t), TransactionLayer(uas_t)
    acks = 0

    def on_request(req, txn):
        if req.method == "INVITE":
            tag = new_tag()
            txn.respond(make_response(req, 180, to_tag=tag))
            txn.respond(make_response(req, 200, to_tag=tag, headers=[("Contact", f"<sip:gw@127.0.0.1:{uas_t.port}>"),
                                                                     ("Content-Type", "application/sdp")], body=SDP))
        else:
            txn.respond(make_response(req, 200))

    def on_ack(ack, addr, conn):
        nonlocal acks
        acks += 1

    uas.on_request = on_request
    uas.on_ack = on_ack
    dest = ("127.0.0.1", uas_t.port)
    failures = 0

    async def one_call(i: int) -> None:
        nonlocal failures
        call_id = f"bench-{i}-{new_tag()}"
        base = [("From", f"<sip:a@127.0.0.1>;tag={new_tag()}"), ("To", f"<sip:+1555{i:07d}@127.0.0.1>"),
                ("Call-ID", call_id), ("Max-Forwards", "70")]
        inv = SipRequest("INVITE", f"sip:+1555{i:07d}@127.0.0.1", base + [("CSeq", "1 INVITE"),
                                                                           ("Contact", "<sip:a@127.0.0.1>"),
                                                                           ("Content-Type", "application/sdp")], SDP)
        resp = await uac.send_request(inv, dest)
        if resp.status != 200:
            failures += 1
            return
        to = resp.headers["To"]
        ack = SipRequest("ACK", f"sip:gw@127.0.0.1:{uas_t.port}", [
            ("Via", uac_t.via(new_branch())), base[0], ("To", to), base[2], ("CSeq", "1 ACK"), base[3]])
        uac.send_ack(ack, dest)
        bye = SipRequest("BYE", f"sip:gw@127.0.0.1:{uas_t.port}", [base[0], ("To", to), base[2],
                                                                    ("CSeq", "2 BYE"), base[3]])
        if (await uac.send_request(bye, dest)).status != 200:
            failures += 1

    sem = asyncio.Semaphore(concurrency)

    async def bounded(i: int) -> None:
        async with sem:
            await one_call(i)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(bounded(i) for i in range(calls))), 300)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await uac_t.stop()
    await uas_t.stop()
    return dict(calls=calls, wall=wall, cpu=cpu, failures=failures, acks=acks,
                retransmissions=uac.stats["retransmissions"] + uas.stats["retransmissions"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    args = ap.parse_args()
    calls = 300 if args.quick else args.calls

    rows = micro(args.quick)
    print(table(["step", "µs CPU"], rows))
    loop_name = "asyncio"
    if args.loop in ("auto", "uvloop"):
        try:
            import uvloop
            uvloop.install()
            loop_name = "uvloop"
        except ImportError:
            if args.loop == "uvloop":
                raise
    res = asyncio.run(signalling(calls, args.concurrency))
    cps_wall = res["calls"] / res["wall"]
    cps_cpu = res["calls"] / res["cpu"]
    sig = table(["loop", "calls", "in flight", "wall s", "CPU s", "calls/s (wall)", "calls/s per CPU-second",
                 "failed", "retransmissions"],
                [[loop_name, res["calls"], args.concurrency, f"{res['wall']:.2f}", f"{res['cpu']:.2f}",
                  f"{cps_wall:.0f}", f"{cps_cpu:.0f}", res["failures"], res["retransmissions"]]])
    print(sig)
    body = ("Parser and builders (per message):\n\n" + table(["step", "µs CPU"], rows) +
            "\n\nCall signalling through two transaction layers on UDP loopback in one process (UAC and UAS both "
            "here: 7 messages per call, INVITE/180/200/ACK/BYE/200 plus parsing on both sides):\n\n" + sig + "\n")
    if not args.no_write:
        write_section("sip-core", "SIP message/transaction layers", body)


if __name__ == "__main__":
    main()
