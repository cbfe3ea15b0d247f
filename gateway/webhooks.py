"""Per-agent lifecycle webhooks: delivered in order per call, retried with backoff, never on the audio path.

Each call gets its own FIFO and worker task, so a slow or failing receiver delays only that call's webhooks and
never a frame: `emit()` only appends to a queue (and to the store's write-behind queue: the outbox is persisted,
bounded, and delivered after a restart — see WebhookDispatcher). Payload:
    {"event", "sequence", "call_id", "call_log_id", "agent_id", "timestamp", "data"}
`sequence` counts 1, 2, 3… per call so a receiver can check order; the `X-Gateway-Delivery` header is the same on
every retry of one event, and after a restart, so a receiver can drop duplicates (a retry after a timeout, or a
delivery cut short by a shutdown, may arrive twice).

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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from yarl import URL

from .netguard import BlockedDestination, GuardedResolver, check_url

log = logging.getLogger("gateway.webhooks")

USER_AGENT = "telephony-gateway-webhooks/1"
LINGER_S = 30.0   # how long a call's worker waits for more events once the call has ended and its queue is empty


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


class WebhookSubject(Protocol):
    """What a webhook is about: a live `Call`, or a call-log row closed on behalf of a dead process."""
    id: str
    log_id: int
    agent: dict[str, Any] | None
    ended: asyncio.Event


@dataclass(slots=True, eq=False)
class Delivery:
    """One queued webhook: the row kept in the store's outbox until it is delivered or given up."""

    delivery_id: str                 # the X-Gateway-Delivery header: the same on every attempt and after a restart
    call_id: str
    event: str
    url: str
    agent_id: int | None
    body: bytes                      # serialised when queued: what is stored is exactly what is sent
    secret: str | None = None        # live calls: the agent's signing secret (never stored with the row)
    restored: bool = False           # read back from the outbox at start: the secret is looked up again
    dropped: bool = False

    def row(self, owner: str) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "owner": owner, "call_id": self.call_id, "event": self.event,
                "url": self.url, "agent_id": self.agent_id, "body": self.body.decode()}


class WebhookDispatcher:
    """Per-call FIFOs and workers over a bounded outbox that the store keeps (when given one).

    Every queued webhook is written to the store's `webhook_outbox` table (through its write-behind queue, so
    `emit()` never waits on the database) and deleted once delivered or given up; `restore()` at start delivers
    what a previous run of this process (`owner`, the process id of docs/deploy.md) left behind, in order per
    call. At most `max_pending` webhooks wait in all, `max_queued_per_call` per call: past either bound the
    oldest waiting one is dropped, counted in `dropped` (gateway_webhooks_dropped_total) and logged."""

    def __init__(self, retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0, timeout: float = 10.0,
                 max_queued_per_call: int = 1000, max_pending: int = 10000, store: Any = None,
                 owner: str = "", allow_private: bool = False) -> None:
        self.retries = retries
        self.allow_private = allow_private
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.max_queued_per_call = max_queued_per_call
        self.max_pending = max_pending
        self.store = store
        self.owner = owner
        self.failures = 0
        self.delivered = 0
        self.dropped = 0
        self._items: OrderedDict[str, Delivery] = OrderedDict()   # every waiting webhook, oldest first
        self._inflight: set[str] = set()
        self._queues: dict[str, asyncio.Queue[Delivery]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._seq: dict[str, int] = {}
        #: events of calls adopted from another process, kept in order (with when they happened) until the old
        #: owner says how many sequence numbers it used (`resume_sequence`)
        self._held: dict[str, list[tuple[str, dict[str, Any], float]]] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def pending(self) -> int:
        """Webhooks queued or in flight."""
        return len(self._items)

    def sequence(self, call_id: str) -> int:
        """How many of this call's events were numbered here (what an adopter goes on from)."""
        return self._seq.get(call_id, 0)

    def hold(self, call: WebhookSubject) -> None:
        """The call was just adopted from another process, which may still be numbering its last events: keep this
        process's events of the call, in order, until `resume_sequence()` says where the numbering goes on."""
        if ((call.agent or {}).get("webhook_url") or "").strip():
            self._held.setdefault(call.id, [])

    def held(self, call_id: str) -> int:
        """Events of the call waiting for `resume_sequence()`."""
        return len(self._held.get(call_id, ()))

    def resume_sequence(self, call: WebhookSubject, sent: int) -> None:
        """Another process already sent `sent` events of this call (it owned it before): go on from there, and
        queue the events held meanwhile."""
        if ((call.agent or {}).get("webhook_url") or "").strip():
            self._seq[call.id] = max(self._seq.get(call.id, 0), sent)
        for event, data, at in self._held.pop(call.id, ()):
            self._queue_event(call, event, data, at)

    def emit(self, call: WebhookSubject, event: str, data: dict[str, Any]) -> None:
        """Queue `event` for the call's agent webhook; returns at once."""
        held = self._held.get(call.id)
        if held is not None:
            held.append((event, data, time.time()))
            return
        self._queue_event(call, event, data, time.time())

    def _queue_event(self, call: WebhookSubject, event: str, data: dict[str, Any], at: float) -> None:
        url = ((call.agent or {}).get("webhook_url") or "").strip()
        if not url:
            return
        seq = self._seq[call.id] = self._seq.get(call.id, 0) + 1
        agent_id: int | None = (call.agent or {}).get("id")
        payload = {"event": event, "sequence": seq, "call_id": call.id, "call_log_id": call.log_id,
                   "agent_id": agent_id, "timestamp": at, "data": data}
        try:
            body = json.dumps(payload, default=str).encode()
        except (TypeError, ValueError):
            self.failures += 1
            log.exception("webhook payload not serialisable", extra={"event": event, "call_id": call.id})
            return
        self._enqueue(Delivery(uuid.uuid4().hex, call.id, event, url, agent_id, body,
                               secret=_signing_secret(call.agent)), persist=True, ended=call.ended)

    def _enqueue(self, d: Delivery, *, persist: bool, until_empty: bool = False,
                 ended: asyncio.Event | None = None) -> None:
        q = self._queues.get(d.call_id)
        if q is None:
            q = self._queues[d.call_id] = asyncio.Queue()
            self._workers[d.call_id] = asyncio.create_task(self._worker(d.call_id, q, until_empty, ended),
                                                           name=f"webhooks-{d.call_id}")
        if q.qsize() >= self.max_queued_per_call:  # a receiver down for the whole of a very chatty call
            self._drop(q.get_nowait(), "call's webhook queue full")
        if len(self._items) >= self.max_pending:   # receivers down for many calls: the outbox is full
            oldest = next((o for o in self._items.values() if o.delivery_id not in self._inflight), None)
            if oldest is not None:
                self._drop(oldest, "webhook outbox full")
        q.put_nowait(d)
        self._items[d.delivery_id] = d
        if persist and self.store is not None:
            self.store.outbox_add(d.row(self.owner))

    def _drop(self, d: Delivery, why: str) -> None:
        if d.dropped:
            return
        d.dropped = True
        d.body = b""
        self._items.pop(d.delivery_id, None)
        self.dropped += 1
        if self.store is not None:
            self.store.outbox_remove(d.delivery_id)
        log.error(f"{why}, oldest event dropped", extra={"call_id": d.call_id, "event": d.event,
                                                          "dropped_total": self.dropped,
                                                          "max_pending": self.max_pending})

    async def restore(self) -> int:
        """Queue what the outbox holds for this process (a previous run stopped or crashed); returns the count."""
        if self.store is None:
            return 0
        return self._requeue(await self.store.outbox_load(self.owner), "webhook outbox restored")

    async def take_over(self, lost: str) -> int:
        """Queue the undelivered webhooks of a lost process of the cluster, which now belong to this one."""
        if self.store is None:
            return 0
        return self._requeue(await self.store.outbox_take(lost, self.owner), "webhook outbox of a lost process "
                                                                             "taken over", lost=lost)

    def _requeue(self, rows: list[dict[str, Any]], what: str, **extra: Any) -> int:
        for r in rows:
            self._enqueue(Delivery(r["delivery_id"], r["call_id"], r["event"], r["url"], r["agent_id"],
                                   r["body"].encode(), restored=True), persist=False, until_empty=True)
        if rows:
            log.info(what, extra={"count": len(rows), "calls": len({r["call_id"] for r in rows}),
                                  "queued": self.pending, **extra})
        return len(rows)

    async def _worker(self, call_id: str, q: asyncio.Queue[Delivery], until_empty: bool,
                      ended: asyncio.Event | None) -> None:
        """Deliver one call's webhooks in order; ends after `post_call` (or, for restored calls, when empty), or
        once the call has ended and nothing more came for LINGER_S (an event after post_call, or no post_call):
        a worker, its queue and its sequence counter never outlive a call for long."""
        try:
            while True:
                if ended is not None and ended.is_set() and q.empty():
                    try:
                        d: Delivery = await asyncio.wait_for(q.get(), LINGER_S)
                    except TimeoutError:
                        return
                else:
                    d = await q.get()
                if not d.dropped:
                    self._inflight.add(d.delivery_id)
                    try:
                        await self._deliver(d)
                    finally:
                        self._inflight.discard(d.delivery_id)
                        self._items.pop(d.delivery_id, None)
                    if self.store is not None:  # not reached when cancelled: the row stays for the next start
                        self.store.outbox_remove(d.delivery_id)
                if (until_empty or d.event == "post_call") and q.empty():
                    return
        finally:
            self._queues.pop(call_id, None)
            self._workers.pop(call_id, None)
            self._seq.pop(call_id, None)
            left = 0
            while not q.empty():
                d = q.get_nowait()
                if not d.dropped:
                    left += 1
                    self._items.pop(d.delivery_id, None)
            if left:
                log.warning("webhooks left in the outbox for the next start" if self.store is not None
                            else "webhooks not delivered (shutdown)", extra={"call_id": call_id, "count": left})

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

    async def _secret(self, d: Delivery) -> str | None:
        if not d.restored or d.agent_id is None or self.store is None:
            return d.secret
        try:
            return _signing_secret(await self.store.get_agent(d.agent_id))
        except Exception:  # noqa: BLE001 - the agent row is unreadable: deliver unsigned rather than never
            log.exception("webhook signing secret lookup failed", extra={"agent_id": d.agent_id})
            return None

    async def _deliver(self, d: Delivery) -> None:
        url, body = d.url, d.body
        secret = await self._secret(d)
        host = URL(url).host
        headers = {"Content-Type": "application/json", "X-Gateway-Event": d.event,
                   "X-Gateway-Delivery": d.delivery_id}
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
                        "event": d.event, "call_id": d.call_id, "host": host, "reason": str(blocked)})
                    return
                problem = type(e).__name__
            except (TimeoutError, aiohttp.ClientError, ValueError) as e:
                problem = type(e).__name__
            log.warning("webhook delivery failed", extra={"event": d.event, "call_id": d.call_id,
                                                          "attempt": attempt, "problem": problem, "host": host})
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        self.failures += 1
        log.error("webhook dropped after retries", extra={"event": d.event, "call_id": d.call_id,
                                                          "attempts": self.retries, "host": host})

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for queued deliveries (shutdown, tests): the workers of calls with webhooks queued or in flight, not
        those only lingering (LINGER_S) for a late event of an ended call — waiting for those held every drain and
        shutdown for the whole `timeout` with nothing left to send."""
        busy = {d.call_id for d in self._items.values()}
        workers = [task for call_id, task in self._workers.items() if call_id in busy]
        if workers:
            await asyncio.wait(workers, timeout=timeout)

    async def close(self) -> None:
        """Stop delivering; what is still queued stays in the store's outbox for the next start."""
        workers = list(self._workers.values())
        for t in workers:
            t.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
