"""Voice engines: the interface, the built-in echo/greeting engines and the websocket bridge."""
from __future__ import annotations

from typing import Any

from .base import EngineSession, VoiceEngine

__all__ = ["EngineSession", "VoiceEngine", "EngineRegistry"]


class EngineRegistry:
    """Resolves an agent's `engine` spec (or the gateway default) to an engine instance.

    Specs: `echo`, `greeting`, `ws://…` / `wss://…` (websocket bridge). In-process engines can be registered
    under a name with `register()`.
    """

    def __init__(self, default: str = "greeting") -> None:
        self.default = default
        self._named: dict[str, VoiceEngine] = {}

    def register(self, name: str, engine: VoiceEngine) -> None:
        self._named[name] = engine

    def for_agent(self, agent: dict[str, Any] | None) -> VoiceEngine:
        spec = ((agent or {}).get("engine") or self.default).strip()
        return self.resolve(spec)

    def resolve(self, spec: str) -> VoiceEngine:
        if spec in self._named:
            return self._named[spec]
        if spec == "echo":
            from .echo import EchoEngine
            return EchoEngine()
        if spec == "greeting":
            from .greeting import GreetingEngine
            return GreetingEngine()
        if spec.startswith(("ws://", "wss://")):
            from .ws_bridge import WebSocketEngine
            return WebSocketEngine(spec)
        raise ValueError(f"unknown engine {spec!r} (expected echo, greeting, ws://… or wss://…)")

    def validate(self, spec: str) -> None:
        if spec in self._named or spec in ("echo", "greeting") or spec.startswith(("ws://", "wss://")):
            return
        raise ValueError(f"unknown engine {spec!r} (expected echo, greeting, ws://… or wss://…)")
