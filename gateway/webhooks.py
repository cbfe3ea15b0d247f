"""Per-agent lifecycle webhooks: delivered in order per call, retried with backoff, never on the audio path.

Each call gets its own FIFO and worker task, so a slow or failing receiver delays only that call's webhooks and
never a frame: `emit()` only appends to a queue. Payload:
    {"event", "sequence", "call_id", "call_log_id", "agent_id", "timestamp", "data"}
`sequence` counts 1, 2, 3… per call so a receiver can check order; the `X-Gateway-Delivery` header is the same on
every retry of one event so a receiver can drop duplicates (a retry after a timeout may arrive twice).

With a signing secret in the agent's `settings.webhook.secret`, each attempt carries
`X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>` (the scheme Stripe and
others use): a receiver recomputes it, compares in constant time and rejects old `t` to stop replays.

Any 2xx is success; anything else (3xx included: redirects are not followed), a connection error or a timeout is
retried after `backoff`, doubling up to `max_backoff`, `retries` attempts in all; then the event is counted in
`failures` and the next one goes. URLs are never logged (they may carry tokens): only their host.

Receivers must be public addresses unless `allow_private` (gateway/netguard.py: checked after DNS resolution, on the
addresses the connection then uses); a refused destination is not retried.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from .netguard import BlockedDestination, GuardedResolver, check_url

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger("gateway.webhooks")

USER_AGENT = "telephony-gateway-webhooks/1"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """`t=<unix>,v1=<hex>`: HMAC-SHA256 over "<t>." + body, keyed with the agent's webhook secret."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance: float = 300.0, now: float | None = None) -> bool:
    """Receiver side of `sign()` (for Python receivers and our tests): signature matches and is recent."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _signing_secret(agent: dict[str, Any] | None) -> str | None:
    hook = ((agent or {}).get("settings") or {}).get("webhook")
    secret = hook.get("secret") if isinstance(hook, dict) else None
    return secret if isinstance(secret, str) and secret else None


class WebhookDispatcher:
    def __init__(self, retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0, timeout: float = 10.0,
                 max_queued_per_call: int = 1000, allow_private: bool = False) -> None:
        self.retries = retries
        self.allow_private = allow_private
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.max_queued_per_call = max_queued_per_call
        self.failures = 0
        self.delivered = 0
        self.pending = 0
        self._queues: dict[str, asyncio.Queue] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._seq: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    def emit(self, call: "Call", event: str, data: dict[str, Any]) -> None:
        """Queue `event` for the call's agent webhook; returns at once."""
        url = ((call.agent or {}).get("webhook_url") or "").strip()
        if not url:
            return
        seq = self._seq[call.id] = self._seq.get(call.id, 0) + 1
        payload = {"event": event, "sequence": seq, "call_id": call.id, "call_log_id": call.log_id,
                   "agent_id": (call.agent or {}).get("id"), "timestamp": time.time(), "data": data}
        q = self._queues.get(call.id)
        if q is None:
            q = self._queues[call.id] = asyncio.Queue()
            self._workers[call.id] = asyncio.create_task(self._worker(call.id, q), name=f"webhooks-{call.id}")
        if q.qsize() >= self.max_queued_per_call:  # a receiver down for the whole of a very chatty call
            _, dropped, _ = q.get_nowait()
            self.pending -= 1
            self.failures += 1
            log.error("webhook queue full, oldest event dropped",
                      extra={"call_id": call.id, "event": dropped["event"]})
        q.put_nowait((url, payload, _signing_secret(call.agent)))
        self.pending += 1

    async def _worker(self, call_id: str, q: asyncio.Queue) -> None:
        try:
            while True:
                url, payload, secret = await q.get()
                try:
                    await self._deliver(url, payload, secret)
                finally:
                    self.pending -= 1
                if payload["event"] == "post_call" and q.empty():
                    return
        finally:
            self._queues.pop(call_id, None)
            self._workers.pop(call_id, None)
            self._seq.pop(call_id, None)
            if not q.empty():
                self.pending -= q.qsize()
                log.warning("webhooks not delivered (shutdown)", extra={"call_id": call_id, "count": q.qsize()})

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Per-socket timeouts rather than a total: waiting for a pooled connection is not the receiver's
            # fault. A per-host cap keeps one hanging receiver from taking every connection.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
                connector=aiohttp.TCPConnector(limit=500, limit_per_host=100,
                                               resolver=GuardedResolver(self.allow_private)),
                headers={"User-Agent": USER_AGENT})
        return self._session

    async def _deliver(self, url: str, payload: dict[str, Any], secret: str | None = None) -> None:
        try:
            body = json.dumps(payload, default=str).encode()
        except (TypeError, ValueError):
            self.failures += 1
            log.exception("webhook payload not serialisable", extra={"event": payload["event"],
                                                                       "call_id": payload["call_id"]})
            return
        host = URL(url).host
        headers = {"Content-Type": "application/json", "X-Gateway-Event": payload["event"],
                   "X-Gateway-Delivery": uuid.uuid4().hex}
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            headers["X-Gateway-Attempt"] = str(attempt)
            if secret:
                headers["X-Gateway-Signature"] = sign(secret, body)
            try:
                check_url(url, self.allow_private)
                async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += 1
                        return
                    problem = f"HTTP {resp.status}"
            except (BlockedDestination, aiohttp.ClientConnectorError) as e:
                blocked = e if isinstance(e, BlockedDestination) else e.os_error
                if isinstance(blocked, BlockedDestination):   # permanent: no retry
                    self.failures += 1
                    log.error("webhook destination refused", extra={
                        "event": payload["event"], "call_id": payload["call_id"], "host": host,
                        "reason": str(blocked)})
                    return
                problem = type(e).__name__
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                problem = type(e).__name__
            log.warning("webhook delivery failed", extra={"event": payload["event"], "call_id": payload["call_id"],
                                                          "attempt": attempt, "problem": problem, "host": host})
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        self.failures += 1
        log.error("webhook dropped after retries", extra={"event": payload["event"], "call_id": payload["call_id"],
                                                          "attempts": self.retries, "host": host})

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for queued deliveries (shutdown, tests)."""
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers, timeout=timeout)

    async def close(self) -> None:
        workers = list(self._workers.values())
        for t in workers:
            t.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
