"""Charts as server-rendered SVG: no JavaScript library, nothing fetched, colours from the page's CSS
(classes ``s-bad``, ``s-ok``, ``s-info``), so dark and light mode both read well.

Each function returns markup safe to put into a template. Every bar carries a ``<title>`` (the tooltip
and what a screen reader says) and the chart an ``aria-label`` summing it up.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 160
PAD_LEFT = 36
PAD_BOTTOM = 22
PAD_TOP = 8
MAX_BAR = 36.0  # a lone bar stays a bar, not a block
AXIS_X = PAD_LEFT - 4  # where the value labels end
LABEL_MAX = 34  # characters of a ranking's label that fit left of its bars (the whole one is the tooltip)


def _nice_max(value: float) -> float:
    """Return the smallest of 1, 2, 5, 10, 20, 50 ... at or above ``value``."""
    scale = 1.0
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def bars(
    buckets: Sequence[dict[str, int]],
    labels: Sequence[str],
    series: Sequence[tuple[str, str, str]],
    title: str,
) -> Markup:
    """Return grouped vertical bars: one group per bucket, one bar per ``series`` entry
    (key in the bucket, CSS class, legend name); ``labels`` names the buckets (a few are printed)."""
    count = max(len(buckets), 1)
    top = _nice_max(max((b.get(key, 0) for b in buckets for key, _, _ in series), default=0))
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - PAD_TOP
    group_w = plot_w / count
    bar_w = min(max(group_w * 0.8 / max(len(series), 1), 1.0), MAX_BAR)
    totals = ", ".join(f"{sum(b.get(key, 0) for b in buckets)} {name}" for key, _, name in series)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}: {escape(totals)}">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = PAD_TOP + plot_h * (1 - fraction)
        parts.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - 4}" y1="{y:.1f}" y2="{y:.1f}"/>')
        label = f"{top * fraction:g}"
        parts.append(f'<text class="axis" x="{AXIS_X}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    every = max(count // 6, 1)
    for i, bucket in enumerate(buckets):
        x0 = PAD_LEFT + i * group_w + group_w * 0.1
        for j, (key, css, name) in enumerate(series):
            value = bucket.get(key, 0)
            if value:
                h = plot_h * value / top
                x, y = x0 + j * bar_w, PAD_TOP + plot_h - h
                parts.append(
                    f'<rect class="{css}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                    f"<title>{escape(labels[i])}: {value} {escape(name)}</title></rect>"
                )
        if i % every == 0 or i == count - 1:
            parts.append(
                f'<text class="axis" x="{PAD_LEFT + (i + 0.5) * group_w:.1f}" y="{HEIGHT - 6}" '
                f'text-anchor="middle">{escape(labels[i])}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def ranking(items: Sequence[tuple[str, int]], title: str, css: str = "s-bad") -> Markup:
    """Return horizontal bars, one per (label, count), in the given order, each with its count."""
    row_h, label_w = 26, 300
    height = max(len(items), 1) * row_h + 4
    top = max((count for _, count in items), default=1) or 1
    parts = [
        f'<svg class="chart ranking" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, count) in enumerate(items):
        y = 2 + i * row_h
        w = (WIDTH - label_w - 60) * count / top
        short = label if len(label) <= LABEL_MAX else label[: LABEL_MAX - 1] + "…"
        parts.append(
            f'<text class="label" x="{label_w - 6}" y="{y + 17}" text-anchor="end">{escape(short)}</text>'
            f'<rect class="{css}" x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row_h - 8}">'
            f"<title>{escape(label)}: {count}</title></rect>"
            f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 17}">{count}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
