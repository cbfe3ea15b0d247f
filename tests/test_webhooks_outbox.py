"""The webhook outbox (issue 13 item 4): webhooks that could not be delivered survive a stop in the store's
SQLite file and are delivered after the restart, in order per call, signed and with the same delivery ids; the
outbox is bounded (oldest dropped, counted in /metrics, logged)."""
from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3

import pytest
from aiohttp import web

from gateway.frames import HangupSource
from gateway.webhooks import verify
from sipp import metric_value, metrics_text, wait_for
from test_webhooks import LIFECYCLE, Receiver, start_call

pytestmark = pytest.mark.timeout(60)


class LateReceiver(Receiver):
    """A receiver whose port is reserved (bound, not listening: connections are refused) until it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    async def start(self) -> None:
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()


def outbox_rows(db: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT delivery_id, call_id, event FROM webhook_outbox ORDER BY id").fetchall()


async def test_undelivered_webhooks_are_delivered_after_a_restart(make_gateway):
    receiver = LateReceiver()
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    gw.webhooks.backoff, gw.webhooks.retries = 0.05, 1000   # keeps retrying until the gateway stops
    secret = "hook-secret"
    calls = [await start_call(gw, receiver.url("ok"), {"webhook": {"secret": secret}}) for _ in range(2)]
    for call in calls:
        await call.end(HangupSource.USER, "caller_hung_up")
    await wait_for(lambda: gw.webhooks.pending == 2 * len(LIFECYCLE))
    db = gw.settings.db_url
    await gw.stop()                                           # receiver still down
    stored = outbox_rows(db)
    assert len(stored) == 2 * len(LIFECYCLE)
    for call in calls:
        assert [e for _, c, e in stored if c == call.id] == LIFECYCLE

    await receiver.start()                                    # receiver up, then the gateway starts again
    try:
        gw2 = await make_gateway(allow_private_webhooks=True)
        for call in calls:
            await asyncio.wait_for(receiver.done(call.id).wait(), 20)
            got = receiver.events(call.id)
            assert [e["event"] for e in got] == LIFECYCLE
            assert [e["sequence"] for e in got] == list(range(1, len(LIFECYCLE) + 1))
        ids = [r["headers"]["X-Gateway-Delivery"] for r in receiver.requests]
        assert sorted(ids) == sorted(d for d, _, _ in stored)   # the same ids: receivers can drop duplicates
        assert all(verify(secret, r["raw"], r["headers"]["X-Gateway-Signature"]) for r in receiver.requests)
        await wait_for(lambda: gw2.webhooks.pending == 0)
        await gw2.store.flush()
        assert outbox_rows(db) == []
    finally:
        await receiver.runner.cleanup()


async def test_outbox_is_bounded_oldest_dropped_counted_and_logged(make_gateway, caplog):
    caplog.set_level(logging.INFO, logger="gateway.webhooks")
    receiver = LateReceiver()                                 # never starts: every delivery is refused
    gw = await make_gateway(webhook_outbox_max=4, allow_private_webhooks=True)   # receiver on 127.0.0.1
    gw.webhooks.backoff, gw.webhooks.retries = 0.05, 1000
    call = await start_call(gw, receiver.url("ok"))
    await call.end(HangupSource.USER, "bye")
    await wait_for(lambda: gw.webhooks.dropped == len(LIFECYCLE) - 4)
    assert gw.webhooks.pending == 4
    await gw.store.flush()
    # the oldest waiting ones went (one being sent at that moment is kept), the newest are all there, in order
    rows = [e for _, _, e in outbox_rows(gw.settings.db_url)]
    assert len(rows) == 4 and rows[-3:] == LIFECYCLE[-3:] and rows == sorted(rows, key=LIFECYCLE.index)
    text = await metrics_text(gw)
    assert metric_value(text, "gateway_webhooks_dropped_total") == len(LIFECYCLE) - 4
    assert metric_value(text, "gateway_webhooks_pending") == 4
    assert "webhook outbox full, oldest event dropped" in caplog.text
    receiver.sock.close()
