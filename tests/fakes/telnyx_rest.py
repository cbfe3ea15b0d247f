"""A local server answering like Telnyx's Call Control v2 API (https://developers.telnyx.com/api/call-control):
GET /v2/phone_numbers (filter[phone_number]), POST /v2/calls (dial), POST /v2/calls/{id}/actions/{action}
(answer, hangup, transfer, streaming_start, reject). Bearer auth is checked; errors have Telnyx's shape
({"errors": [{"code", "title", "detail"}]}); a command on an ended call is 422 / 90018. Commands are recorded and
also put on `commands` for tests to await; `faults` injects 401/404/429/500 or a hang (rest_faults.py)."""
from __future__ import annotations

import asyncio
import secrets
from typing import Any

from aiohttp import web

from .rest_faults import RestStandIn


def telnyx_error(status: int, code: str, title: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "title": title, "detail": title}]}, status=status)


FAULTS = {401: ("10009", "Authentication failed"), 404: ("10005", "Resource not found"),
          429: ("10011", "Too many requests"), 500: ("10007", "Unexpected error")}


class FakeTelnyxRest(RestStandIn):
    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key or "KEY" + secrets.token_hex(16)
        self.numbers: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}       # call_control_id → {"alive": bool, "dial": body}
        self.requests: list[tuple[str, str, Any]] = []
        self.commands: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()

    def add_number(self, e164: str, connection_id: str = "1684641123236054244") -> None:
        self.numbers[e164] = {"id": secrets.token_hex(8), "phone_number": e164, "connection_id": connection_id,
                              "record_type": "phone_number", "status": "active"}

    def add_call(self) -> str:
        ccid = "v3:" + secrets.token_urlsafe(24)
        self.calls[ccid] = {"alive": True}
        return ccid

    async def start(self) -> FakeTelnyxRest:
        app = web.Application(middlewares=[self.faults.middleware(lambda s: telnyx_error(s, *FAULTS.get(
            s, ("10015", "Bad request"))))])
        app.router.add_get("/v2/phone_numbers", self._numbers)
        app.router.add_post("/v2/calls", self._dial)
        app.router.add_post("/v2/calls/{ccid}/actions/{action}", self._action)
        await self._listen(app)
        return self

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _numbers(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return telnyx_error(401, *FAULTS[401])
        want = request.query.get("filter[phone_number]")
        rows = [n for e, n in self.numbers.items() if want in (None, e)]
        return web.json_response({"data": rows, "meta": {"total_results": len(rows), "page_number": 1}})

    async def _dial(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return telnyx_error(401, *FAULTS[401])
        body = await request.json()
        self.requests.append(("POST", "/v2/calls", body))
        if not body.get("connection_id") or not body.get("to"):
            return telnyx_error(422, "10015", "connection_id and to are required")
        ccid = self.add_call()
        self.calls[ccid]["dial"] = body
        return web.json_response({"data": {"call_control_id": ccid, "call_leg_id": secrets.token_hex(8),
                                           "call_session_id": secrets.token_hex(8), "is_alive": False,
                                           "record_type": "call"}})

    async def _action(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return telnyx_error(401, *FAULTS[401])
        ccid, action = request.match_info["ccid"], request.match_info["action"]
        body = await request.json() if request.can_read_body else {}
        self.requests.append(("POST", request.path, body))
        call = self.calls.get(ccid)
        if call is None or not call["alive"]:
            return telnyx_error(422, "90018", "Call has already ended")
        if action in ("hangup", "reject"):
            call["alive"] = False
        self.commands.put_nowait((ccid, action, body))
        return web.json_response({"data": {"result": "ok"}})
