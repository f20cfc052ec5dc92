"""Charts as inline SVG strings: the report opens offline, with no script and no fetched library.

Every label is escaped here, since category names (templates, personas, reasons) come from user
files and model output. Each bar carries a <title>, which browsers show as a tooltip.
"""

from __future__ import annotations

import math
from html import escape

# Okabe-Ito: distinguishable with the common forms of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999"]
KEPT_COLOUR = "#009E73"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" {FONT}>'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def legend(names: list[str], colours: list[str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{c}"></i>{escape(n)}</span>' for n, c in zip(names, colours)
    )
    return f'<div class="legend">{items}</div>'


def _ticks(top: float, integer: bool = False) -> tuple[float, list[float]]:
    """A round axis maximum at or above `top` and at most 6 ticks up to it (whole ones for counts)."""
    if top <= 0:
        return 1.0, [0.0, 1.0] if integer else [0.0, 0.5, 1.0]
    step = 10 ** math.floor(math.log10(top / 4))
    if integer:
        step = max(step, 1)
    for factor in (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10):
        if top / (step * factor) <= 5:
            step *= factor
            break
    axis_max = step * math.ceil(top / step)
    return axis_max, [step * i for i in range(int(round(axis_max / step)) + 1)]


def grouped_bars(title: str, categories: list[str], series: dict[str, list[float | None]], *, max_value: float | None = None,
                 percent: bool = False, colours: dict[str, str] | None = None, width: int = 560, height: int = 220) -> str:
    """Vertical bars: one group per category, one bar per series (histograms, rates per group)."""
    names = list(series)
    fills = [(colours or {}).get(name, colour(j)) for j, name in enumerate(names)]
    values = [v for vs in series.values() for v in vs if v is not None]
    counts = not percent and all(float(v).is_integer() for v in values)
    axis_max, ticks = _ticks(max_value if max_value is not None else max(values, default=0), integer=counts)
    group_w = (width - 52) / max(len(categories), 1)
    rotate = len(categories) > 8 or max((len(c) for c in categories), default=0) * 6 > group_w
    left, right, top, bottom = (70, 8, 8, 80) if rotate else (44, 8, 8, 46)
    height += bottom - 46
    plot_w, plot_h = width - left - right, height - top - bottom
    body: list[str] = []
    for t in ticks:
        y = top + plot_h * (1 - t / axis_max)
        label = f"{t:.0%}" if percent else _number(t)
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{label}</text>')
    group_w = plot_w / max(len(categories), 1)
    bar_w = max(group_w * 0.8 / max(len(names), 1), 1)
    for i, category in enumerate(categories):
        x0 = left + i * group_w + group_w * 0.1
        for j, name in enumerate(names):
            value = series[name][i]
            if value is None:
                continue
            h = plot_h * min(value / axis_max, 1)
            shown = f"{value:.1%}" if percent else _number(value)
            tip = f"{category} \u2014 {name}: {shown}" if len(names) > 1 else f"{category}: {shown}"
            body.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                f'fill="{fills[j]}"><title>{escape(tip)}</title></rect>'
            )
        cx, cy = left + (i + 0.5) * group_w, top + plot_h + 14
        label = escape(_short(category, 16 if rotate else max(int(group_w / 6), 4)))
        if rotate:
            body.append(f'<text transform="translate({cx:.1f},{cy - 4:.1f}) rotate(-30)" text-anchor="end" fill="#333">{label}</text>')
        else:
            body.append(f'<text x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle" fill="#333">{label}</text>')
    body.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#888"/>')
    svg = _svg(width, height, title, body)
    return svg + (legend(names, fills) if len(names) > 1 else "")


def stacked_hbars(title: str, rows: list[tuple[str, list[tuple[str, float]]]], colours: dict[str, str], *, width: int = 760) -> str:
    """One horizontal bar per row, split into named segments (the funnel: kept + each drop reason)."""
    bar_h, gap, left, right = 22, 8, 130, 70
    height = len(rows) * (bar_h + gap) + gap
    scale_max = max((sum(v for _, v in segments) for _, segments in rows), default=0) or 1
    plot_w = width - left - right
    body: list[str] = []
    for i, (label, segments) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        body.append(f'<text x="{left - 6}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end" fill="#333">{escape(_short(label, 20))}</text>')
        x = float(left)
        for name, value in segments:
            if value <= 0:
                continue
            w = plot_w * value / scale_max
            body.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar_h}" fill="{colours[name]}">'
                f"<title>{escape(label)} \u2014 {escape(name)}: {_number(value)}</title></rect>"
            )
            x += w
        total = sum(v for _, v in segments)
        body.append(f'<text x="{x + 5:.1f}" y="{y + bar_h / 2 + 4:.1f}" fill="#333">{_number(total)}</text>')
    return _svg(width, height, title, body)
