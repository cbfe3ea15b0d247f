"""Call recording: the per-call recorder (caller and agent audio lined up, streamed to WAV), the process-wide
service (settings, storage in a directory or an S3-compatible bucket, retention) and the WAV header helpers.
docs/recording.md describes it for operators."""
from .service import Recordings, recording_choice

__all__ = ["Recordings", "recording_choice"]
