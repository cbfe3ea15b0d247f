"""Voice engines: the interface, the built-in echo/greeting engines and the websocket bridge."""
from __future__ import annotations

from typing import Any

from .base import EngineSession, VoiceEngine

__all__ = ["EngineSession", "VoiceEngine", "EngineRegistry"]

_EXPECTED = "expected echo, greeting, ws://…, wss://…, accept or accept:<pool>"


class EngineRegistry:
    """Resolves an agent's `engine` spec (or the gateway default) to an engine instance.

    Specs: `echo`, `greeting`, `ws://…` / `wss://…` (the gateway connects to the engine), `accept` /
    `accept:<pool>` (engines connect to the gateway's `/engine/ws`); websocket specs take `?sample_rate=8000|16000|
    24000`. In-process engines can be registered under a name with `register()`.
    """

    def __init__(self, default: str = "greeting") -> None:
        self.default = default
        self._named: dict[str, VoiceEngine] = {}
        #: set by `ws_bridge.setup_routes()` when the HTTP server exposes `/engine/ws`
        self.accept_hub: Any = None

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
        if spec == "accept" or spec.startswith(("accept:", "accept?")):
            from .ws_bridge import AcceptEngine
            return AcceptEngine(spec, self.accept_hub)
        raise ValueError(f"unknown engine {spec!r} ({_EXPECTED})")

    def validate(self, spec: str) -> None:
        """Raise ValueError saying what is wrong with `spec` (unknown name, bad URL, unsupported sample_rate)."""
        if spec in self._named or spec in ("echo", "greeting"):
            return
        if spec.startswith(("ws://", "wss://")):
            from .ws_bridge import WebSocketEngine
            WebSocketEngine(spec)
            return
        if spec == "accept" or spec.startswith(("accept:", "accept?")):
            from .ws_bridge import parse_accept_spec
            parse_accept_spec(spec)
            return
        raise ValueError(f"unknown engine {spec!r} ({_EXPECTED})")
