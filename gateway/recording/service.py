"""Call recordings for the whole process: which calls are recorded, where the files go, the sweep that finishes
what a dead process left and deletes old recordings, and the counters /metrics shows.

A recorded call's log row carries `recording_url` (`<public URL>/api/v1/calls/<id>/recording`, set when recording
starts), `recording_status` and `recording` (where it is). Statuses:

* `recording` — the call is live and its WAV is being written under `recordings_dir/YYYY/MM/DD/<call uuid>.wav`;
* `stored` — finished: the file is complete (file store), or uploaded to the bucket and the local copy deleted;
* `upload_failed` — finished, the upload failed: the local file is kept and the sweep retries it;
* `failed` — writing failed (disk full, I/O error): what reached the disk is kept and still served;
* `expired` — deleted after `recording_retention_days`; `recording_url` is cleared.

Nothing here can fail a call: every error is logged with the call id and counted, and the call goes on.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .recorder import CHANNELS, Recorder
from .s3 import S3Bucket
from .wav import fix_header

if TYPE_CHECKING:
    from ..call import Call
    from ..runtime import Gateway

log = logging.getLogger("gateway.recording")

#: seconds the gateway waits for uploads still running when it stops (the sweep of the next start finishes them)
STOP_GRACE = 5.0


@dataclass(frozen=True)
class RecordingChoice:
    enabled: bool
    channels: str


def recording_choice(agent: dict[str, Any] | None, request: dict[str, Any] | None) -> RecordingChoice:
    """The agent's `settings.recording`, overridden key by key by a per-call request (dispatch's `recording`)."""
    section = ((agent or {}).get("settings") or {}).get("recording")
    section = section if isinstance(section, dict) else {}      # an agent stored before the check existed
    merged = {**section, **{k: v for k, v in (request or {}).items() if v is not None}}
    channels = merged.get("channels") or "dual"
    return RecordingChoice(bool(merged.get("enabled")), channels if channels in CHANNELS else "dual")


class Recordings:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        s = gateway.settings
        self.root = s.recordings_path
        self.bucket: S3Bucket | None = (S3Bucket(s.recording_s3_bucket, s.recording_s3_prefix, s.recording_s3_endpoint,
                                                 s.recording_s3_region) if s.recording_s3_bucket else None)
        self.started = 0
        self.completed = 0
        self.write_failures = 0
        self.upload_failures = 0
        self.expired = 0
        #: uploads running, by call-log id (the sweep leaves those alone)
        self._uploads: dict[int, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        return sum(1 for c in self.gateway.calls.active.values() if c.recorder is not None)

    def url_for(self, log_id: int) -> str:
        return f"{self.gateway.settings.public_base}/api/v1/calls/{log_id}/recording"

    def relative_path(self, call: Call) -> str:
        day = datetime.now(UTC)
        return f"{day:%Y/%m/%d}/{call.id}.wav"

    # -- a call ---------------------------------------------------------------------------------------------------
    async def start(self, call: Call) -> None:
        """At the answer: record the call when its agent (or its dispatch) asks for it. Never raises."""
        choice = recording_choice(call.agent, call.recording_request)
        if not choice.enabled or call.bus is None:
            return
        relative = self.relative_path(call)
        path = os.path.join(self.root, relative)
        info = {"request": call.recording_request, "channels": choice.channels, "sample_rate": call.bus.carrier_rate,
                "store": "file", "path": path, "relative": relative, "node": self.gateway.settings.node_id}
        try:
            recorder = Recorder(path, call.bus.carrier_rate, choice.channels, asyncio.get_running_loop().time,
                                lambda e: self._write_failed(call, e))
        except OSError as e:
            self._write_failed(call, e)
            await call.record(recording_status="failed", recording={**info, "error": str(e)[:200]})
            return
        call.recorder = recorder
        call.recording_info = info
        call.add_tap(recorder.caller)
        self.started += 1
        await call.record(recording_status="recording", recording=info, recording_url=self.url_for(call.log_id))
        call.log.info("recording", extra={"channels": choice.channels, "path": path})

    def _write_failed(self, call: Call, error: OSError) -> None:
        self.write_failures += 1
        call.log.error("recording stopped: %s", error, extra={"errno": error.errno})

    async def finish(self, call: Call) -> None:
        """The call ended: close the file and record it; the upload (when a bucket is set) runs in the background."""
        recorder = call.recorder
        if recorder is None:
            return
        call.recorder = None
        call.remove_tap(recorder.caller)
        recorder.close()
        info = {**call.recording_info, "bytes": recorder.data_bytes, "duration": round(recorder.duration, 3)}
        if recorder.failed is not None:
            await call.record(recording_status="failed", recording={**info, "error": str(recorder.failed)[:200]})
            return
        self.completed += 1
        if self.bucket is None:
            await call.record(recording_status="stored", recording=info)
            return
        await call.record(recording=info)     # status stays `recording` until the upload ends either way
        task = asyncio.create_task(self._upload(call.log_id, call.id, info), name=f"recording-upload-{call.id}")
        self._uploads[call.log_id] = task
        task.add_done_callback(lambda _: self._uploads.pop(call.log_id, None))

    async def _upload(self, log_id: int, call_id: str, info: dict[str, Any]) -> None:
        """Move a finished recording to the bucket; on failure keep the file for the sweep to retry."""
        bucket = self.bucket
        if bucket is None:
            return
        key = bucket.key_for(info["relative"])
        try:
            await bucket.upload(info["path"], key)
        except Exception as e:     # botocore raises many kinds (ClientError, EndpointConnectionError…)
            self.upload_failures += 1
            log.error("recording upload failed: %s", str(e)[:300], extra={"call_id": call_id, "bucket": bucket.bucket})
            await self.gateway.store.update_call(log_id, recording_status="upload_failed",
                                                 recording={**info, "error": str(e)[:200]})
            return
        try:
            os.unlink(info["path"])
        except OSError:
            pass
        stored = {k: v for k, v in info.items() if k not in ("path", "error")}
        await self.gateway.store.update_call(log_id, recording_status="stored",
                                             recording={**stored, "store": "s3", "bucket": bucket.bucket, "key": key})
        log.info("recording uploaded", extra={"call_id": call_id, "bucket": bucket.bucket, "key": key})

    # -- the sweep ------------------------------------------------------------------------------------------------
    def start_sweeper(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="recording-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._uploads:
            await asyncio.wait(set(self._uploads.values()), timeout=STOP_GRACE)

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("recording sweep failed")
            await asyncio.sleep(self.gateway.settings.recording_sweep_interval)

    async def sweep(self) -> None:
        """Finish recordings a dead process left open (header fixed, uploaded when a bucket is set), retry failed
        uploads, then delete recordings older than the retention."""
        store = self.gateway.store
        live = {c.log_id for c in self.gateway.calls.active.values()}
        for row in await store.recordings_in(("recording", "upload_failed")):
            if row["id"] not in live and row["id"] not in self._uploads:
                await self._finish_orphan(row)
        days = self.gateway.settings.recording_retention_days
        if days > 0:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            for row in await store.recordings_in(("stored", "failed", "upload_failed"), ended=False,
                                                 created_before=cutoff):
                await self._expire(row)

    def _local(self, info: dict[str, Any]) -> bool:
        """Is the row's file on this machine's disk (a file store's recordings are on the node that recorded)?"""
        path = info.get("path")
        return isinstance(path, str) and bool(path) and os.path.exists(path)

    async def _finish_orphan(self, row: dict[str, Any]) -> None:
        info = dict(row.get("recording") or {})
        if not self._local(info):
            if info.get("node") == self.gateway.settings.node_id and row["recording_status"] == "recording":
                await self.gateway.store.update_call(row["id"], recording_status="failed",
                                                     recording={**info, "error": "file missing"})
            return       # another node's disk: that node's sweep finishes it
        path = info["path"]
        try:
            if fix_header(path):
                log.warning("recording header repaired", extra={"call_id": row["call_uuid"], "path": path})
            info["bytes"] = max(0, os.path.getsize(path) - 44)
        except OSError as e:
            log.error("recording not repaired: %s", e, extra={"call_id": row["call_uuid"]})
            return
        if self.bucket is not None:
            await self._upload(row["id"], row["call_uuid"], info)
        else:
            self.completed += 1
            await self.gateway.store.update_call(row["id"], recording_status="stored", recording=info)

    async def _expire(self, row: dict[str, Any]) -> None:
        info = dict(row.get("recording") or {})
        try:
            if info.get("store") == "s3":
                if self.bucket is None or info.get("bucket") != self.bucket.bucket:
                    return
                await self.bucket.delete(info["key"])
            elif self._local(info):
                os.unlink(info["path"])
            elif info.get("node") != self.gateway.settings.node_id:
                return    # on another node's disk
        except Exception as e:
            log.error("recording not deleted: %s", str(e)[:300], extra={"call_id": row["call_uuid"]})
            return
        self.expired += 1
        await self.gateway.store.update_call(row["id"], recording_status="expired", recording_url=None,
                                             recording={k: v for k, v in info.items() if k not in ("path", "key")})
        log.info("recording expired", extra={"call_id": row["call_uuid"]})

    # -- /metrics ---------------------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        return {"gateway_recordings_active": self.active, "gateway_recordings_started_total": self.started,
                "gateway_recordings_completed_total": self.completed,
                "gateway_recording_write_failures_total": self.write_failures,
                "gateway_recording_upload_failures_total": self.upload_failures,
                "gateway_recordings_expired_total": self.expired}
