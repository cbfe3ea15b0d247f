"""What the Exotel and Vonage stream clients share: an aiohttp websocket, a reader that wakes waiters on each
message, and bounded waits for a condition on what was received or for the close."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp


class ReceivingClient:
    """Subclasses set `self.ws`, start `self._reader` and call `await self._changed()` after each message and at
    the close; `self.rx` is what they received. `on_media(audio, arrival)` and `on_clear(arrival)`, when set, are
    told of each audio message and clear as it arrives (the simulator's caller listens through them)."""

    rx: Any

    def __init__(self, on_media: Callable[[bytes, float], None] | None = None,
                 on_clear: Callable[[float], None] | None = None) -> None:
        self.on_media = on_media
        self.on_clear = on_clear
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    @property
    def conn(self) -> aiohttp.ClientWebSocketResponse:
        """The open websocket (after the subclass connected)."""
        if self.ws is None:
            raise RuntimeError("not connected")
        return self.ws

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> None:
        """Until `predicate(self.rx)` holds; AssertionError when the socket closed first."""
        async def _wait() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: predicate(self.rx) or self.closed.is_set())
        await asyncio.wait_for(_wait(), timeout)
        assert predicate(self.rx), "socket closed before the expected messages arrived"

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=2)
