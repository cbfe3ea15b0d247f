"""Whether a media socket is served on the direct path (carriers/wsdirect.py): its text and binary messages go to
the stream's handlers in aiohttp's `data_received` instead of a reader task, once the stream is live."""
from __future__ import annotations

from carriers.wsdirect import DirectWebSocket


def on_direct_path(ws: object) -> bool:
    q = getattr(ws, "_reader", None)
    return isinstance(ws, DirectWebSocket) and q is not None and q.handler is not None \
        and q.binary_handler is not None
