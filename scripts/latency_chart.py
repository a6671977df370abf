#!/usr/bin/env python3
"""Draws a figure (p99Ms, or cpuMsPer1000) against offered load for each
target and generator, from the JSON lines of `caps bench --rate …`
(scripts/bench.sh), as a small SVG: medians over rounds."""
import json
import statistics
import sys
from collections import defaultdict

source, target = sys.argv[1], sys.argv[2]
metric = sys.argv[3] if len(sys.argv) > 3 else "p99Ms"
titles = {"p99Ms": ("p99 latency, pickup to delivered, by offered load", "ms"),
          "cpuMsPer1000": ("hub CPU per 1,000 orders, by offered load", "ms")}
title, unit = titles[metric]
points = defaultdict(lambda: defaultdict(list))
with open(source) as lines:
    for line in lines:
        row = json.loads(line)
        if row.get(metric) is None:
            continue
        name = f'{row["target"]} ({row.get("generator", "rust")} generator)'
        points[name][row["offered"]].append(row[metric])

series = {name: sorted((rate, statistics.median(v)) for rate, v in by_rate.items()) for name, by_rate in points.items()}
rates = sorted({rate for s in series.values() for rate, _ in s})
top = max(p for s in series.values() for _, p in s) * 1.1 or 1
width, height, left, bottom, right, upper = 640, 400, 70, 50, 20, 30
plot_w, plot_h = width - left - right, height - upper - bottom
x = lambda rate: left + plot_w * rates.index(rate) / max(len(rates) - 1, 1)
y = lambda ms: upper + plot_h * (1 - ms / top)
colors = {"caps": "#1d7a3a", "node-peer": "#b42318", "caps-ephemeral": "#3451b2", "socketioxide-peer": "#8a5a00", "socketioxide-durable-peer": "#6b4fa0"}
dashes = {"rust": "", "node": ' stroke-dasharray="6 4"'}

svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height}" fill="white"/>',
       f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>',
       f'<line x1="{left}" y1="{upper + plot_h}" x2="{left + plot_w}" y2="{upper + plot_h}" stroke="black"/>',
       f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{upper + plot_h}" stroke="black"/>']
for rate in rates:
    svg.append(f'<text x="{x(rate)}" y="{upper + plot_h + 18}" text-anchor="middle">{rate}/s</text>')
for step in range(5):
    ms = top * step / 4
    svg.append(f'<text x="{left - 6}" y="{y(ms) + 4}" text-anchor="end">{ms:.0f} {unit}</text>')
    svg.append(f'<line x1="{left}" y1="{y(ms)}" x2="{left + plot_w}" y2="{y(ms)}" stroke="#ddd"/>')
svg.append(f'<rect x="{left + plot_w - 256}" y="{upper}" width="256" height="{16 * len(series) + 8}" fill="white" fill-opacity="0.85"/>')
for index, (name, values) in enumerate(sorted(series.items())):
    color = colors.get(name.split(" ")[0], "#555")
    dash = dashes["node" if "node generator" in name else "rust"]
    path = " ".join(f"{x(rate):.1f},{y(ms):.1f}" for rate, ms in values)
    svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
    for rate, ms in values:
        svg.append(f'<circle cx="{x(rate):.1f}" cy="{y(ms):.1f}" r="3" fill="{color}"/>')
    legend_x = left + plot_w - 250
    svg.append(f'<line x1="{legend_x}" y1="{upper + 12 + 16 * index}" x2="{legend_x + 20}" y2="{upper + 12 + 16 * index}" stroke="{color}" stroke-width="2"{dash}/>')
    svg.append(f'<text x="{legend_x + 26}" y="{upper + 16 + 16 * index}" fill="{color}">{name}</text>')
svg.append(f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">offered orders per second (4 vendors, 4 drivers)</text>')
svg.append("</svg>")
with open(target, "w") as out:
    out.write("\n".join(svg) + "\n")
