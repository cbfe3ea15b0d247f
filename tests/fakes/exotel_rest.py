"""A local HTTP server that answers like Exotel's REST API for one account, for the gateway's ExotelCarrier.

Resources (https://developer.exotel.com/api/outgoing-call-to-connect-number-to-a-call-flow,
https://developer.exotel.com/api-console/voice): `GET /v2_beta/Accounts/{sid}/IncomingPhoneNumbers` (paginated
ExoPhones) and `POST /v1/Accounts/{sid}/Calls/connect.json` (form: From, CallerId, Url, CallType, TimeLimit,
TimeOut, StatusCallback…; answers `{"Call": {"Sid", "Status", …}}`). Basic auth is checked; errors have Exotel's
shape `{"RestException": {"Status", "Message"}}`. The v1 API has no request that hangs up or cancels a call, so
neither has this stand-in. `faults` injects 401/404/429/500 answers or a hang (tests/fakes/rest_faults.py).

Run it alone to try imports and dispatch by hand (`GATEWAY_EXOTEL_API_BASE=http://127.0.0.1:PORT`):
`python tests/fakes/exotel_rest.py --port 8701`.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
from typing import Any

from aiohttp import web

try:
    from .rest_faults import RestStandIn
except ImportError:                    # run as a script
    from rest_faults import RestStandIn  # type: ignore[no-redef]

ACCOUNT_SID = "gwtest1"
API_KEY = "exo-key-123"
API_TOKEN = "exo-token-456"
APP_ID = "812345"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def exotel_error(status: int, message: str | None = None) -> web.Response:
    text = message or {401: "Authentication is required to view this page.", 403: "Forbidden",
                       404: "The requested resource was not found", 429: "Too many requests",
                       500: "Internal server error"}.get(status, "Request failed")
    return web.json_response({"RestException": {"Status": status, "Message": text}}, status=status)


class FakeExotelApi(RestStandIn):
    """Answers like Exotel's v1/v2_beta API for one account: Basic auth, paginated ExoPhones, Calls/connect.json."""

    def __init__(self, exophones: list[str] | None = None, page_size: int = 2) -> None:
        super().__init__()
        self.exophones = exophones if exophones is not None else ["08000000001", "08000000002", "08047491899"]
        self.page_size = page_size
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.calls: dict[str, dict[str, str]] = {}          # Sid → the Calls/connect form
        #: the Sid the next Calls/connect answers with (tests that drive the flow by hand set it)
        self.next_sid: str | None = "b6cfaf0ae5bc2bd1bd7fd1d4b5f81234"
        self.connect_status = 200

    def _auth_ok(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == basic(API_KEY, API_TOKEN)

    async def _record(self, request: web.Request) -> None:
        form = dict(await request.post()) if request.method == "POST" else dict(request.query)
        self.requests.append((request.method, request.path, {k: str(v) for k, v in form.items()}))

    async def numbers(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._auth_ok(request):
            return exotel_error(401)
        if request.match_info["sid"] != ACCOUNT_SID:
            return exotel_error(403)
        page = int(request.query.get("Page", 0))
        size = min(int(request.query.get("PageSize", 50)), self.page_size)
        items = self.exophones[page * size:(page + 1) * size]
        more = (page + 1) * size < len(self.exophones)
        base = f"http://twilix.exotel.com/v2_beta/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers"
        return web.json_response({
            "page": page, "page_size": size, "uri": f"{base}?Page={page}&PageSize={size}",
            "first_page_uri": f"{base}?Page=0&PageSize={size}",
            "next_page_uri": f"{base}?Page={page + 1}&PageSize={size}" if more else None,
            "previous_page_uri": None,
            "incoming_phone_numbers": [{"sid": f"sid{page}{i}", "friendly_name": n, "phone_number": n,
                                        "capabilities": {"voice": True, "sms": True}}
                                       for i, n in enumerate(items)]})

    async def connect(self, request: web.Request) -> web.Response:
        await self._record(request)
        form = self.requests[-1][2]
        if not self._auth_ok(request):
            return exotel_error(401, "Authentication is required")
        if request.match_info["sid"] != ACCOUNT_SID:
            return exotel_error(403)
        if self.connect_status != 200:
            return exotel_error(self.connect_status, "Call could not be placed")
        sid = self.next_sid or secrets.token_hex(16)
        self.next_sid = None
        self.calls[sid] = form
        return web.json_response({"Call": {"Sid": sid, "ParentCallSid": None, "AccountSid": ACCOUNT_SID,
                                           "To": form.get("CallerId"), "From": form.get("From"),
                                           "Status": "in-progress", "Direction": "outbound-api",
                                           "Uri": f"/v1/Accounts/{ACCOUNT_SID}/Calls/{sid}.json"}})

    async def start(self, port: int = 0) -> FakeExotelApi:
        async def record(request: web.Request) -> None:
            await self._record(request)
        app = web.Application(middlewares=[self.faults.middleware(exotel_error, record)])
        app.router.add_get("/v2_beta/Accounts/{sid}/IncomingPhoneNumbers", self.numbers)
        app.router.add_post("/v1/Accounts/{sid}/Calls/connect.json", self.connect)
        await self._listen(app, port)
        return self



async def _serve(port: int) -> Any:
    api = await FakeExotelApi().start(port)
    print(f"Exotel stand-in on {api.url}: account {ACCOUNT_SID}, key {API_KEY}, token {API_TOKEN}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8701)
    asyncio.run(_serve(ap.parse_args().port))
