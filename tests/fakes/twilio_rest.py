"""A local HTTP server that answers like Twilio's REST API (2010-04-01), for the real `twilio` SDK to talk to.

Only the resources the gateway uses: Accounts/{sid}.json, IncomingPhoneNumbers (list filtered by PhoneNumber,
update), Calls (create, update). Basic auth is checked (wrong token → 401 / 20003) and error bodies have Twilio's
shape ({code, message, more_info, status}) so the SDK raises TwilioRestException exactly as in production.
Every request is recorded, and call updates are also put on `updates` for tests to await. `faults` injects
401/404/429/500 answers or a hang (tests/fakes/rest_faults.py).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .rest_faults import RestStandIn

#: Twilio's error codes for the statuses the fault injection answers with (https://www.twilio.com/docs/api/errors)
FAULT_CODES = {401: (20003, "Authenticate"), 404: (20404, "The requested resource was not found"),
               429: (20429, "Too Many Requests"), 500: (20500, "Internal Server Error")}


def twilio_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "status": status,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class FakeAccount:
    sid: str
    token: str
    status: str = "active"
    friendly_name: str = "Test account"
    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)   # E.164 → incoming number resource


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, list[str]]

    def one(self, name: str) -> str | None:
        v = self.params.get(name)
        return v[0] if v else None


class FakeTwilioRest(RestStandIn):
    #: where the 2010-04-01 API lives on the host (SignalWire serves it under /api/laml)
    prefix = ""

    def new_account_sid(self) -> str:
        return new_sid("AC")

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, FakeAccount] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.updates: asyncio.Queue[tuple[str, Recorded]] = asyncio.Queue()
        #: next calls.create answers with this error: (status, code, message)
        self.create_error: tuple[int, int, str] | None = None
        self._seq = itertools.count(1)

    def add_account(self, token: str | None = None, numbers: tuple[str, ...] = ()) -> FakeAccount:
        acc = FakeAccount(self.new_account_sid(), token or secrets.token_hex(16))
        for n in numbers:
            acc.numbers[n] = {"sid": new_sid("PN"), "phone_number": n, "voice_url": None, "status_callback": None}
        self.accounts[acc.sid] = acc
        return acc

    def add_call(self, account: FakeAccount, status: str = "in-progress") -> str:
        """A call Twilio already knows (an inbound call): returns its CallSid."""
        sid = new_sid("CA")
        self.calls[sid] = {"sid": sid, "account_sid": account.sid, "status": status}
        return sid

    async def start(self) -> FakeTwilioRest:
        def fault(status: int) -> web.Response:
            return twilio_error(status, *FAULT_CODES.get(status, (20001, "Bad request")))

        app = web.Application(middlewares=[self.faults.middleware(fault, self._record)])
        base = self.prefix + "/2010-04-01/Accounts/{account}"
        app.router.add_get(base + ".json", self._account)
        app.router.add_get(base + "/IncomingPhoneNumbers.json", self._list_numbers)
        app.router.add_post(base + "/IncomingPhoneNumbers/{pn}.json", self._update_number)
        app.router.add_post(base + "/Calls.json", self._create_call)
        app.router.add_post(base + "/Calls/{call}.json", self._update_call)
        await self._listen(app)
        return self


    def of(self, method: str, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    # -- plumbing -----------------------------------------------------------------------------------------------
    async def _record(self, request: web.Request) -> Recorded:
        params: dict[str, list[str]] = {}
        for k, v in request.query.items():
            params.setdefault(k, []).append(v)
        if request.method == "POST":
            form = await request.post()
            for k in form:
                params[k] = [str(x) for x in form.getall(k)]
        rec = Recorded(request.method, request.path, params)
        self.requests.append(rec)
        return rec

    def _auth(self, request: web.Request) -> FakeAccount | web.Response:
        acc = self.accounts.get(request.match_info["account"])
        header = request.headers.get("Authorization", "")
        try:
            user, _, pw = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            user = pw = ""
        if acc is None or user != acc.sid or pw != acc.token:
            return twilio_error(401, 20003, "Authenticate")
        return acc

    # -- resources ----------------------------------------------------------------------------------------------
    async def _account(self, request: web.Request) -> web.Response:
        await self._record(request)
        acc = self._auth(request)
        if isinstance(acc, web.Response):
            return acc
        return web.json_response({"sid": acc.sid, "friendly_name": acc.friendly_name, "status": acc.status,
                                  "type": "Full", "uri": f"/2010-04-01/Accounts/{acc.sid}.json"})

    async def _list_numbers(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        acc = self._auth(request)
        if isinstance(acc, web.Response):
            return acc
        want = rec.one("PhoneNumber")
        found = [dict(n, account_sid=acc.sid) for num, n in acc.numbers.items() if want in (None, num)]
        uri = request.path_qs
        return web.json_response({"incoming_phone_numbers": found, "end": max(len(found) - 1, 0),
                                  "first_page_uri": uri, "next_page_uri": None, "page": 0, "page_size": 50,
                                  "previous_page_uri": None, "start": 0, "uri": uri})

    async def _update_number(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        acc = self._auth(request)
        if isinstance(acc, web.Response):
            return acc
        for n in acc.numbers.values():
            if n["sid"] == request.match_info["pn"]:
                if rec.one("VoiceUrl") is not None:
                    n["voice_url"] = rec.one("VoiceUrl")
                if rec.one("StatusCallback") is not None:
                    n["status_callback"] = rec.one("StatusCallback")
                return web.json_response(dict(n, account_sid=acc.sid))
        return twilio_error(404, 20404, "The requested resource was not found")

    async def _create_call(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        acc = self._auth(request)
        if isinstance(acc, web.Response):
            return acc
        if self.create_error is not None:
            status, code, message = self.create_error
            self.create_error = None
            return twilio_error(status, code, message)
        sid = new_sid("CA")
        self.calls[sid] = {"sid": sid, "account_sid": acc.sid, "status": "queued", "create": rec}
        return web.json_response({"sid": sid, "account_sid": acc.sid, "status": "queued", "to": rec.one("To"),
                                  "from": rec.one("From"), "direction": "outbound-api"}, status=201)

    async def _update_call(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        acc = self._auth(request)
        if isinstance(acc, web.Response):
            return acc
        sid = request.match_info["call"]
        call = self.calls.get(sid)
        if call is None or call.get("status") == "completed":
            return twilio_error(404, 20404, f"The requested resource /2010-04-01/Accounts/{acc.sid}/Calls/{sid}.json"
                                            " was not found")
        if rec.one("Status"):
            call["status"] = rec.one("Status")
        self.updates.put_nowait((sid, rec))
        return web.json_response({"sid": sid, "account_sid": acc.sid, "status": call["status"]})
