"""Would a keyword stage help? pocketsphinx keyword spotting over the answered audio, measured on the dev split.

    pip install pocketsphinx==5.1.1          # bundles an English acoustic model and dictionary
    python bench/amd/keywords.py --clips 150 # a seeded sample of dev person/machine clips

For each clip it spots machine phrases ("leave a message", "after the tone", "voicemail", …) and person phrases
("who's calling", "how can I help", "speaking", …) in the audio up to the moment the gateway's detector acts, and
reports how often each fires per class and engine, how many of the detector's errors a hit would have reversed, and
the CPU per 20 ms frame. The phrases are general voicemail/answer wording, not the corpus texts. The result decides
whether the gateway gets a keyword stage (docs/amd.md, "Keyword spotting: measured, not adopted").
"""
from __future__ import annotations

import argparse
import audioop
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import CORPUS, klass, load, run_clip  # noqa: E402

from gateway.amd.params import AmdParams  # noqa: E402

MACHINE = ["leave a message", "leave your message", "after the tone", "after the beep", "at the tone",
           "voicemail", "mailbox", "not available", "unavailable", "record your message", "can't take your call",
           "get back to you", "call you back"]
PERSON = ["who's calling", "who is this", "how can i help", "how may i help", "speaking", "can you hear me",
          "anyone there"]


def spot(dec, pcm: bytes, rate: int, until_ms: int) -> tuple[set[str], float]:
    """Keyphrases heard in the first until_ms of the clip, and the seconds of audio decoded."""
    pcm = pcm[: rate * 2 * until_ms // 1000]
    if rate == 8000:                       # the bundled en-us model is a 16 kHz model
        pcm, _ = audioop.ratecv(pcm, 2, 1, 8000, 16000, None)
    dec.start_utt()
    found: set[str] = set()
    for i in range(0, len(pcm), 640):
        dec.process_raw(pcm[i:i + 640], False, False)
        if (h := dec.hyp()) is not None and h.hypstr:
            found.update(k for k in MACHINE + PERSON if k in h.hypstr)
    dec.end_utt()
    return found, len(pcm) / 32000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=150)
    ap.add_argument("--threshold", default="1e-20")
    args = ap.parse_args()
    from pocketsphinx import Decoder
    with tempfile.NamedTemporaryFile("w", suffix=".kws", delete=False) as f:
        f.write("".join(f"{k}/{args.threshold}/\n" for k in MACHINE + PERSON))
    dec = Decoder(kws=f.name, loglevel="FATAL")
    clips = [c for c in load("dev", CORPUS) if c["kind"] in ("human", "machine")]
    random.Random(15).shuffle(clips)
    clips = clips[:args.clips]
    rates: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    fixed = errors = broken = 0
    cpu = secs = 0.0
    for c in clips:
        r = run_clip(AmdParams(), c["pcm"], c["rate_hz"])
        until = max(r["acted_ms"] or 6000, 6000)
        t0 = time.process_time()
        found, s = spot(dec, c["pcm"], c["rate_hz"], until)
        cpu += time.process_time() - t0
        secs += s
        says_machine = any(k in MACHINE for k in found)
        says_person = any(k in PERSON for k in found)
        for key in ("all", c["engine"]):
            rates[(c["kind"], key, "machine phrase")][0] += says_machine
            rates[(c["kind"], key, "person phrase")][0] += says_person
            for what in ("machine phrase", "person phrase"):
                rates[(c["kind"], key, what)][1] += 1
        ok = klass(r["acted"]) == c["kind"]
        keyword = "machine" if says_machine and not says_person else "human" if says_person and not says_machine \
            else None
        if not ok:
            errors += 1
            fixed += keyword == c["kind"]
        elif keyword is not None and keyword != c["kind"]:
            broken += 1
    print(f"{len(clips)} dev clips, audio up to the detector's verdict (at least 6 s)")
    for (kind, key, what), (n_hit, n) in sorted(rates.items()):
        print(f"  {kind:8} {key:10} {what:15} {n_hit}/{n} = {n_hit / n * 100:.0f} %")
    print(f"  detector errors in the sample: {errors}; a keyword verdict would reverse {fixed}, "
          f"and break {broken} correct ones")
    print(f"  CPU: {cpu / (secs * 50) * 1e6:.0f} µs per 20 ms frame (8 kHz audio upsampled to the 16 kHz model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
