"""Interop with an independent SIP stack: pyVoIP (a threaded softphone) registers to the gateway and answers the
gateway's outbound call; audio goes both ways and pyVoIP's BYE ends the call."""
import asyncio
import math
import threading
import time

import pytest

from sipp import api, free_port, sip_gateway, sip_number, wait_for

pyvoip = pytest.importorskip("pyVoIP.VoIP")
pytestmark = pytest.mark.timeout(60)

DEADLINE_S = 20


def tone_u8(ms: int, freq: float = 1000.0) -> bytes:
    """pyVoIP speaks 8-bit unsigned linear PCM at 8 kHz."""
    n = 8 * ms
    return bytes(int(128 + 90 * math.sin(2 * math.pi * freq * i / 8000)) for i in range(n))


class Phone:
    """Runs pyVoIP's callback in its own thread; everything it does is bounded by DEADLINE_S."""

    def __init__(self):
        self.answered = threading.Event()
        self.done = threading.Event()
        self.heard_peak = 0
        self.sent_ms = 0
        self.error: BaseException | None = None

    def on_call(self, call):
        try:
            call.answer()
            self.answered.set()
            end = time.monotonic() + 3.0
            chunk = tone_u8(20)
            while time.monotonic() < end:
                call.write_audio(chunk)
                self.sent_ms += 20
                data = call.read_audio(160, blocking=False)
                if data:
                    self.heard_peak = max(self.heard_peak, max(abs(b - 128) for b in data))
                time.sleep(0.02)
            call.hangup()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.done.set()


async def test_pyvoip_registers_answers_and_hangs_up(make_gateway):
    from pyVoIP.VoIP import PhoneStatus, VoIPPhone

    gw = await sip_gateway(make_gateway)
    phone_port = free_port()
    num = await sip_number(gw, sip_port=phone_port, sip_username="pyvoip", sip_password="pw")
    phone = Phone()
    voip = VoIPPhone("127.0.0.1", gw.carriers["sip"].port, "pyvoip", "pw", myIP="127.0.0.1",
                     callCallback=phone.on_call, sipPort=phone_port, rtpPortLow=62000, rtpPortHigh=62400)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, voip.start), 10)
        await wait_for(lambda: voip.get_status() == PhoneStatus.REGISTERED, 10)
        status = (await api(gw, "GET", f"/phone_number/{num['id']}", expect=200))["phone_number"]["status"]
        assert status["inbound_registration"]["contact"].startswith("sip:pyvoip@127.0.0.1")

        d = await api(gw, "POST", "/calls/dispatch", {"agent_id": num["agent_id"], "from_number_id": num["id"],
                                                       "to_number": "+15559876543"}, expect=200)
        assert await loop.run_in_executor(None, phone.done.wait, DEADLINE_S), "pyVoIP call did not finish"
        assert phone.error is None, phone.error

        async def ended():
            row = await gw.store.get_call(d["requestId"])
            return row if row and row.get("ended_at") else None
        row = await wait_for(ended, 10)
    finally:
        await asyncio.wait_for(loop.run_in_executor(None, voip.stop), 10)
    assert row["call_status"] == "completed"
    assert row["hangup_source"] == "user"          # pyVoIP sent the BYE
    assert row["extra"]["rtp"]["received"] >= 50   # pyVoIP's tone reached the gateway
    assert phone.heard_peak > 40                   # ... and the echo engine's copy reached pyVoIP
