"""bench/amd/frontend.py's oracle front end: the voice decision comes from the clip's timeline (speech segments
without their inner pauses), so on silent audio the detector's verdict follows the timeline alone. No corpus needed."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "amd"))
import frontend  # noqa: E402

RATE = 8000


def _clip(timeline: list[dict], seconds: int = 8) -> dict:
    return {"rate_hz": RATE, "pcm": b"\x00\x00" * RATE * seconds, "timeline": timeline}


def test_oracle_spans_leave_out_inner_pauses_and_other_sounds() -> None:
    vad = frontend.OracleVad([{"type": "ringback", "start_ms": 0, "end_ms": 900},
                              {"type": "speech", "start_ms": 1000, "end_ms": 2000, "pauses": [[1200, 1500]]},
                              {"type": "beep", "start_ms": 2500, "end_ms": 2600}])
    assert vad.spans == [(1000, 1200), (1500, 2000)]


def test_short_answer_on_the_timeline_is_a_person_even_in_silent_audio() -> None:
    verdict, causes = frontend.verdicts(_clip([{"type": "speech", "start_ms": 300, "end_ms": 800, "pauses": []}]),
                                        "oracle")
    assert verdict == "human", causes
    # the detector as it runs hears nothing in the same audio
    assert frontend.verdicts(_clip([]), "webrtc")[0] == "unknown"


def test_long_talk_on_the_timeline_is_a_machine() -> None:
    verdict, causes = frontend.verdicts(
        _clip([{"type": "speech", "start_ms": 300, "end_ms": 5600, "pauses": [[2500, 2800]]}], seconds=12), "oracle")
    assert causes[0].startswith("machine_start@") and "LONGGREETING" in causes[0], causes
    assert verdict.startswith("machine"), causes
