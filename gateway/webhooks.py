"""Per-agent lifecycle webhooks: delivered in order per call, retried with backoff, never on the audio path.

Each call gets its own FIFO and worker task, so a slow or failing receiver delays only that call's webhooks and
never a frame. Payload: {"event", "call_id", "call_log_id", "agent_id", "timestamp", "data"}.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger("gateway.webhooks")


class WebhookDispatcher:
    def __init__(self, retries: int = 5, backoff: float = 0.5, timeout: float = 10.0) -> None:
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.failures = 0
        self.delivered = 0
        self._queues: dict[str, asyncio.Queue] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._session: aiohttp.ClientSession | None = None

    def emit(self, call: "Call", event: str, data: dict[str, Any]) -> None:
        url = ((call.agent or {}).get("webhook_url") or "").strip()
        if not url:
            return
        payload = {"event": event, "call_id": call.id, "call_log_id": call.log_id,
                   "agent_id": (call.agent or {}).get("id"), "timestamp": time.time(), "data": data}
        q = self._queues.get(call.id)
        if q is None:
            q = self._queues[call.id] = asyncio.Queue()
            self._workers[call.id] = asyncio.create_task(self._worker(call.id, q), name=f"webhooks-{call.id}")
        q.put_nowait((url, payload))

    async def _worker(self, call_id: str, q: asyncio.Queue) -> None:
        try:
            while True:
                url, payload = await q.get()
                await self._deliver(url, payload)
                if payload["event"] == "post_call" and q.empty():
                    return
        finally:
            self._queues.pop(call_id, None)
            self._workers.pop(call_id, None)

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                async with self._session.post(url, json=payload) as resp:
                    if resp.status < 300:
                        self.delivered += 1
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                problem = type(e).__name__
            log.warning("webhook delivery failed", extra={"event": payload["event"], "call_id": payload["call_id"],
                                                          "attempt": attempt, "problem": problem})
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        self.failures += 1
        log.error("webhook dropped after retries", extra={"event": payload["event"], "call_id": payload["call_id"]})

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for queued deliveries (shutdown, tests)."""
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers, timeout=timeout)

    async def close(self) -> None:
        for t in list(self._workers.values()):
            t.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
