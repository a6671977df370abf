#!/usr/bin/env python3
"""Draws the soak's figures (scripts/soak.sh) against history size as a small
SVG: start-up time, memory after start and under load, and disk per order,
one panel each, for 10k, 100k and 1M delivered orders."""
import json
import sys

source, target = sys.argv[1], sys.argv[2]
rows = []
with open(source) as lines:
    for line in lines:
        row = json.loads(line)
        if "delivered" in row and "startupMs" in row:
            rows.append(row)

panels = [
    ("start-up to /healthz (ms)", [r["startupMs"] for r in rows], None),
    ("memory (MiB): after start / under load",
     [r["rssAfterStartKib"] / 1024 for r in rows],
     [r["rssUnderLoadKib"] / 1024 for r in rows]),
    ("disk per delivered order (bytes)", [r["bytesPerOrder"] for r in rows], None),
]
labels = [f"{r['delivered'] // 1000}k" if r["delivered"] < 1_000_000 else f"{r['delivered'] // 1_000_000}M"
          for r in rows]

width, height = 900, 320
panel_w, top, bottom = 280, 40, 50
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
       f'font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height}" fill="white"/>',
       '<text x="10" y="18" font-size="14">caps hub soak: figures against orders delivered '
       '(history size)</text>']
for index, (title, first, second) in enumerate(panels):
    left = 20 + index * (panel_w + 20)
    plot_h = height - top - bottom - 20
    peak = max(first + (second or [])) * 1.15 or 1
    svg.append(f'<text x="{left}" y="{top + 4}">{title}</text>')
    base = top + 20 + plot_h
    svg.append(f'<line x1="{left}" y1="{base}" x2="{left + panel_w}" y2="{base}" stroke="#333"/>')
    slot = panel_w / max(len(rows), 1)
    for i, value in enumerate(first):
        bars = [(value, "#4a7ab5")] + ([(second[i], "#d08b3a")] if second else [])
        bar_w = slot * 0.7 / len(bars)
        for j, (v, colour) in enumerate(bars):
            x = left + i * slot + slot * 0.15 + j * bar_w
            h = v / peak * plot_h
            svg.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}"/>')
            svg.append(f'<text x="{x + bar_w / 2:.1f}" y="{base - h - 4:.1f}" text-anchor="middle">{v:,.0f}</text>')
        svg.append(f'<text x="{left + i * slot + slot / 2:.1f}" y="{base + 16}" text-anchor="middle">{labels[i]}</text>')
svg.append('</svg>')
with open(target, "w") as out:
    out.write("\n".join(svg) + "\n")
