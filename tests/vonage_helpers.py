"""Test doubles for Vonage: the Voice API's media websocket client and a loopback HTTPS fake of its REST API.

The websocket side follows Vonage's protocol: the first text message is `websocket:connected` with the NCCO's
content-type and headers, then binary 16-bit PCM frames of 20 ms; `notify` is answered with `websocket:notify`
(payload echoed) and `clear` with `websocket:cleared`. The REST fake speaks HTTPS (the SDK only does https://) with
a throw-away self-signed certificate for 127.0.0.1, checks the SDK's RS256 JWT against the application's public key
and Basic auth for the account API, and answers like api.nexmo.com / rest.nexmo.com.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import ssl
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

VONAGE_NUMBER = "+447700900000"
APP_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
API_KEY = "abcd1234"
API_SECRET = "s3cr3t-Vonage"
#: the account's signature secret: numbers in tests are imported with it, as the gateway requires by default
SIGNATURE_SECRET = "vonage-signature-secret-0123456789"


def signed_headers(secret: str = SIGNATURE_SECRET) -> dict[str, str]:
    """What Vonage sends with a signed webhook: `Authorization: Bearer <JWT>`, HS256 with the signature secret."""
    import time

    token = jwt.encode({"iat": int(time.time()), "jti": str(uuidlib.uuid4()), "api_key": API_KEY}, secret, "HS256")
    return {"Authorization": f"Bearer {token}"}


def rsa_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def self_signed_cert(tmp_path) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "fake-vonage.crt", tmp_path / "fake-vonage.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class FakeVonageApi:
    """api.nexmo.com + rest.nexmo.com on one loopback HTTPS port."""

    def __init__(self, private_pem: str, numbers: list[dict[str, Any]] | None = None) -> None:
        self.public_pem = serialization.load_pem_private_key(private_pem.encode(), None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.numbers = numbers if numbers is not None else [
            {"country": "GB", "msisdn": VONAGE_NUMBER[1:], "type": "mobile-lvn", "features": ["VOICE", "SMS"],
             "app_id": APP_ID}]
        self.requests: list[tuple[str, str, Any]] = []
        self.calls: dict[str, dict[str, Any]] = {}
        self.got = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.host = ""

    def _jwt_ok(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        try:
            claims = jwt.decode(auth[7:], self.public_pem, algorithms=["RS256"])
        except jwt.PyJWTError:
            return False
        return claims.get("application_id") == APP_ID

    def _basic_ok(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
        return request.headers.get("Authorization", "") == expected

    @staticmethod
    def _err(status: int, title: str) -> web.Response:
        return web.json_response({"type": "https://developer.nexmo.com/api-errors", "title": title}, status=status)

    async def _log(self, request: web.Request, body: Any) -> None:
        self.requests.append((request.method, request.path, body))
        async with self.got:
            self.got.notify_all()

    async def wait_request(self, method: str, path: str, timeout: float = 5.0) -> Any:
        async def find():
            async with self.got:
                await self.got.wait_for(lambda: any(m == method and p == path for m, p, _ in self.requests))
        await asyncio.wait_for(find(), timeout)
        return [b for m, p, b in self.requests if m == method and p == path]

    async def create_call(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self._log(request, body)
        if not self._jwt_ok(request):
            return self._err(401, "Invalid credentials")
        uuid = str(uuidlib.uuid4())
        self.calls[uuid] = body
        return web.json_response({"uuid": uuid, "status": "started", "direction": "outbound",
                                  "conversation_uuid": "CON-" + uuid}, status=201)

    async def update_call(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self._log(request, body)
        if not self._jwt_ok(request):
            return self._err(401, "Invalid credentials")
        if request.match_info["uuid"] not in self.calls:
            return self._err(404, "Not found")
        return web.Response(status=204)

    async def dtmf(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self._log(request, body)
        if not self._jwt_ok(request):
            return self._err(401, "Invalid credentials")
        return web.json_response({"message": "DTMF sent", "uuid": request.match_info["uuid"]})

    async def list_calls(self, request: web.Request) -> web.Response:
        await self._log(request, dict(request.query))
        if not self._jwt_ok(request):
            return self._err(401, "Invalid credentials")
        return web.json_response({"count": 0, "page_size": 1, "record_index": 0,
                                  "_embedded": {"calls": []}, "_links": {"self": {"href": "/v1/calls"}}})

    async def account_numbers(self, request: web.Request) -> web.Response:
        await self._log(request, dict(request.query))
        if not self._basic_ok(request):
            return self._err(401, "Bad Credentials")
        pattern = request.query.get("pattern", "")
        found = [n for n in self.numbers if pattern in n["msisdn"]]
        return web.json_response({"count": len(found), "numbers": found})

    def register(self, calls: dict[str, Any], uuid: str) -> None:
        """A call Vonage knows about (an inbound call's uuid, so REST updates on it succeed)."""
        self.calls[uuid] = calls

    async def start(self, cert: str, key: str) -> "FakeVonageApi":
        app = web.Application()
        app.router.add_post("/v1/calls", self.create_call)
        app.router.add_get("/v1/calls", self.list_calls)
        app.router.add_put("/v1/calls/{uuid}", self.update_call)
        app.router.add_put("/v1/calls/{uuid}/dtmf", self.dtmf)
        app.router.add_get("/account/numbers", self.account_numbers)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.host = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class VRx:
    frames: list[bytes] = field(default_factory=list)
    notifies: list[tuple[str, int]] = field(default_factory=list)   # (name, audio bytes before it)
    clears: list[int] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(self.frames)


class FakeVonageSocket:
    """Vonage's side of the media websocket the NCCO asked for."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: dict[str, Any], *, gw_url: str) -> None:
        self.session = session
        self.endpoint = endpoint
        # the NCCO names the public URL; tests reach the same path on the gateway's loopback port
        path = endpoint["uri"].split("://", 1)[1].split("/", 1)[1]
        self.url = gw_url.rstrip("/") + "/" + path
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.rx = VRx()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.cond = asyncio.Condition()
        self._reader: asyncio.Task | None = None

    async def connect(self, *, headers: dict[str, Any] | None = None, content_type: str | None = None) -> None:
        self.ws = await self.session.ws_connect(self.url)
        first = {"event": "websocket:connected",
                 "content-type": content_type or self.endpoint["content-type"],
                 **(self.endpoint.get("headers") or {} if headers is None else headers)}
        await self.ws.send_str(json.dumps(first))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.rx.frames.append(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m.get("action") == "notify":
                        self.rx.notifies.append((m["payload"]["name"], len(self.rx.audio)))
                        await self.ws.send_str(json.dumps({"event": "websocket:notify", "payload": m["payload"]}))
                    elif m.get("action") == "clear":
                        self.rx.clears.append(len(self.rx.audio))
                        await self.ws.send_str(json.dumps({"event": "websocket:cleared"}))
                async with self.cond:
                    self.cond.notify_all()
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self.cond:
                self.cond.notify_all()

    async def play(self, pcm: bytes, frame: int, pace_every: int = 5) -> None:
        for i, off in enumerate(range(0, len(pcm), frame)):
            await self.ws.send_bytes(pcm[off:off + frame])
            if i % pace_every == pace_every - 1:
                await asyncio.sleep(0.01)

    async def dtmf(self, digit: str, duration: int = 260) -> None:
        await self.ws.send_str(json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": duration}))

    async def wait_for(self, pred, timeout: float = 5.0) -> None:
        async def _w():
            async with self.cond:
                await self.cond.wait_for(lambda: pred(self.rx) or self.closed.is_set())
        await asyncio.wait_for(_w(), timeout)
        assert pred(self.rx), "socket closed before the expected messages"

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=2)


async def add_vonage_number(gw, *, agent_id: int | None = None, private_pem: str | None = None,
                            signature_secret: str | None = SIGNATURE_SECRET, rate: int = 16000,
                            allow_unsigned: bool = False) -> dict[str, Any]:
    """A Vonage number as an import stores it: signed webhooks (SIGNATURE_SECRET) unless `signature_secret=None`;
    `allow_unsigned` is the explicit opt-out."""
    secrets = {}
    if private_pem:
        secrets["vonage_private_key"] = private_pem
    if signature_secret:
        secrets["vonage_signature_secret"] = signature_secret
    config = {"vonage_application_id": APP_ID if private_pem else None, "vonage_audio_rate": rate}
    if allow_unsigned:
        config["vonage_allow_unsigned_webhooks"] = True
    return await gw.store.create_number(
        {"phone_number": VONAGE_NUMBER, "provider": "vonage", "agent_id": agent_id, "name": "v", "config": config},
        secrets)
