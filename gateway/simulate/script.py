"""The YAML script a synthetic caller follows.

    voice: en-us                  # optional: espeak-ng voice for every `say` (default en-us)
    steps:
      - wait_reply                # wait for the agent to speak, then for it to stop (the greeting)
      - say: Hello, I would like to book a table for two.
      - wait_reply: {timeout_ms: 8000, quiet_ms: 800}
      - say: {text: Actually, make it three, barge_in_after_ms: 500}   # start 500 ms into the agent's reply
      - say: {wav: prompts/yes.wav}
      - dtmf: "1#"
      - silence: 2000             # ms
      - hangup

A script may also be a bare list of steps. Every error names the step and the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DIGITS = set("0123456789*#ABCD")


class ScriptError(ValueError):
    """The script is not valid; the message names the step and field."""


@dataclass(frozen=True)
class Say:
    text: str | None = None
    wav: str | None = None
    barge_in_after_ms: int | None = None   # wait for agent audio, then start this long after it began


@dataclass(frozen=True)
class WaitReply:
    timeout_ms: int = 15000   # no agent audio within this: the step fails (the call goes on)
    quiet_ms: int = 800       # agent silent this long after speaking: the reply has ended


@dataclass(frozen=True)
class Dtmf:
    digits: str


@dataclass(frozen=True)
class Silence:
    ms: int


@dataclass(frozen=True)
class Hangup:
    pass


Step = Say | WaitReply | Dtmf | Silence | Hangup


@dataclass(frozen=True)
class Script:
    steps: tuple[Step, ...]
    voice: str = "en-us"
    name: str = ""


def _int(value: Any, where: str, lo: int = 0, hi: int = 3_600_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ScriptError(f"{where}: must be an integer from {lo} to {hi}")
    return value


def _keys(body: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ScriptError(f"{where}: unknown field {sorted(unknown)[0]!r} (expected {', '.join(sorted(allowed))})")


def _step(raw: Any, i: int, base: Path | None) -> Step:
    where = f"step {i + 1}"
    if isinstance(raw, str):
        kind, body = raw, None
    elif isinstance(raw, dict) and len(raw) == 1:
        kind, body = next(iter(raw.items()))
    else:
        raise ScriptError(f"{where}: must be a step name or a mapping with one step name")
    where = f"{where} ({kind})"
    if kind == "say":
        if isinstance(body, str):
            body = {"text": body}
        if not isinstance(body, dict):
            raise ScriptError(f"{where}: give text, or {{text|wav, barge_in_after_ms}}")
        _keys(body, {"text", "wav", "barge_in_after_ms"}, where)
        text, wav = body.get("text"), body.get("wav")
        if (text is None) == (wav is None):
            raise ScriptError(f"{where}: give exactly one of text and wav")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ScriptError(f"{where}: text must be a non-empty string")
        if wav is not None:
            if not isinstance(wav, str):
                raise ScriptError(f"{where}: wav must be a file path")
            path = Path(wav) if base is None or Path(wav).is_absolute() else base / wav
            if not path.is_file():
                raise ScriptError(f"{where}: wav file {wav!r} not found")
            wav = str(path)
        barge = body.get("barge_in_after_ms")
        return Say(text, wav, None if barge is None else _int(barge, f"{where}: barge_in_after_ms", 0, 60_000))
    if kind == "wait_reply":
        body = body or {}
        if not isinstance(body, dict):
            raise ScriptError(f"{where}: give {{timeout_ms, quiet_ms}} or nothing")
        _keys(body, {"timeout_ms", "quiet_ms"}, where)
        return WaitReply(_int(body.get("timeout_ms", 15000), f"{where}: timeout_ms", 100),
                         _int(body.get("quiet_ms", 800), f"{where}: quiet_ms", 100, 60_000))
    if kind == "dtmf":
        digits = str(body) if isinstance(body, (str, int)) and not isinstance(body, bool) else ""
        if not digits or not set(digits.upper()) <= DIGITS:
            raise ScriptError(f"{where}: digits must be 0-9, *, #, A-D")
        return Dtmf(digits.upper())
    if kind == "silence":
        return Silence(_int(body, f"{where}: ms", 20, 3_600_000))
    if kind == "hangup":
        if body not in (None, {}):
            raise ScriptError(f"{where}: takes no fields")
        return Hangup()
    raise ScriptError(f"step {i + 1}: unknown step {kind!r} (expected say, wait_reply, dtmf, silence, hangup)")


def parse_script(data: Any, base: Path | None = None, name: str = "") -> Script:
    """A parsed YAML document (list of steps, or a mapping with `steps` and optional `voice`) as a Script."""
    voice = "en-us"
    if isinstance(data, dict):
        _keys(data, {"steps", "voice", "name"}, "script")
        voice = data.get("voice", voice)
        if not isinstance(voice, str) or not voice:
            raise ScriptError("script: voice must be a non-empty string")
        name = str(data.get("name") or name)
        data = data.get("steps")
    if not isinstance(data, list) or not data:
        raise ScriptError("script: steps must be a non-empty list")
    return Script(tuple(_step(s, i, base) for i, s in enumerate(data)), voice, name)


def load_script(path: str | Path) -> Script:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ScriptError(f"script: cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ScriptError(f"script: not valid YAML: {e}") from None
    return parse_script(data, p.parent, p.stem)
