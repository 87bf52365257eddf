"""report.html: one self-contained page (inline SVG and CSS, no scripts, no external
assets) that opens in a browser from disk.

- a timeline, one lane per client worker: when it believed it held a lock (with the
  fencing token), the part after its lease's deadline in red, its store writes (accepted,
  refused as stale, unknown), its pauses; nemesis windows shaded across all lanes;
- operation latency over time, per function; completions per second (ok, fail, info);
- every checker's verdict and details.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lockd.jepsen.checkers.mutex import intervals, pause_windows
from lockd.jepsen.history import Event, Op, pair

__all__ = ["write_report"]

FAULT_COLORS = {
    "kill": "#f4a261",
    "power-loss": "#e76f51",
    "pause": "#9b5de5",
    "clock": "#2a9d8f",
    "partition": "#457b9d",
}
F_COLORS = {
    "acquire": "#1d3557",
    "claim": "#8d99ae",
    "read": "#2a9d8f",
    "write": "#e76f51",
    "release": "#f4a261",
}
KEY_COLORS = ["#a8dadc", "#bde0fe", "#caffbf", "#ffd6a5", "#ffc6ff", "#fdffb6"]
LEFT = 90
LANE = 20

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.badge { padding: 0.1em 0.6em; border-radius: 0.3em; color: white; font-weight: bold; }
.true { background: #2a9d8f; } .false { background: #d62828; } .unknown { background: #f4a261; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd;
  text-align: left; vertical-align: top; }
.scroll { overflow-x: auto; border: 1px solid #ddd; }
svg text { font: 11px system-ui, sans-serif; }
circle { opacity: 0.6; } .grant { stroke: #1d3557; stroke-width: 0.4; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.legend span { display: inline-block; margin-right: 1em; }
.legend i { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em;
  vertical-align: -0.1em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _legend(*items: tuple[str, str]) -> str:
    return "".join(f'<span><i style="background:{c}"></i>{_e(t)}</span>' for c, t in items)


def _badge(valid: object) -> str:
    cls = "true" if valid is True else "false" if valid is False else "unknown"
    return f'<span class="badge {cls}">{_e(json.dumps(valid))}</span>'


class _Scale:
    def __init__(self, t0: int, t1: int) -> None:
        self.t0 = t0
        self.duration = max(1e-9, (t1 - t0) / 1e9)
        self.px_per_s = min(40.0, max(8.0, 1100 / self.duration))
        self.width = LEFT + self.duration * self.px_per_s + 20

    def x(self, t: int) -> float:
        return round(LEFT + (t - self.t0) / 1e9 * self.px_per_s, 1)

    def axis(self, y: float, height: float) -> list[str]:
        step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if s * self.px_per_s >= 40)
        out = []
        for i in range(int(self.duration // step) + 1):
            x = round(LEFT + i * step * self.px_per_s, 1)
            out.append(f'<line x1="{x}" y1="{y}" x2="{x}" y2="{y + height}" stroke="#eee"/>')
            out.append(
                f'<text x="{x}" y="{y + height + 12}" text-anchor="middle">{i * step}s</text>'
            )
        return out


def _nemesis_windows(nemesis: Sequence[Event], end: int) -> list[tuple[int, int, dict[str, Any]]]:
    starts: dict[Any, Event] = {}
    out: list[tuple[int, int, dict[str, Any]]] = []
    for e in nemesis:
        v = e.value or {}
        if e.f == "start":
            starts[v.get("id")] = e
        elif e.f == "stop" and v.get("id") in starts:
            s = starts.pop(v.get("id"))
            out.append((s.time, e.time, s.value or {}))
    out += [(s.time, end, s.value or {}) for s in starts.values()]
    return out


def _fault_label(v: dict[str, Any]) -> str:
    kind = str(v.get("fault", "?"))
    if v.get("shape"):
        return f"{kind}: {v['shape']}"
    if v.get("nodes"):
        return f"{kind}: n{','.join(map(str, v['nodes']))}"
    if v.get("gateways"):
        return f"{kind}: gw{','.join(map(str, v['gateways']))}"
    if v.get("paused_workers"):
        return f"{kind}: w{','.join(map(str, v['paused_workers']))}"
    return kind


def _timeline(ops: Sequence[Op], nemesis: Sequence[Event], scale: _Scale, end: int) -> str:
    workers = sorted({op.invoke.worker for op in ops if op.invoke.worker is not None})
    lane_of = {w: i for i, w in enumerate(workers)}
    top = 40
    height = top + LANE * len(workers) + 30
    keys = sorted({str(op.key) for op in ops if op.f == "acquire"})
    key_color = {k: KEY_COLORS[i % len(KEY_COLORS)] for i, k in enumerate(keys)}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{scale.width:.0f}" height="{height}">',
        '<defs><pattern id="late" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#d62828"/>'
        "</pattern></defs>",
    ]
    out += scale.axis(top - 4, LANE * len(workers) + 4)
    for i, (s, e, v) in enumerate(_nemesis_windows(nemesis, end)):
        x0, x1 = scale.x(s), scale.x(e)
        color = FAULT_COLORS.get(str(v.get("fault")), "#999")
        out.append(
            f'<rect x="{x0}" y="{top - 4}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{LANE * len(workers) + 4}" fill="{color}" opacity="0.18">'
            f"<title>{_e(json.dumps(v))}</title></rect>"
        )
        label_y = top - 8 - 12 * (i % 2)  # alternate rows, so neighbours do not overlap
        out.append(f'<text x="{x0 + 2}" y="{label_y}" fill="{color}">{_e(_fault_label(v))}</text>')
    for w, i in lane_of.items():
        y = top + i * LANE
        out.append(f'<text x="4" y="{y + 14}">worker {w}</text>')
        out.append(
            f'<line x1="{LEFT}" y1="{y + LANE}" x2="{scale.width}" y2="{y + LANE}" stroke="#eee"/>'
        )
    for w, s, e in pause_windows(nemesis):
        if w in lane_of:
            y = top + lane_of[w] * LANE
            x0, x1 = scale.x(s), scale.x(e)
            out.append(
                f'<rect x="{x0}" y="{y + 1}" width="{max(1.0, x1 - x0):.1f}" height="{LANE - 2}" '
                'fill="none" stroke="#9b5de5" stroke-width="2">'
                "<title>paused (SIGSTOP)</title></rect>"
            )
    for iv in intervals(ops, end):
        if iv.worker not in lane_of:
            continue
        y = top + lane_of[iv.worker] * LANE + 3
        x0, x1 = scale.x(iv.start), scale.x(iv.held_end)
        xd = min(max(scale.x(iv.deadline), x0), x1)
        title = (
            f"{iv.key} token {iv.token}: held {(iv.held_end - iv.start) / 1e6:.0f} ms, lease "
            f"{(iv.deadline - iv.start) / 1e6:.0f} ms{'' if iv.released else ', not released'}"
        )
        out.append(
            f'<rect x="{x0}" y="{y}" width="{max(0.8, x1 - x0):.1f}" height="{LANE - 6}" '
            f'fill="{key_color.get(iv.key, "#ccc")}" class="grant">'
            f"<title>{_e(title)}</title></rect>"
        )
        if x1 - xd > 0.5:
            out.append(
                f'<rect x="{xd}" y="{y}" width="{x1 - xd:.1f}" height="{LANE - 6}" '
                'fill="url(#late)"><title>held after the lease deadline</title></rect>'
            )
        if x1 - x0 > 7 * len(str(iv.token)):
            out.append(f'<text x="{x0 + 2}" y="{y + 11}">{iv.token}</text>')
    for op in ops:
        if op.f != "write" or op.invoke.worker not in lane_of:
            continue
        t = op.end if op.end is not None else end
        x = scale.x(t)
        y = top + lane_of[op.invoke.worker] * LANE
        color = {"ok": "#2a9d8f", "fail": "#f77f00"}.get(op.outcome, "#555")
        out.append(
            f'<line x1="{x}" y1="{y + 1}" x2="{x}" y2="{y + LANE - 1}" stroke="{color}" '
            f'stroke-width="2"><title>write {_e(json.dumps(op.invoke.value))}: {op.outcome}'
            f"{_e(' ' + (op.complete.error or '') if op.complete else '')}</title></line>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _latency(ops: Sequence[Op], scale: _Scale, end: int) -> str:
    height, top = 220, 10
    inner = height - 40
    lo = 0.1
    lat = [
        (op, (op.end - op.invoke.time) / 1e6)
        for op in ops
        if op.end is not None and op.invoke.worker is not None
    ]
    hi = max([ms for _, ms in lat] + [10.0])

    def y(ms: float) -> float:
        ms = min(max(ms, lo), hi)
        span = math.log10(hi) - math.log10(lo)
        return round(top + inner - (math.log10(ms) - math.log10(lo)) / span * inner, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{scale.width:.0f}" height="{height}">']
    out += scale.axis(top, inner)
    for tick in (1, 10, 100, 1000, 10000):
        if lo <= tick <= hi:
            out.append(f'<text x="4" y="{y(tick) + 4}">{tick} ms</text>')
            yt = y(tick)
            out.append(f'<line x1="{LEFT}" y1="{yt}" x2="{scale.width}" y2="{yt}" stroke="#eee"/>')
    for op, ms in lat:
        color = F_COLORS.get(op.f, "#999")
        x = scale.x(op.invoke.time)
        if op.outcome == "info":
            out.append(
                f'<text x="{x}" y="{y(ms) + 3}" fill="{color}" text-anchor="middle">&#215;</text>'
            )
        else:
            out.append(f'<circle cx="{x:.0f}" cy="{y(ms):.0f}" r="1.6" class="{op.f}"/>')
    out.append("</svg>")
    return "\n".join(out)


def _rates(ops: Sequence[Op], nemesis: Sequence[Event], scale: _Scale, end: int) -> str:
    height, top = 200, 10
    inner = height - 40
    buckets: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    seconds = int(scale.duration) + 1
    for op in ops:
        if op.invoke.worker is None:
            continue
        t = op.end if op.end is not None else end
        buckets[op.outcome][int((t - scale.t0) // 1_000_000_000)] += 1
    peak = max([1] + [n for b in buckets.values() for n in b.values()])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{scale.width:.0f}" height="{height}">']
    out += scale.axis(top, inner)
    for s, e, v in _nemesis_windows(nemesis, end):
        color = FAULT_COLORS.get(str(v.get("fault")), "#999")
        x0, x1 = scale.x(s), scale.x(e)
        out.append(
            f'<rect x="{x0}" y="{top}" width="{max(1.0, x1 - x0):.1f}" height="{inner}" '
            f'fill="{color}" opacity="0.15"/>'
        )
    out.append(f'<text x="4" y="{top + 10}">{peak}/s</text><text x="4" y="{top + inner}">0</text>')
    for outcome, color in (("ok", "#2a9d8f"), ("fail", "#f77f00"), ("info", "#555")):
        pts = " ".join(
            f"{LEFT + (i + 0.5) * scale.px_per_s:.1f},"
            f"{top + inner - buckets[outcome].get(i, 0) / peak * inner:.1f}"
            for i in range(seconds)
        )
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    out.append("</svg>")
    return "\n".join(out)


def _summary_row(name: str, r: dict[str, Any]) -> str:
    keys = {
        "store": ("writes_accepted", "stale_writes_refused"),
        "tokens": ("grants", "duplicates", "order_violations"),
        "mutex": ("grants", "held_overlaps", "held_overlaps_during_pauses", "lease_violations"),
        "availability": ("unhealthy_s", "final_phase_grants"),
        "election": (
            "terms",
            "writes_acknowledged",
            "deposed_writes_refused",
            "deposed_writes_acknowledged",
            "observations",
            "observed_out_of_order",
            "unexplained_leaders",
        ),
        "terms": ("grants", "duplicates", "order_violations"),
        "stats": ("operations",),
    }.get(name, ())
    facts = [f"{k.replace('_', ' ')}: {_e(r.get(k))}" for k in keys]
    if name == "mutex" and "lease_overlaps_under_clock_steps" in r:
        facts.append(
            "lease overlaps under clock steps (expected on real Redis): "
            f"{_e(r['lease_overlaps_under_clock_steps'])} "
            f"({_e(r.get('lease_overlap_under_clock_steps_ms'))} ms); {_e(r.get('note'))}"
        )
    rec = r.get("recovery_ms", {})
    if name == "store":
        lin = r.get("linearizable", {})
        facts.insert(0, f"linearizable: {_badge(lin.get('valid'))} ({_e(lin.get('elapsed_s'))} s)")
        facts.append(f"lost updates: {_e(r.get('lost_updates', {}).get('lost'))}")
        facts.append(f"token order decreases: {_e(r.get('token_order', {}).get('decreases'))}")
    if name == "availability":
        h = r.get("majority_healthy", {})
        facts.insert(
            0,
            f"success while healthy: {_e(h.get('success_rate'))} "
            f"(available {_e(h.get('available_rate'))})",
        )
        facts.append(f"recovery median/max ms: {_e(rec.get('median'))}/{_e(rec.get('max'))}")
    cells = (_e(name), _badge(r.get("valid")), "<br>".join(facts))
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def write_report(
    path: Path, meta: dict[str, Any], events: Sequence[Event], results: dict[str, Any]
) -> None:
    """Write the HTML report of one run."""
    nemesis = [e for e in events if e.is_nemesis]
    ops = pair([e for e in events if not e.is_nemesis], strict=False)
    t0 = int(meta.get("t0") or (events[0].time if events else 0))
    end = max((e.time for e in events), default=t0)
    scale = _Scale(t0, end)
    legend_faults = "".join(
        f'<span><i style="background:{c};opacity:.5"></i>{k}</span>'
        for k, c in FAULT_COLORS.items()
    )
    legend_f = "".join(
        f'<span><i style="background:{c}"></i>{k}</span>' for k, c in F_COLORS.items()
    )
    rows = "".join(_summary_row(k, v) for k, v in results.items() if isinstance(v, dict))
    config = {
        k: meta.get(k)
        for k in (
            "seed",
            "engine",
            "skipped_nemeses",
            "nodes",
            "gateways",
            "clients",
            "keys",
            "time_limit_s",
            "ttl_s",
            "max_ttl_ms",
            "nemeses",
            "unsafe_store",
            "unsafe_wall_clock",
            "unfenced_read",
        )
    }
    css = CSS + "".join(f"circle.{f} {{ fill: {c}; }}\n" for f, c in F_COLORS.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(meta.get("test", "lockd jepsen"))}</title>
<style>{css}</style></head><body>
<h1>{_e(meta.get("test", "lockd jepsen"))} {_badge(results.get("valid"))}</h1>
<div>seed <b>{_e(meta.get("seed"))}</b> · started {_e(meta.get("started"))} ·
{scale.duration:.1f} s ·
<code>{_e(meta.get("command", ""))}</code></div>
<h2>Checkers</h2><table><tr><th>checker</th><th>valid</th><th></th></tr>{rows}</table>
<h2>Timeline</h2>
<div class="legend"><span><i style="background:#a8dadc"></i>held (token)</span>
<span><i style="background:#d62828"></i>held after the lease deadline</span>
{_legend(("#2a9d8f", "write accepted"), ("#f77f00", "write refused (stale token)"))}
{_legend(("#555", "write unknown"))}
<span><i style="border:2px solid #9b5de5;width:.6em;height:.6em"></i>paused</span>
{legend_faults}</div>
<div class="scroll">{_timeline(ops, nemesis, scale, end)}</div>
<h2>Latency</h2><div class="legend">{legend_f}<span>&#215; unknown outcome</span></div>
<div class="scroll">{_latency(ops, scale, end)}</div>
<h2>Completions per second</h2>
<div class="legend">{_legend(("#2a9d8f", "ok"), ("#f77f00", "fail"), ("#555", "info"))}</div>
<div class="scroll">{_rates(ops, nemesis, scale, end)}</div>
<h2>Configuration</h2><pre>{_e(json.dumps(config, indent=2))}</pre>
<h2>Results</h2><details><summary>results.json</summary>
<pre>{_e(json.dumps(results, indent=2, default=str))}</pre></details>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
