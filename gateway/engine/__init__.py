"""Voice engines: the interface, the built-in echo/greeting engines and the websocket bridge."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import EngineSession, VoiceEngine
from .loader import is_python_spec, load_engine

__all__ = ["EngineSession", "VoiceEngine", "EngineRegistry"]

_EXPECTED = ("expected echo, greeting, ws://…, wss://…, accept, accept:<pool> or an operator-allowed "
             "package.module:factory")


class EngineRegistry:
    """Resolves an agent's `engine` spec (or the gateway default) to an engine instance.

    Specs: `echo`, `greeting`, `ws://…` / `wss://…` (the gateway connects to the engine), `accept` /
    `accept:<pool>` (engines connect to the gateway's `/engine/ws`); websocket specs take `?sample_rate=8000|16000|
    24000`; `package.module:factory` loads an in-process Python engine (gateway/engine/loader.py). In-process
    engines can also be registered under a name with `register()`.

    Importing a module runs arbitrary code, so a `package.module:factory` spec is only accepted when the operator
    gave it: the default (`--engine`) or one of `allowed` (`--allow-engine`). An agent created through the REST API
    may name one of those, never another module.
    """

    def __init__(self, default: str = "greeting", allowed: Iterable[str] = ()) -> None:
        self.default = default
        self._named: dict[str, VoiceEngine] = {}
        #: the in-process specs the operator allowed (the default one always is)
        self.allowed_python = {s for s in (default, *allowed) if is_python_spec(s)}
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
        if is_python_spec(spec):
            return self._load_python(spec)
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
        if is_python_spec(spec):
            self._load_python(spec)
            return
        raise ValueError(f"unknown engine {spec!r} ({_EXPECTED})")

    def _load_python(self, spec: str) -> VoiceEngine:
        """The engine for an operator-allowed `package.module:factory`, imported and built once (then named)."""
        if spec in self._named:
            return self._named[spec]
        if spec not in self.allowed_python:
            raise ValueError(f"in-process engine {spec!r} is not allowed: the operator must name it with "
                             "--engine or --allow-engine (GATEWAY_ALLOWED_ENGINES)")
        engine = load_engine(spec)
        self.register(spec, engine)
        return engine
