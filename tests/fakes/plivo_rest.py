"""A local server answering like Plivo's REST API (https://www.plivo.com/docs/voice/api/): GET Account/{id}/,
GET Account/{id}/Number/{n}/, POST Account/{id}/Call/ (make a call), POST Account/{id}/Call/{uuid}/ (transfer),
DELETE Account/{id}/Call/{uuid}/ (hang up) and Request/{request_uuid}/ (cancel). Basic auth is checked; errors
have Plivo's shape ({"api_id", "error"}). Requests are recorded and call actions put on `actions` for tests to
await; `faults` injects 401/404/429/500 or a hang (rest_faults.py)."""
from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from typing import Any

from aiohttp import web

from .rest_faults import RestStandIn


def plivo_error(status: int, message: str) -> web.Response:
    return web.json_response({"api_id": str(uuid.uuid4()), "error": message}, status=status)


class FakePlivoRest(RestStandIn):
    def __init__(self) -> None:
        super().__init__()
        self.auth_id = "MA" + secrets.token_hex(9).upper()
        self.auth_token = secrets.token_urlsafe(24)
        self.numbers: set[str] = set()          # digits, no +
        self.calls: dict[str, bool] = {}        # CallUUID → alive
        self.requests: list[tuple[str, str, Any]] = []
        self.actions: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()

    def add_call(self) -> str:
        call_uuid = str(uuid.uuid4())
        self.calls[call_uuid] = True
        return call_uuid

    async def start(self) -> FakePlivoRest:
        app = web.Application(middlewares=[self.faults.middleware(lambda s: plivo_error(s, f"HTTP {s}"))])
        base = "/v1/Account/{auth_id}/"
        app.router.add_get(base, self._account)
        app.router.add_get(base + "Number/{number}/", self._number)
        app.router.add_post(base + "Call/", self._make_call)
        app.router.add_post(base + "Call/{call}/", self._transfer)
        app.router.add_delete(base + "Call/{call}/", self._hangup)
        app.router.add_delete(base + "Request/{request}/", self._cancel)
        await self._listen(app)
        return self

    def _authorized(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        return request.match_info["auth_id"] == self.auth_id and request.headers.get("Authorization") == expected

    async def _record(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        return body

    async def _account(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return plivo_error(401, "authentication failed")
        return web.json_response({"account_type": "standard", "auth_id": self.auth_id, "name": "Test"})

    async def _number(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return plivo_error(401, "authentication failed")
        n = request.match_info["number"]
        if n not in self.numbers:
            return plivo_error(404, "not found")
        return web.json_response({"number": n, "application": f"/v1/Account/{self.auth_id}/Application/1/",
                                  "voice_enabled": True})

    async def _make_call(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if not self._authorized(request):
            return plivo_error(401, "authentication failed")
        if not body or not body.get("to") or not body.get("answer_url"):
            return plivo_error(400, "to and answer_url are required")
        request_uuid = str(uuid.uuid4())
        self.actions.put_nowait(("call", request_uuid, body))
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "call fired",
                                  "request_uuid": request_uuid}, status=201)

    async def _transfer(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if not self._authorized(request):
            return plivo_error(401, "authentication failed")
        if not self.calls.get(request.match_info["call"]):
            return plivo_error(404, "call not found")
        self.actions.put_nowait(("transfer", request.match_info["call"], body))
        return web.json_response({"api_id": str(uuid.uuid4()), "message": "call transferred"}, status=202)

    async def _hangup(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return plivo_error(401, "authentication failed")
        call = request.match_info["call"]
        if not self.calls.get(call):
            return plivo_error(404, "call not found")
        self.calls[call] = False
        self.actions.put_nowait(("hangup", call, None))
        return web.Response(status=204)

    async def _cancel(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return plivo_error(401, "authentication failed")
        self.actions.put_nowait(("cancel", request.match_info["request"], None))
        return web.Response(status=204)
