"""`GET /api/v1/calls/{id}/recording`: a call's recording as `audio/wav` (API key required, like all of /api/v1),
with HTTP Range requests (RFC 9110 §14) so players can seek and downloads can resume.

A file-store recording is served from this machine's disk by aiohttp's FileResponse (Range, If-Range, HEAD); a
recording still being written (live call) or left by a dead process has its header sizes set from the file's
length first, so what is served is always a playable WAV. A bucket recording is read from the bucket with the
client's Range passed on.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..recording.wav import fix_header
from .calls import _log_row
from .validation import bad

if TYPE_CHECKING:
    from ..runtime import Gateway

MEDIA_TYPE = "audio/wav"


async def get_recording(request: web.Request) -> web.StreamResponse:
    gw: Gateway = request.app["gateway"]
    ident = request.match_info["id"]
    row = await _log_row(gw, ident)
    if row is None:
        raise bad("id", f"call {ident} not found", 404)
    info = row.get("recording") or {}
    status = row.get("recording_status")
    if status in (None, "expired") or not info.get("store"):
        problem = "was deleted after the retention period" if status == "expired" else "has no recording"
        raise bad("id", f"call {ident} {problem}", 404)
    name = f"call-{row['id']}.wav"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    if info["store"] == "s3":
        return await _from_bucket(gw, request, info, disposition)
    path = info.get("path") or ""
    if not os.path.exists(path):
        where = info.get("node") or "another node"
        raise bad("id", f"the recording of call {ident} is on the disk of {where}, not this node's (use an S3 "
                        "bucket, or a shared recordings_dir, when several nodes record)", 404)
    live = gw.calls.get(row["call_uuid"])
    if live is not None and live.recorder is not None:
        live.recorder.sync()
    try:
        fix_header(path)
    except OSError as e:
        raise bad("id", f"the recording of call {ident} cannot be read: {e.strerror}", 503) from None
    return web.FileResponse(path, headers={"Content-Type": MEDIA_TYPE, **disposition})


async def _from_bucket(gw: Gateway, request: web.Request, info: dict[str, Any],
                       headers: dict[str, str]) -> web.StreamResponse:
    bucket = gw.recordings.bucket
    if bucket is None or bucket.bucket != info.get("bucket"):
        raise bad("id", f"the recording is in bucket {info.get('bucket')!r}, which this gateway is not "
                        "configured for", 404)
    try:
        obj = await bucket.open(info["key"], request.headers.get("Range"))
    except Exception as e:      # botocore: NoSuchKey, InvalidRange, connection errors
        code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
        if code == "InvalidRange":
            raise bad("Range", "is not satisfiable", 416) from None
        if code in ("NoSuchKey", "404"):
            raise bad("id", "the recording is no longer in the bucket", 404) from None
        raise bad("id", f"the bucket did not answer ({type(e).__name__})", 502) from None
    resp = web.StreamResponse(status=obj.status, headers={"Content-Type": MEDIA_TYPE, "Accept-Ranges": "bytes",
                                                          **headers})
    resp.content_length = obj.length
    if obj.content_range:
        resp.headers["Content-Range"] = obj.content_range
    await resp.prepare(request)
    async for chunk in obj.chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/calls/{{id}}/recording", get_recording)
