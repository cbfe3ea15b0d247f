"""The simulation report: a rich table (per call and overall) and a self-contained HTML page with one timing plot per
call (inline SVG: caller speech, agent audio, barge-ins, clears and each turn's latency; no external assets)."""
from __future__ import annotations

import html
import json
from typing import Any

from .runner import CallReport, overall


def _v(x: Any, unit: str = "") -> str:
    return "–" if x is None else f"{x}{unit}"


def print_tables(reports: list[CallReport], console: Any) -> None:
    from rich.table import Table

    t = Table(title="calls")
    for c in ("#", "result", "hangup", "turns", "latency p50 caller / gateway", "max Δ", "barge-ins",
              "clear reaction", "failures"):
        t.add_column(c)
    for r in sorted(reports, key=lambda r: r.index):
        s = r.timing.get("summary") or {}
        g = (r.gateway or {}).get("summary") or {}
        t.add_row(str(r.index), "ok" if r.ok else ("[red]failed[/]" if r.error else "[yellow]steps[/]"),
                  r.error or r.hangup, _v(s.get("turns")),
                  f"{_v(s.get('latency_p50_ms'), ' ms')} / {_v(g.get('latency_p50_ms'), ' ms')}",
                  _v(r.disagreement_ms, " ms"), _v(s.get("barge_ins")), _v(s.get("clear_reaction_avg_ms"), " ms"),
                  "; ".join(r.failures))
    console.print(t)
    o = overall(reports)
    t = Table(title="overall")
    t.add_column("figure")
    t.add_column("value")
    lc, lg = o["latency_caller"], o["latency_gateway"]
    rows = [
        ("calls / ok / failed", f"{o['calls']} / {o['ok']} / {o['failed']}"),
        ("turns", str(o["turns"])),
        ("response latency as heard (p50 / p95 / max)",
         f"{_v(lc['p50_ms'])} / {_v(lc['p95_ms'])} / {_v(lc['max_ms'])} ms over {lc['count']} turns"),
        ("response latency, gateway (p50 / p95 / max)",
         f"{_v(lg['p50_ms'])} / {_v(lg['p95_ms'])} / {_v(lg['max_ms'])} ms over {lg['count']} turns"),
        ("caller vs gateway, largest difference",
         f"{_v(o['max_disagreement_ms'], ' ms')} (bar {o['agreement_bar_ms']} ms: "
         f"{'agree' if o['agree'] else 'DISAGREE' if o['agree'] is False else 'nothing to compare'})"),
        ("barge-ins / average clear reaction", f"{o['barge_ins']} / {_v(o['clear_reaction_avg_ms'], ' ms')}"),
        ("hangups", ", ".join(f"{k}: {v}" for k, v in sorted(o["hangups"].items()))),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


def _svg(r: CallReport, width: int = 900) -> str:
    tl = r.timeline
    if not tl:
        return "<p>no timeline (the call was not answered)</p>"
    end: int = max(tl["end"], 1)

    def x(ms: float) -> float:
        return round(60 + (width - 70) * ms / end, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="96" role="img">',
             '<text x="4" y="26" class="lbl">caller</text><text x="4" y="56" class="lbl">agent</text>']
    for s, e in tl["caller"]:
        parts.append(f'<rect x="{x(s)}" y="14" width="{max(1, x(e) - x(s))}" height="16" class="caller">'
                     f'<title>caller {s}–{e} ms</title></rect>')
    for s, e in tl["agent"]:
        parts.append(f'<rect x="{x(s)}" y="44" width="{max(1, x(e) - x(s))}" height="16" class="agent">'
                     f'<title>agent {s}–{e} ms</title></rect>')
    for c in tl["clears"]:
        parts.append(f'<line x1="{x(c)}" x2="{x(c)}" y1="40" y2="64" class="clear"><title>clear at {c} ms</title>'
                     f'</line>')
    for t in r.timing.get("turns", []):
        if "barge_in" in t:
            s = t["caller_start_ms"]
            parts.append(f'<circle cx="{x(s)}" cy="37" r="4" class="barge"><title>barge-in, agent stopped after '
                         f'{t["barge_in"]["reaction_ms"]} ms</title></circle>')
        if t.get("latency_ms") is not None:
            a, b = t["caller_end_ms"], t["agent_start_ms"]
            parts.append(f'<line x1="{x(a)}" x2="{x(b)}" y1="72" y2="72" class="lat"/>'
                         f'<text x="{x(a)}" y="86" class="ms">{t["latency_ms"]} ms</text>')
    step = 1000 if end <= 20000 else 5000
    for ms in range(0, end + 1, step):
        parts.append(f'<text x="{x(ms)}" y="8" class="tick">{ms // 1000}s</text>')
    parts.append("</svg>")
    return "".join(parts)


STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.caller{fill:#2b7bb9}.agent{fill:#3a9d5d}
.clear{stroke:#d33;stroke-width:2}.barge{fill:#d33}.lat{stroke:#e69500;stroke-width:3}.lbl,.tick,.ms{font-size:11px}
.ms{fill:#a86d00}.bad{color:#c00}section{margin:1em 0;border-top:1px solid #eee}"""


def html_page(report: dict[str, Any], reports: list[CallReport]) -> str:
    o = report["overall"]
    e = html.escape
    lc, lg = o["latency_caller"], o["latency_gateway"]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in [
        ("via", report["via"]), ("script", report["script"]), ("calls / ok / failed",
                                                              f"{o['calls']} / {o['ok']} / {o['failed']}"),
        ("turns", o["turns"]),
        ("latency as heard p50 / p95 / max (ms)", f"{lc['p50_ms']} / {lc['p95_ms']} / {lc['max_ms']}"),
        ("latency, gateway p50 / p95 / max (ms)", f"{lg['p50_ms']} / {lg['p95_ms']} / {lg['max_ms']}"),
        ("largest caller vs gateway difference (ms)", f"{o['max_disagreement_ms']} (bar {o['agreement_bar_ms']})"),
        ("barge-ins / average clear reaction (ms)", f"{o['barge_ins']} / {o['clear_reaction_avg_ms']}"),
        ("hangups", json.dumps(o["hangups"]))])
    sections = []
    for r in sorted(reports, key=lambda r: r.index):
        s = r.timing.get("summary") or {}
        g = (r.gateway or {}).get("summary") or {}
        head = (f"call {r.index}: {'ok' if r.ok else 'failed'} · {e(r.error or r.hangup)} · turns {s.get('turns')}"
                f" · latency p50 {s.get('latency_p50_ms')} ms (gateway {g.get('latency_p50_ms')} ms)"
                f" · barge-ins {s.get('barge_ins')}")
        fails = "".join(f'<li class="bad">{e(f)}</li>' for f in r.failures)
        sections.append(f"<section><h3>{head}</h3>{_svg(r)}<ul>{fails}</ul></section>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>gateway simulate</title><style>{STYLE}</style>"
            f"</head><body><h1>gateway simulate</h1><table>{rows}</table>"
            "<p>Blue: caller speech (the gateway's VAD over what the caller sent). Green: agent audio as heard. "
            "Red dot: barge-in; red line: clear; orange: response latency.</p>"
            f"{''.join(sections)}</body></html>")
