"""Fake carriers with the seed API's import fields (sip, twilio, exotel) and a real HTTP client helper, shared by
the API, webhook and CLI tests. The real carriers live in carriers/ and have their own tests."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest_asyncio

from gateway.carrier import Carrier, CarrierError
from gateway.carrier import ImportField as F
from gateway.frames import TransferRequest, TransferResult

SIP_PASSWORD = "s3cr3t-Pa55word!"
TWILIO_TOKEN = "twilio-auth-token-0123456789"
EXOTEL_TOKEN = "exotel-api-token-abcdef"


class FakeLeg:
    """A carrier leg of an in-process call: records what the core asks of it (hangups, transfers) and completes
    every transfer at once (the API, webhook, engine and pipecat tests share it)."""

    def __init__(self) -> None:
        self.hangups: list[str] = []
        self.transfers: list[TransferRequest] = []

    async def hangup(self, call, reason: str) -> None:
        self.hangups.append(reason)

    async def transfer(self, call, request: TransferRequest) -> None:
        self.transfers.append(request)
        await call.transfer_finished(TransferResult(request.number, "completed"))


class RecordingCarrier(Carrier):
    """Answers dispatched calls at once (attach + a pump that plays the carrier side) and records what it saw."""

    def __init__(self, gateway) -> None:
        super().__init__(gateway)
        self.imported: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []
        self.validated: list[dict[str, Any]] = []
        self.tested: list[dict[str, Any]] = []
        self.dispatched: list[tuple[Any, dict[str, Any], str]] = []
        self.legs: dict[str, FakeLeg] = {}
        self._pumps: list[asyncio.Task] = []

    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        self.validated.append(dict(fields))
        if fields.get("name") == "reject":
            secret = next((fields[f.name] for f in self.import_fields if f.secret), "")
            raise CarrierError(f"carrier rejected the credentials (password {secret} refused)", 401)
        return fields

    async def on_number_imported(self, number: dict[str, Any]) -> None:
        self.imported.append(number)
        if number.get("name") == "explode-on-import":
            raise CarrierError("registration settings refused", 400)

    async def on_number_deleted(self, number: dict[str, Any]) -> None:
        self.deleted.append(number)

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        self.tested.append(dict(fields))
        if fields.get("name") == "unreachable":
            raise CarrierError("no answer from the trunk within 2 s", 502)
        secret = next((fields.get(f.name) for f in self.import_fields if f.secret), None)
        return {"ok": True, "steps": [{"step": "auth", "ok": True, "detail": f"used {secret}"}],
                "seen": sorted(k for k, v in fields.items() if v is not None)}

    async def dispatch(self, call, number: dict[str, Any], to_number: str) -> None:
        self.dispatched.append((call, number, to_number))
        if to_number.endswith("0000"):
            secret = next(iter((number.get("secrets") or {}).values()), "")
            raise CarrierError(f"carrier refused the destination (auth {secret})", 502)
        leg = self.legs[call.id] = FakeLeg()
        await call.attach(leg, carrier_rate=8000)
        self._pumps.append(asyncio.create_task(self._pump(call)))

    async def _pump(self, call) -> None:
        while not call.ended.is_set():
            await call.next_outbound()

    async def stop(self) -> None:
        for t in self._pumps:
            t.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


class FakeSipCarrier(RecordingCarrier):
    name = "sip"
    providers = ("sip",)
    import_fields = (
        F("phone_number", required=True, e164=True), F("sip_host", required=True),
        F("sip_trunk_name", required=True), F("name"), F("sip_port", int, default=5060),
        F("sip_username"), F("sip_password", secret=True), F("sip_dial_prefix"),
        F("sip_strip_plus", bool, default=False), F("preset"),
        F("transport", default="udp", choices=("udp", "tcp", "tls")), F("outbound_proxy"),
        F("auth_type", default="basic", choices=("basic", "ip")), F("allowed_ips", list, default=None),
        F("register", bool, default=False),
    )


class FakeTwilioCarrier(RecordingCarrier):
    name = "twilio"
    providers = ("twilio",)
    import_fields = (F("phone_number", required=True, e164=True), F("account_sid", required=True),
                     F("account_token", required=True, secret=True), F("name"))


class FakeExotelCarrier(RecordingCarrier):
    name = "exotel"
    providers = ("exotel",)
    number_field = "exotel_phone_number"
    import_fields = (F("exotel_phone_number", required=True, e164=True), F("exotel_api_key", required=True),
                     F("exotel_api_token", required=True, secret=True), F("exotel_subdomain"),
                     F("exotel_account_sid", required=True), F("exotel_app_id"), F("name"))


CARRIERS = {"sip": FakeSipCarrier, "twilio": FakeTwilioCarrier, "exotel": FakeExotelCarrier}


def sip_body(**over: Any) -> dict[str, Any]:
    body = {"phone_number": "+14155550100", "sip_host": "127.0.0.1", "sip_trunk_name": "main-trunk",
            "name": "Main", "sip_port": 5070, "sip_username": "alice", "sip_password": SIP_PASSWORD,
            "sip_dial_prefix": "9", "sip_strip_plus": True, "transport": "tcp", "auth_type": "basic",
            "allowed_ips": ["127.0.0.1"], "register": False}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def twilio_body(**over: Any) -> dict[str, Any]:
    body = {"phone_number": "+14155550111", "account_sid": "AC" + "1" * 32, "account_token": TWILIO_TOKEN,
            "name": "Twilio line"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def exotel_body(**over: Any) -> dict[str, Any]:
    body = {"exotel_phone_number": "+918047112233", "exotel_api_key": "key123", "exotel_api_token": EXOTEL_TOKEN,
            "exotel_subdomain": "api.in.exotel.com", "exotel_account_sid": "acme1", "exotel_app_id": "12345",
            "name": "Exotel line"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


class Api:
    """A thin real-HTTP client: `status, body = await api.post("/phone_number/import/sip", json={...})`."""

    def __init__(self, gw, session: aiohttp.ClientSession, key: str | None) -> None:
        self.gw = gw
        self.session = session
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def request(self, method: str, path: str, **kw) -> tuple[int, Any]:
        headers = {**self.headers, **kw.pop("headers", {})}
        url = self.gw.url(path if path.startswith("/healthz") or path.startswith("/metrics")
                          else "/api/v1" + path)
        async with self.session.request(method, url, headers=headers, **kw) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def get(self, path: str, **kw):
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw):
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw):
        return await self.request("PUT", path, **kw)

    async def patch(self, path: str, **kw):
        return await self.request("PATCH", path, **kw)

    async def delete(self, path: str, **kw):
        return await self.request("DELETE", path, **kw)


@pytest_asyncio.fixture
async def api(make_gateway):
    """A gateway with the three fake carriers and an authenticated client; `api.gw` is the Gateway."""
    gw = await make_gateway(carriers=CARRIERS)
    async with aiohttp.ClientSession() as session:
        yield Api(gw, session, gw.api_key)
