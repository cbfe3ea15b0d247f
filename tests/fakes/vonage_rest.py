"""A local HTTP server that answers like Vonage's Voice API (api.nexmo.com) and account API (rest.nexmo.com).

Resources, as documented in the Voice API reference (https://developer.vonage.com/en/api/voice):
`POST /v1/calls` (201 `{uuid, status, direction, conversation_uuid}`), `GET /v1/calls`,
`PUT /v1/calls/{uuid}` with `{"action": "hangup"}` or `{"action": "transfer", "destination": {"type": "ncco",
"ncco": […]}}` (204 No Content; 404 for a uuid Vonage does not know), `PUT /v1/calls/{uuid}/dtmf` `{digits}`;
and `GET /account/numbers` (Basic auth with the account API key/secret). Voice API requests must carry an RS256
application JWT whose `application_id` claim is ours; errors are RFC 7807 problem documents `{type, title,
detail, instance}` (https://developer.vonage.com/en/api-errors). `faults` injects 401/404/429/500 answers or a hang
(tests/fakes/rest_faults.py).

Run it alone (`GATEWAY_VONAGE_API_BASE=http://127.0.0.1:PORT`) with the application's private key:
`python tests/fakes/vonage_rest.py --private-key private.key --port 8702`.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import uuid as uuidlib
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization

try:
    from .rest_faults import RestStandIn
except ImportError:                    # run as a script
    from rest_faults import RestStandIn  # type: ignore[no-redef]

VONAGE_NUMBER = "+447700900000"
APP_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
API_KEY = "abcd1234"
API_SECRET = "s3cr3t-Vonage"

_TITLES = {400: "Bad Request", 401: "Invalid credentials", 403: "Forbidden", 404: "Not Found",
           429: "Too Many Requests", 500: "Internal Server Error"}


def vonage_error(status: int, title: str | None = None, detail: str | None = None) -> web.Response:
    return web.json_response({"type": f"https://developer.nexmo.com/api-errors#{status}",
                              "title": title or _TITLES.get(status, "Error"),
                              "detail": detail or "", "instance": str(uuidlib.uuid4())},
                             status=status, content_type="application/problem+json")


class FakeVonageApi(RestStandIn):
    """api.nexmo.com + rest.nexmo.com on one loopback port."""

    def __init__(self, private_pem: str, numbers: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.public_pem = serialization.load_pem_private_key(private_pem.encode(), None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.numbers = numbers if numbers is not None else [
            {"country": "GB", "msisdn": VONAGE_NUMBER[1:], "type": "mobile-lvn", "features": ["VOICE", "SMS"],
             "app_id": APP_ID}]
        self.requests: list[tuple[str, str, Any]] = []
        self.calls: dict[str, dict[str, Any]] = {}
        self.got = asyncio.Condition()

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

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

    async def _log(self, request: web.Request, body: Any = None) -> None:
        if body is None:
            if request.can_read_body:
                try:
                    body = await request.json()
                except ValueError:
                    body = await request.text()
            else:
                body = dict(request.query)
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
            return vonage_error(401)
        uuid = str(uuidlib.uuid4())
        self.calls[uuid] = {"request": body, "status": "started"}
        return web.json_response({"uuid": uuid, "status": "started", "direction": "outbound",
                                  "conversation_uuid": "CON-" + uuid}, status=201)

    async def update_call(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self._log(request, body)
        if not self._jwt_ok(request):
            return vonage_error(401)
        call = self.calls.get(request.match_info["uuid"])
        if call is None or call.get("status") == "completed":
            return vonage_error(404, detail="call not found or already completed")
        if not isinstance(body, dict) or body.get("action") not in (
                "hangup", "mute", "unmute", "earmuff", "unearmuff", "transfer"):
            return vonage_error(400, detail="action must be hangup, mute, unmute, earmuff, unearmuff or transfer")
        if body["action"] == "hangup":
            call["status"] = "completed"
        return web.Response(status=204)

    async def dtmf(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self._log(request, body)
        if not self._jwt_ok(request):
            return vonage_error(401)
        return web.json_response({"message": "DTMF sent", "uuid": request.match_info["uuid"]})

    async def list_calls(self, request: web.Request) -> web.Response:
        await self._log(request, dict(request.query))
        if not self._jwt_ok(request):
            return vonage_error(401)
        return web.json_response({"count": 0, "page_size": 1, "record_index": 0,
                                  "_embedded": {"calls": []}, "_links": {"self": {"href": "/v1/calls"}}})

    async def account_numbers(self, request: web.Request) -> web.Response:
        await self._log(request, dict(request.query))
        if not self._basic_ok(request):
            return vonage_error(401, "Bad Credentials")
        pattern = request.query.get("pattern", "")
        found = [n for n in self.numbers if pattern in n["msisdn"]]
        return web.json_response({"count": len(found), "numbers": found})

    def register(self, calls: dict[str, Any], uuid: str) -> None:
        """A call Vonage knows about (an inbound call's uuid, so REST updates on it succeed)."""
        self.calls[uuid] = calls

    async def start(self, port: int = 0) -> FakeVonageApi:
        app = web.Application(middlewares=[self.faults.middleware(vonage_error, self._log)])
        app.router.add_post("/v1/calls", self.create_call)
        app.router.add_get("/v1/calls", self.list_calls)
        app.router.add_put("/v1/calls/{uuid}", self.update_call)
        app.router.add_put("/v1/calls/{uuid}/dtmf", self.dtmf)
        app.router.add_get("/account/numbers", self.account_numbers)
        await self._listen(app, port)
        return self



async def _serve(private_key: str, port: int) -> Any:
    api = await FakeVonageApi(Path(private_key).read_text()).start(port)
    print(f"Vonage stand-in on {api.url}: application {APP_ID}, API key {API_KEY}, secret {API_SECRET}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--private-key", required=True, help="the application's private key (PEM)")
    ap.add_argument("--port", type=int, default=8702)
    args = ap.parse_args()
    asyncio.run(_serve(args.private_key, args.port))
