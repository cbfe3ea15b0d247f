"""A WAV message given as an http(s) URL (an agent's transfer_message), fetched once per URL and kept in memory.

Bounded: 10 s and 10 MB per fetch, 16 URLs kept; a failure is a WavError with the reason, so the caller plays
nothing and goes on (a transfer still happens). The URL comes from an API user, so it goes through the same SSRF
guard as webhooks (gateway/netguard.py): public addresses only unless `--allow-private-webhooks`.
"""
from __future__ import annotations

from collections import OrderedDict

import aiohttp

from .amd.wav import WavError, parse_wav
from .netguard import BlockedDestination, GuardedResolver, check_url

MAX_BYTES = 10 * 1024 * 1024
TIMEOUT_S = 10.0
_cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()


def is_wav_url(message: str) -> bool:
    m = message.strip().lower()
    return m.startswith(("http://", "https://")) and m.split("?", 1)[0].endswith(".wav")


async def fetch_wav(url: str, rate: int, allow_private: bool = False) -> bytes:
    """PCM16 mono at `rate` from the WAV at `url`."""
    key = (url, rate)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    try:
        check_url(url, allow_private)
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_private))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), connector=connector) as http:
            async with http.get(url) as r:
                if r.status != 200:
                    raise WavError(f"message {url!r}: HTTP {r.status}")
                data = await r.content.read(MAX_BYTES + 1)
    except BlockedDestination as e:
        raise WavError(f"message {url!r} not fetched: {e}") from None
    except (aiohttp.ClientError, TimeoutError) as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, BlockedDestination):
            raise WavError(f"message {url!r} not fetched: {cause}") from None
        raise WavError(f"message {url!r} could not be fetched: {type(e).__name__}") from None
    if len(data) > MAX_BYTES:
        raise WavError(f"message {url!r} is larger than {MAX_BYTES // 1024 // 1024} MB")
    pcm = parse_wav(data, rate, url)
    _cache[key] = pcm
    while len(_cache) > 16:
        _cache.popitem(last=False)
    return pcm
