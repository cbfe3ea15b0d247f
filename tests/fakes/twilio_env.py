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
    route: str = "/twilio"                       # /signalwire for the SignalWire carrier
    signature_header: str = "X-Twilio-Signature"
    signing_key: str | None = None               # SignalWire's Signing Key, when the number has one

    @property
    def key(self) -> str:
        """What the carrier signs webhooks with."""
        return self.signing_key or self.account.token

    def http(self, path: str) -> str:
        return self.gw.url(path)

    def ws_url(self, path: str | None = None) -> str:
        return f"ws://127.0.0.1:{self.gw.http_port}{path or self.route + '/media'}"

    async def set_agent(self, **fields: Any) -> None:
        self.agent = await self.gw.store.update_agent(self.agent["id"], fields)

    async def inbound(self, *, call_sid: str | None = None, to: str = NUMBER) -> tuple[str, str, str]:
        """Twilio's voice webhook for a new inbound call: returns (call_id, call_sid, twiml)."""
        call_sid = call_sid or self.rest.add_call(self.account)
        status, body = await post_signed(self.http(self.route + "/voice"), {
            "CallSid": call_sid, "AccountSid": self.account.sid, "From": CALLER, "To": to,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}, self.key,
            header=self.signature_header)
        assert status == 200, body
        m = re.search(r'<Parameter name="call_id" value="([0-9a-f]+)"', body)
        return (m.group(1) if m else ""), call_sid, body

    def stream(self, **kw: Any) -> TwilioStreamClient:
        return TwilioStreamClient(self.ws_url(), **kw)

    async def callback(self, path: str, params: dict[str, str], **kw: Any) -> tuple[int, str]:
        params = {"AccountSid": self.account.sid, **params}
        kw.setdefault("header", self.signature_header)
        return await post_signed(self.http(path), params, self.key, **kw)

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


@dataclass(frozen=True)
class Flavour:
    """What differs between the Twilio and the SignalWire set-up."""

    name: str
    carrier: type
    rest: type
    stored: Any        # (account, signing_key) → (config, secrets) of the imported number
    signature_header: str = "X-Twilio-Signature"


TWILIO = Flavour("twilio", TwilioCarrier, FakeTwilioRest,
                 lambda acc, _key: ({"account_sid": acc.sid}, {"account_token": acc.token}))


def env_fixture(flavour: Flavour) -> Any:
    """A pytest fixture: `env = await fixture(settings={...}, engine="echo", signing_key=None)`."""

    @pytest_asyncio.fixture
    async def fixture(make_gateway):
        rests: list[FakeTwilioRest] = []
        gateways: list[Gateway] = []

        async def factory(*, engine: str = "echo", settings: dict[str, Any] | None = None,
                          signing_key: str | None = None, **gw_overrides: Any) -> TwilioEnv:
            rest = await flavour.rest().start()
            rests.append(rest)
            gw = await make_gateway(carriers={flavour.name: flavour.carrier}, engine="echo", **gw_overrides)
            gateways.append(gw)
            carrier = gw.carriers[flavour.name]
            carrier.api_base_url = rest.url + rest.prefix
            account = rest.add_account(numbers=(NUMBER,))
            agent = await gw.store.create_agent({"name": f"{flavour.name} agent", "engine": engine,
                                                 "settings": settings or {}})
            config, secrets = flavour.stored(account, signing_key)
            number = await gw.store.create_number(
                {"phone_number": NUMBER, "provider": flavour.name, "agent_id": agent["id"], "config": config},
                secrets)
            return TwilioEnv(gw, carrier, rest, account, agent, number, route=f"/{flavour.name}",
                             signature_header=flavour.signature_header, signing_key=signing_key)

        yield factory
        for gw in gateways:          # before the fake REST goes away: shutdown hangs calls up over REST
            if gw.started:
                await gw.stop()
        for r in rests:
            await r.stop()

    return fixture


twilio_env = env_fixture(TWILIO)
