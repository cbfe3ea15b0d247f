"""bench/_report.py replaces only its own marked section of BENCHMARKS.md and creates what is missing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._report import table, write_section  # noqa: E402


def test_sections_are_created_replaced_and_left_alone(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_section("codec", "Codec", table(["a", "b"], [[1, 2]]), command="python bench/codec.py", path=path)
    write_section("latency", "Latency", "old figures", command="python bench/latency.py", path=path)
    text = path.read_text()
    assert text.startswith("# Benchmarks")
    assert "<!-- bench:codec -->" in text and "<!-- /bench:latency -->" in text
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in text
    assert "Machine: " in text and "cores" in text and "Python 3." in text and "`python bench/codec.py`" in text

    path.write_text(text.replace("# Benchmarks", "# Benchmarks\n\nHand-written intro kept."))
    write_section("latency", "Latency", "new figures", path=path)
    text = path.read_text()
    assert "new figures" in text and "old figures" not in text
    assert "Hand-written intro kept." in text and "| 1 | 2 |" in text        # the rest is untouched
    assert text.count("<!-- bench:latency -->") == 1 and text.index("bench:codec") < text.index("bench:latency")


def test_rejects_section_names_that_could_break_the_markers(tmp_path):
    with pytest.raises(ValueError):
        write_section("a -->", "x", "y", path=tmp_path / "B.md")
