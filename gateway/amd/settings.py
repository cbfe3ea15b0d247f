"""Agent settings for AMD and voicemail drop, read once per call.

    agent["settings"]["amd"]       = {"enabled": true, "params": {...},
                                      "provider": "gateway" | "twilio" | "signalwire" | "telnyx"}
    agent["settings"]["voicemail"] = {"enabled": true, "message": "/path/to/message.wav" | "text for the engine"}

`params` overrides any `AmdParams` field (e.g. {"greeting": 2000, "vad": "energy"}). A message that names a .wav
file is played by the gateway; any other string is handed to the engine to speak (AmdResult.voicemail_message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .params import AmdParams

#: "gateway" runs our detector; a carrier's name asks that carrier's own AMD (on that carrier's calls)
PROVIDERS = ("gateway", "twilio", "signalwire", "telnyx")


@dataclass(frozen=True)
class AmdSettings:
    enabled: bool = False
    provider: str = "gateway"
    params: AmdParams = AmdParams()
    voicemail: bool = False
    message: str | None = None

    @property
    def message_kind(self) -> str:
        """audio (WAV played by the gateway) | text (spoken by the engine) | none."""
        if not self.voicemail or not self.message:
            return "none"
        return "audio" if self.message.strip().lower().endswith(".wav") else "text"


def amd_settings(agent: dict[str, Any] | None) -> AmdSettings:
    """Parse an agent's settings; raises ValueError (with what is wrong) on invalid values."""
    settings = (agent or {}).get("settings") or {}
    amd = settings.get("amd") or {}
    vm = settings.get("voicemail") or {}
    if not isinstance(amd, dict) or not isinstance(vm, dict):
        raise ValueError("settings.amd and settings.voicemail must be objects")
    provider = amd.get("provider") or "gateway"
    if provider not in PROVIDERS:
        raise ValueError(f"settings.amd.provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    message = vm.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError("settings.voicemail.message must be a string (a .wav path or text)")
    return AmdSettings(enabled=bool(amd.get("enabled")), provider=provider,
                       params=AmdParams().with_overrides(amd.get("params")),
                       voicemail=bool(vm.get("enabled")), message=(message or "").strip() or None)


def validate_agent_settings(settings: dict[str, Any] | None) -> list[str]:
    """Problems in `settings.amd` / `settings.voicemail` for an API to return as a 4xx (empty list = fine)."""
    try:
        s = amd_settings({"settings": settings or {}})
    except (ValueError, TypeError) as e:
        return [str(e)]
    errors = []
    if s.voicemail and not s.message:
        errors.append("settings.voicemail.enabled needs settings.voicemail.message (a .wav path or text)")
    if s.voicemail and not s.enabled:
        errors.append("settings.voicemail needs settings.amd.enabled (voicemail drop follows machine detection)")
    if s.message_kind == "audio" and s.message:
        from .wav import WavError, load_message
        try:
            load_message(s.message, 8000)
        except WavError as e:
            errors.append(str(e))
    return errors
