"""In-process engines named `package.module:factory`: import the module, call the factory, check the result.

Importing a module runs its code with the gateway's privileges, so the registry only loads specs the operator gave
(`--engine`, `--allow-engine`, the config file); see EngineRegistry and docs/engine-protocol.md. Every failure is a
ValueError with one line saying what went wrong, so `gateway serve` and the REST API can report it without a
traceback.
"""
from __future__ import annotations

import importlib
import inspect
import re

from .base import VoiceEngine

#: `package.module:attribute` with dotted Python identifiers on both sides
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_python_spec(spec: str) -> bool:
    """True for `package.module:factory` (callers check `accept:<pool>` first: it has the same shape)."""
    return bool(_SPEC.match(spec))


def load_engine(spec: str) -> VoiceEngine:
    """Import `module`, look up `factory` and turn it into an engine: a VoiceEngine subclass is instantiated with no
    arguments, a VoiceEngine instance is used as it is, any other callable is called with no arguments and must
    return a VoiceEngine. The result serves every call of that spec (`handle_call` runs once per call)."""
    module_name, _, attr_path = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:   # the operator's module: any error in it is reported, not raised as a traceback
        raise ValueError(f"cannot import {module_name!r} for engine {spec!r}: {_one_line(e)}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"engine {spec!r}: {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if isinstance(obj, VoiceEngine):
        return obj
    if inspect.isclass(obj) and not issubclass(obj, VoiceEngine):
        raise ValueError(f"engine {spec!r}: class {obj.__name__} is not a gateway.engine.VoiceEngine subclass")
    if not callable(obj):
        raise ValueError(f"engine {spec!r}: {type(obj).__name__} is neither a VoiceEngine nor a factory")
    try:
        engine = obj()
    except Exception as e:
        raise ValueError(f"engine {spec!r}: the factory failed: {_one_line(e)}") from None
    if not isinstance(engine, VoiceEngine):
        raise ValueError(f"engine {spec!r}: the factory returned {type(engine).__name__}, not a "
                         "gateway.engine.VoiceEngine")
    return engine


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
