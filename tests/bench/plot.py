"""A dependency-free SVG bar chart of the gateway benchmark (successes/s per system)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {
    "lockd": "#2b6cb0",
    "redlock-py": "#c05621",
    "pottery": "#718096",
    "redis-py Lock (1 node)": "#a0aec0",
}


def gateway_svg(raw: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Grouped bars: one group per workload, one bar per system, log-free linear scale
    per group (each group scaled to its own maximum, values printed on the bars)."""
    workloads = list(raw)
    systems = list(COLORS)
    width, group_h, bar_h, left = 760, 150, 26, 190
    height = 40 + group_h * len(workloads) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<text x="10" y="22" font-size="15" font-weight="bold">Gateway benchmark: '
        "successful acquire+release cycles per second (same run)</text>",
    ]
    y = 40
    for workload in workloads:
        results = raw[workload]
        top = max(r["ok_per_s"] for r in results.values()) or 1.0
        out.append(f'<text x="10" y="{y + 14}" font-weight="bold">{workload}</text>')
        for i, system in enumerate(systems):
            if system not in results:
                continue
            value = results[system]["ok_per_s"]
            w = (width - left - 90) * value / top
            by = y + 22 + i * (bar_h + 4)
            out.append(f'<text x="{left - 8}" y="{by + 17}" text-anchor="end">{system}</text>')
            out.append(
                f'<rect x="{left}" y="{by}" width="{w:.1f}" height="{bar_h}" '
                f'fill="{COLORS[system]}"/>'
            )
            fails = results[system]["failed_per_s"]
            label = f"{value:,.0f}/s" + (f" ({fails:,.0f} failed polls/s)" if fails else "")
            out.append(f'<text x="{left + w + 6:.1f}" y="{by + 17}">{label}</text>')
        y += group_h
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
