"""Carrier REST requests: one bounded timeout and one mapping of carrier answers to API errors, for every carrier.

Why one module: a hung carrier API must not hold a dispatch, hangup or transfer for minutes (aiohttp's default
total timeout is 5 minutes, and the Twilio SDK's async client ignores the timeout given to its constructor), and an
API client must get the same status for the same carrier answer whichever carrier is behind the number. The
mapping is the table "Carrier errors" in docs/api.md:

| carrier answer | API status |
|---|---|
| 401 / 403 | 502 (the stored credentials no longer work: an operator must re-import); 422 naming the field when the
  credentials came in this very request (import, connection test) |
| 404 | 502 (the stored account is unknown to the carrier); 422 when importing. A live call the carrier no longer
  knows is handled by the carrier itself (hangup: done; transfer: 409) |
| 429 | 503 with `Retry-After` (the carrier's, else DEFAULT_RETRY_AFTER) |
| other 4xx | 422 with the carrier's own message (it refused what was asked, e.g. an invalid `To`) |
| 5xx | 502 |
| no answer within `carrier_timeout` | 504 |
| connection refused / DNS / TLS | 502 |
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from .carrier import CarrierError

#: seconds a client is told to wait when a carrier rate-limits without a usable Retry-After header
DEFAULT_RETRY_AFTER = 5

T = TypeVar("T")


def _seconds(retry_after: Any) -> int:
    try:
        return max(1, min(3600, int(float(str(retry_after).strip()))))
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER   # absent, or an HTTP date: our default is close enough for a retry hint


def refusal(carrier: str, status: int, detail: str = "", *, retry_after: Any = None, importing: bool = False,
            field: str | None = None, credentials: str = "credentials") -> CarrierError:
    """The API error for a carrier's HTTP error answer (`status` ≥ 400), per the table in this module's docstring.

    `importing`: the credentials came in this request, so a 401/403/404 is the caller's input at fault (422; a
    401/403 names `field`, the secret) rather than the gateway's stored configuration (502). `detail` is the
    carrier's own message.
    """
    said = f": {detail.strip()[:200]}" if detail and detail.strip() else ""
    if status in (401, 403):
        if importing:
            return CarrierError(f"{carrier} rejected the {credentials} (HTTP {status}){said}", 422, field)
        return CarrierError(f"{carrier} rejected the number's stored {credentials} (HTTP {status}){said}; "
                            "re-import the number with working credentials", 502)
    if status == 429:
        wait = _seconds(retry_after)
        return CarrierError(f"{carrier} rate limit reached (HTTP 429){said}; retry in {wait} s", 503,
                            retry_after=wait)
    if status >= 500:
        return CarrierError(f"{carrier} API error (HTTP {status}){said}", 502)
    if status == 404:
        if importing:
            return CarrierError(f"{carrier} does not know this account or resource (HTTP 404){said}", 422)
        return CarrierError(f"{carrier} does not know the number's account or resource (HTTP 404){said}", 502)
    return CarrierError(f"{carrier} refused the request (HTTP {status}){said}", 422)


def unreachable(carrier: str, exc: BaseException, timeout: float, where: str = "") -> CarrierError:
    """The API error for a request that got no HTTP answer: 504 past the timeout, else 502. `where`: the host."""
    at = f" at {where}" if where else ""
    if isinstance(exc, TimeoutError):    # asyncio.TimeoutError and aiohttp's timeouts are TimeoutErrors
        return CarrierError(f"{carrier} API{at} did not answer within {timeout:g} s", 504)
    return CarrierError(f"{carrier} API unreachable{at} ({type(exc).__name__})", 502)


async def bounded(aw: Awaitable[T], carrier: str, timeout: float) -> T:
    """Await one carrier request (an SDK call), giving up after `timeout` seconds with a 504 CarrierError."""
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError as e:
        raise unreachable(carrier, e, timeout) from None


def problem_detail(body: Any) -> str:
    """The human part of an error body: RFC 7807 `title`/`detail` (Vonage), `message` (Twilio-like), else ''."""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[k]) for k in ("title", "detail", "message", "error_title", "Message") if body.get(k)]
    return "; ".join(dict.fromkeys(parts))


class CarrierHttp:
    """One aiohttp session for a carrier's REST API; every request bounded by `timeout()` and mapped by `refusal`.

    `timeout` is a callable so a changed setting (tests, reload) applies to the next request."""

    def __init__(self, carrier: str, timeout: Callable[[], float],
                 detail: Callable[[Any], str] = problem_detail) -> None:
        self.carrier = carrier
        self.timeout = timeout
        self.detail = detail
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(self, method: str, url: str, *, accept: tuple[int, ...] = (), importing: bool = False,
                      field: str | None = None, credentials: str = "credentials",
                      **kwargs: Any) -> tuple[int, Any]:
        """(status, parsed JSON body or None) of a 2xx answer or one whose status is in `accept`; any other
        answer, no answer in time or no connection raises the mapped CarrierError."""
        timeout = self.timeout()
        try:
            async with asyncio.timeout(timeout):
                async with self._http().request(method, url, **kwargs) as resp:
                    text = await resp.text()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise unreachable(self.carrier, e, timeout, URL(url).host or "") from None
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        if status >= 400 and status not in accept:
            raise refusal(self.carrier, status, self.detail(body), retry_after=retry_after, importing=importing,
                          field=field, credentials=credentials)
        return status, body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
