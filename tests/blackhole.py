"""A TCP relay to a real server that can turn into a black hole: while `silent`, every connection — those open
already and new ones, which it still accepts — goes unanswered, both ways, as when the server's host is gone or a
firewall drops its packets (no refusal, no reset: the client hears nothing). Binds 127.0.0.1 only."""
from __future__ import annotations

import asyncio
import contextlib

from gateway.loadtest.command import free_port


class BlackHoleRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.silent = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Close every connection relayed so far (its client sees the end of the stream); new ones are relayed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.silent:          # accepted, never answered (what reaches us is read and dropped)
                while await client_r.read(65536):
                    pass
                return
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            try:
                await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
            finally:
                server_w.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client_w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward until end of stream; while silent, what arrives is dropped instead."""
        while data := await reader.read(65536):
            if not self.silent:
                writer.write(data)
                with contextlib.suppress(OSError):
                    await writer.drain()
        writer.close()
