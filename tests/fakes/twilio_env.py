"""Shared set-up for the Twilio tests: a gateway with the real TwilioCarrier, the fake Twilio REST server, one
Twilio account with an imported number bound to an agent, and helpers to drive calls the way Twilio does."""
from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Any

import pytest_asyncio

from carriers.twilio import TwilioCarrier
from gateway.runtime import Gateway

from gateway.simulate.twilio_stream import TwilioStreamClient, post_signed
from .twilio_rest import FakeAccount, FakeTwilioRest

NUMBER = "+15005550006"
CALLER = "+14155550100"
RECORDING = os.path.join(os.path.dirname(__file__), "..", "data", "twilio_hello.ulaw")


@dataclass
class TwilioEnv:
    gw: Gateway
    carrier: TwilioCarrier
    rest: FakeTwilioRest
    account: FakeAccount
    agent: dict[str, Any]
    number: dict[str, Any]

    def http(self, path: str) -> str:
        return self.gw.url(path)

    def ws_url(self, path: str = "/twilio/media") -> str:
        return f"ws://127.0.0.1:{self.gw.http_port}{path}"

    async def set_agent(self, **fields: Any) -> None:
        self.agent = await self.gw.store.update_agent(self.agent["id"], fields)

    async def inbound(self, *, call_sid: str | None = None, to: str = NUMBER) -> tuple[str, str, str]:
        """Twilio's voice webhook for a new inbound call: returns (call_id, call_sid, twiml)."""
        call_sid = call_sid or self.rest.add_call(self.account)
        status, body = await post_signed(self.http("/twilio/voice"), {
            "CallSid": call_sid, "AccountSid": self.account.sid, "From": CALLER, "To": to,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}, self.account.token)
        assert status == 200, body
        m = re.search(r'<Parameter name="call_id" value="([0-9a-f]+)"', body)
        return (m.group(1) if m else ""), call_sid, body

    def stream(self, **kw: Any) -> TwilioStreamClient:
        return TwilioStreamClient(self.ws_url(), **kw)

    async def callback(self, path: str, params: dict[str, str], **kw: Any) -> tuple[int, str]:
        params = {"AccountSid": self.account.sid, **params}
        return await post_signed(self.http(path), params, self.account.token, **kw)

    async def row(self, call_id: str) -> dict[str, Any]:
        return await self.gw.store.find_call(call_uuid=call_id)

    async def wait_row(self, call_id: str, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while True:
                r = await self.row(call_id)
                if r is not None and pred(r):
                    return r
                await asyncio.sleep(0.02)
        return await asyncio.wait_for(loop(), timeout)


def recording() -> bytes:
    with open(RECORDING, "rb") as f:
        return f.read()


@pytest_asyncio.fixture
async def twilio_env(make_gateway):
    """`env = await twilio_env(settings={...}, engine="echo")`."""
    rests: list[FakeTwilioRest] = []
    gateways: list[Gateway] = []

    async def factory(*, engine: str = "echo", settings: dict[str, Any] | None = None,
                      **gw_overrides: Any) -> TwilioEnv:
        rest = await FakeTwilioRest().start()
        rests.append(rest)
        gw = await make_gateway(carriers={"twilio": TwilioCarrier}, engine="echo", **gw_overrides)
        gateways.append(gw)
        carrier = gw.carriers["twilio"]
        carrier.api_base_url = rest.url
        carrier.start_timeout = 0.5
        account = rest.add_account(numbers=(NUMBER,))
        agent = await gw.store.create_agent({"name": "twilio agent", "engine": engine, "settings": settings or {}})
        number = await gw.store.create_number(
            {"phone_number": NUMBER, "provider": "twilio", "agent_id": agent["id"],
             "config": {"account_sid": account.sid}}, {"account_token": account.token})
        return TwilioEnv(gw, carrier, rest, account, agent, number)

    yield factory
    for gw in gateways:          # before the fake REST goes away: shutdown hangs calls up over REST
        if gw.started:
            await gw.stop()
    for r in rests:
        await r.stop()
