"""The AMD benchmark's scoring tools (bench/amd/evaluate.py) on made-up results: cross-validation inside dev picks
per fold on the other groups and scores the held-out group, and a dev-only `--write` keeps the last test-split run's
rows. No corpus needed."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "amd"))
import evaluate  # noqa: E402

from gateway.amd.params import AmdParams  # noqa: E402


def _clip(i: int, engine: str, kind: str) -> dict:
    return {"id": f"dev-{engine}-{i}", "split": "dev", "kind": kind, "engine": engine, "voice": "v", "rate": 1.0,
            "noise": "none", "snr_db": 30.0, "scenario": f"{kind}_x", "codec": "ulaw", "rate_hz": 8000, "lang": "en",
            "greeting_end_ms": 3000}


def _result(clip: dict, right: bool) -> dict:
    machine = (clip["kind"] == "machine") == right
    verdict = "machine_end_silence" if machine else "human"
    return {"clip": clip, "first": "machine_start" if machine else "human", "first_ms": 2000, "cause": "",
            "acted": verdict, "acted_ms": 9000 if machine else 2000, "final": verdict,
            "final_ms": 9000 if machine else 2000, "final_cause": "", "frames": 1, "cost_s": 0.0}


def test_cross_validation_scores_each_fold_on_the_point_chosen_without_it() -> None:
    """Two engines, four clips each. The defaults miss one clip of engine b; the other point gets b all right but
    misses two of a. Holding a out, the other point wins on b and scores 2/4 on a; holding b out, the defaults win
    on a and score 3/4 on b: chosen 5/8 against the defaults' 7/8 — the other point does not generalise."""
    clips = [_clip(i, e, k) for e in ("a", "b") for i, k in enumerate(("human", "human", "machine", "machine"))]
    other = replace(AmdParams(), greeting=1500)
    wrong = {"defaults": {"dev-b-0"}, "other": {"dev-a-0", "dev-a-2"}}
    runs = [[_result(c, c["id"] not in wrong[name]) for c in clips] for name in ("defaults", "other")]
    out = evaluate.cv_report([AmdParams(), other], runs, ["greeting"])
    engine = next(ln for ln in out if "leave one engine out" in ln)
    assert "chosen 62.5 % (worst fold 50.0 %)" in engine
    assert "defaults 87.5 % (worst fold 75.0 %)" in engine
    picks = out[out.index(engine) + 1]
    assert "a→{'greeting': 1500}" in picks and "b→{'greeting': 1300}" in picks
    assert not any("leave one noise out" in ln for ln in out)      # one noise kind: nothing to hold out


def test_dev_only_write_keeps_the_last_test_run(tmp_path: Path) -> None:
    section = "\n".join([
        "<!-- bench:amd -->", "## Answering-machine detection (AMD)", "",
        "| config | split | clips |", "|---|---|---|", "| gateway | dev | 910 |", "| gateway | test | 910 |",
        "| app_amd anchor | test | 910 |", "",
        "**gateway, dev split**, human/machine accuracy per group (clips):", "", "* engine: flite 93.2 % (292)", "",
        "**gateway, test split**, human/machine accuracy per group (clips):", "", "* engine: festival 92.3 % (234)",
        "", "| truth \\ verdict | human |", "|---|---|", "| human | 350 |", "",
        "Per-frame cost (one 20 ms frame):", "<!-- /bench:amd -->"])
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n" + section + "\n")
    rows, blocks = evaluate.kept_test_results(path)
    assert rows == [["gateway", "test", "910"], ["app_amd anchor", "test", "910"]]
    assert len(blocks) == 1
    assert blocks[0].startswith("**gateway, test split**") and blocks[0].endswith("| human | 350 |")
    assert evaluate.kept_test_results(tmp_path / "missing.md") == ([], [])


def test_every_write_keeps_the_test_split_history_as_logged(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nHow the defaults were chosen: …\n\nTest-split history, for honesty: the test "
                    "split has been run eight times. Eighth run: 95.0 %.\n\n**gateway, dev split**\n")
    assert evaluate.kept_history(path) == ("Test-split history, for honesty: the test split has been run eight times. "
                                           "Eighth run: 95.0 %.")
    assert evaluate.kept_history(tmp_path / "missing.md") is None
