"""Answering-machine detection (AMD) and voicemail drop for outbound calls.

* `AmdDetector` — streaming detector over PCM16 (8/16 kHz): app_amd greeting analysis + VAD + beep + fax tones.
* `maybe_start_amd(call)` — the one entry point carriers call for an outbound call (no-op unless the agent enables
  AMD); it taps the call's audio, holds the engine's audio until a human is confirmed, records the verdict and
  runs the voicemail drop.
* `report_amd(call, result)` — carriers with their own AMD (Twilio) hand their verdict here.
"""
from .controller import AmdController, controller_for, maybe_start_amd, report_amd
from .detector import AmdDecision, AmdDetector
from .params import AmdParams
from .settings import AmdSettings, amd_settings, validate_agent_settings

__all__ = ["AmdController", "AmdDecision", "AmdDetector", "AmdParams", "AmdSettings", "amd_settings",
           "controller_for", "maybe_start_amd", "report_amd", "validate_agent_settings"]
