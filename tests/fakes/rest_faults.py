"""Failure injection and serving shared by the carrier REST stand-ins (Twilio, Exotel, Vonage).

`faults.add("POST", "/Calls.json", 429, retry_after=7)` makes the next matching request answer 429 with the
carrier's own error body; `faults.add(..., "hang")` makes it hang until the stand-in stops (a carrier API that
accepted the connection and never answers). Each stand-in installs `faults.middleware(error)` where `error(status)`
builds that carrier's error response.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HANG = "hang"


@dataclass
class Fault:
    method: str
    suffix: str
    outcome: int | str          # an HTTP status, or HANG
    times: int = 1
    retry_after: int | None = None


class Faults:
    def __init__(self) -> None:
        self.rules: list[Fault] = []
        self.hanging = 0                  # requests currently held by a HANG rule
        self._release = asyncio.Event()

    def add(self, method: str, suffix: str, outcome: int | str, *, times: int = 1,
            retry_after: int | None = None) -> None:
        self.rules.append(Fault(method.upper(), suffix, outcome, times, retry_after))

    def _take(self, request: web.Request) -> Fault | None:
        for rule in self.rules:
            if rule.method == request.method and request.path.endswith(rule.suffix):
                rule.times -= 1
                if rule.times <= 0:
                    self.rules.remove(rule)
                return rule
        return None

    def release(self) -> None:
        """Let hanging requests go (before the server stops, so its shutdown does not wait for them)."""
        self._release.set()

    def middleware(self, error: Callable[[int], web.Response],
                   record: Callable[[web.Request], Any] | None = None) -> Any:
        @web.middleware
        async def apply(request: web.Request, handler: Any) -> web.StreamResponse:
            rule = self._take(request)
            if rule is None:
                return await handler(request)
            if record is not None:
                await record(request)
            if rule.outcome == HANG:
                self.hanging += 1
                try:
                    await self._release.wait()
                finally:
                    self.hanging -= 1
                return web.Response(status=503)
            resp = error(int(rule.outcome))
            if rule.retry_after is not None:
                resp.headers["Retry-After"] = str(rule.retry_after)
            return resp
        return apply



class RestStandIn:
    """What every stand-in shares: its `faults`, serving an app on 127.0.0.1 (`url`), and stopping."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _listen(self, app: web.Application, port: int = 0) -> None:
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.faults.release()       # first, so hanging requests do not hold the server's shutdown
        if self.runner is not None:
            await self.runner.cleanup()
