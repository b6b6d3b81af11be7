"""Small SVG charts (grouped bars, lines, stacked histograms) with no plotting dependency.

The report must open in a browser with no network and no optional package, so the plots are
drawn here as plain SVG text: deterministic (the same results give byte-identical plots), easy to
embed inline in HTML and as a ``data:`` image in Markdown. Each mark carries a ``<title>`` with
its exact value, which browsers show on hover. The SVG has no XML namespace attribute: inline
SVG in HTML does not need it, and :func:`standalone` adds it for use as an image file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from peftshield.reporting.document import number

WIDTH, HEIGHT = 720, 380
LEFT, RIGHT, TOP, BOTTOM = 64, 190, 40, 72
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
DASHES = ("", "6 3", "2 2", "9 3 2 3")
MAX_LEGEND = 14
SVG_NS = "http://www.w3.org/2000/svg"


def _esc(text: object) -> str:
    return (
        str(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _nice_max(value: float) -> float:
    """The smallest 1 / 2 / 2.5 / 5 x 10^k at or above ``value`` (1.0 for fractions up to 1)."""
    if value <= 0:
        return 1.0
    if value <= 1.0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp


class _Canvas:
    """Plot area, axes and legend shared by every chart."""

    def __init__(self, title: str, x_label: str, y_label: str, legend_width: int = RIGHT) -> None:
        self.title = title
        self.parts: list[str] = []
        self.x0, self.x1 = LEFT, WIDTH - legend_width
        self.y0, self.y1 = HEIGHT - BOTTOM, TOP  # y0 = bottom (value 0), y1 = top
        self.x_label, self.y_label = x_label, y_label
        self.legend: list[tuple[str, str, str, str]] = []  # (label, colour, kind, dash)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def y_axis(self, y_min: float, y_max: float, ticks: int = 5) -> None:
        self.y_min, self.y_max = y_min, y_max
        for i in range(ticks + 1):
            value = y_min + (y_max - y_min) * i / ticks
            y = self.py(value)
            self.add(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}" stroke="#e3e3e3"/>')
            self.add(
                f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
                f"{_tick(value)}</text>"
            )
        mid = (self.y0 + self.y1) / 2
        self.add(
            f'<text x="16" y="{mid:.1f}" text-anchor="middle" font-size="12" '
            f'transform="rotate(-90 16 {mid:.1f})">{_esc(self.y_label)}</text>'
        )

    def x_axis_numeric(self, x_min: float, x_max: float, ticks: int = 5) -> None:
        self.x_min, self.x_max = x_min, x_max
        for i in range(ticks + 1):
            value = x_min + (x_max - x_min) * i / ticks
            x = self.px(value)
            self.add(f'<line x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{self.y1}" stroke="#f0f0f0"/>')
            self.add(
                f'<text x="{x:.1f}" y="{self.y0 + 16}" text-anchor="middle" font-size="11">'
                f"{_tick(value)}</text>"
            )
        self._x_title(self.y0 + 40)

    def _x_title(self, y: float) -> None:
        mid = (self.x0 + self.x1) / 2
        self.add(
            f'<text x="{mid:.1f}" y="{y:.1f}" text-anchor="middle" font-size="12">{_esc(self.x_label)}</text>'
        )

    def py(self, value: float) -> float:
        span = (self.y_max - self.y_min) or 1.0
        value = min(max(value, self.y_min), self.y_max)
        return self.y0 - (value - self.y_min) / span * (self.y0 - self.y1)

    def px(self, value: float) -> float:
        span = (self.x_max - self.x_min) or 1.0
        value = min(max(value, self.x_min), self.x_max)
        return self.x0 + (value - self.x_min) / span * (self.x1 - self.x0)

    def key(self, label: str, colour: str, kind: str = "box", dash: str = "") -> None:
        self.legend.append((label, colour, kind, dash))

    def finish(self) -> str:
        head = (
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="{_esc(self.title)}" font-family="sans-serif" class="chart">'
            f"<title>{_esc(self.title)}</title>"
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>'
            f'<text x="{WIDTH / 2:.0f}" y="22" text-anchor="middle" font-size="14" font-weight="bold">'
            f"{_esc(_short(self.title, 90))}</text>"
        )
        frame = (
            f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x1}" y2="{self.y0}" stroke="#333"/>'
            f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x0}" y2="{self.y1}" stroke="#333"/>'
        )
        legend = []
        shown = self.legend[:MAX_LEGEND]
        for i, (label, colour, kind, dash) in enumerate(shown):
            x, y = self.x1 + 14, TOP + 6 + i * 18
            if kind == "line":
                dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
                legend.append(
                    f'<line x1="{x}" y1="{y + 5}" x2="{x + 16}" y2="{y + 5}" stroke="{colour}" '
                    f'stroke-width="2.5"{dash_attr}/>'
                )
            else:
                legend.append(f'<rect x="{x}" y="{y}" width="12" height="11" fill="{colour}"/>')
            legend.append(f'<text x="{x + 22}" y="{y + 10}" font-size="11">{_esc(_short(label, 26))}</text>')
        if len(self.legend) > MAX_LEGEND:
            y = TOP + 6 + MAX_LEGEND * 18
            more = len(self.legend) - MAX_LEGEND
            legend.append(f'<text x="{self.x1 + 14}" y="{y + 10}" font-size="11">+{more} more</text>')
        return head + "".join(self.parts) + frame + "".join(legend) + "</svg>"


def standalone(svg: str) -> str:
    """``svg`` with the XML namespace an SVG file (or ``data:`` image) needs."""
    return svg.replace("<svg ", f'<svg xmlns="{SVG_NS}" ', 1)


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    y_label: str = "",
    x_label: str = "",
    y_max: float | None = None,
    refs: Sequence[Sequence[float | None]] | None = None,
    ref_label: str = "reference",
) -> str:
    """Grouped bars: one group per category, one bar per series (missing values leave a gap).

    ``refs[s][c]``, when given, draws a black tick across bar ``s`` of category ``c`` (e.g. the
    control's false-trigger rate beside each attack's ASR).
    """
    values = [number(v) for _, vals in series for v in vals]
    ref_values = [number(v) for row in (refs or []) for v in row]
    top = max([v for v in values + ref_values if v is not None] or [0.0])
    canvas = _Canvas(title, x_label, y_label)
    canvas.y_axis(0.0, y_max if y_max is not None else _nice_max(top))
    n_cat, n_ser = max(len(categories), 1), max(len(series), 1)
    group = (canvas.x1 - canvas.x0) / n_cat
    bar = group * 0.8 / n_ser
    rotate = len(categories) > 6 or any(len(c) > 14 for c in categories)
    for c, category in enumerate(categories):
        gx = canvas.x0 + c * group + group * 0.1
        for s, (name, vals) in enumerate(series):
            value = number(vals[c]) if c < len(vals) else None
            x = gx + s * bar
            if value is not None:
                y = canvas.py(value)
                canvas.add(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                    f'height="{canvas.y0 - y:.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                    f"<title>{_esc(category)} · {_esc(name)}: {value:.4g}</title></rect>"
                )
            ref = number(refs[s][c]) if refs and s < len(refs) and c < len(refs[s]) else None
            if ref is not None:
                y = canvas.py(ref)
                canvas.add(
                    f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + max(bar - 1, 1):.1f}" y2="{y:.1f}" '
                    f'stroke="#000" stroke-width="2.5"><title>{_esc(category)} · {_esc(name)} · '
                    f"{_esc(ref_label)}: {ref:.4g}</title></line>"
                )
        cx = canvas.x0 + (c + 0.5) * group
        label = _esc(_short(category, 28))
        if rotate:
            canvas.add(
                f'<text x="{cx:.1f}" y="{canvas.y0 + 14}" text-anchor="end" font-size="11" '
                f'transform="rotate(-30 {cx:.1f} {canvas.y0 + 14})">{label}</text>'
            )
        else:
            canvas.add(
                f'<text x="{cx:.1f}" y="{canvas.y0 + 16}" text-anchor="middle" font-size="11">{label}</text>'
            )
    canvas._x_title(HEIGHT - 8)
    for s, (name, _) in enumerate(series):
        canvas.key(name, PALETTE[s % len(PALETTE)])
    if refs and ref_values and any(v is not None for v in ref_values):
        canvas.key(ref_label, "#000", kind="line")
    return canvas.finish()


def line_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    y_range: tuple[float, float] = (0.0, 1.0),
    diagonal: bool = False,
    markers: bool = False,
) -> str:
    """Lines, one per series of (x, y) points in the given order (values are clipped to the ranges).

    ``diagonal`` draws the chance line y = x (for ROC curves).
    """
    canvas = _Canvas(title, x_label, y_label)
    canvas.y_axis(*y_range)
    canvas.x_axis_numeric(*x_range)
    if diagonal:
        canvas.add(
            f'<line x1="{canvas.px(x_range[0]):.1f}" y1="{canvas.py(y_range[0]):.1f}" '
            f'x2="{canvas.px(x_range[1]):.1f}" y2="{canvas.py(y_range[1]):.1f}" stroke="#999" '
            f'stroke-dasharray="4 4"/>'
        )
    for i, (name, xs, ys) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        dash = DASHES[(i // len(PALETTE)) % len(DASHES)]
        points = " ".join(f"{canvas.px(x):.1f},{canvas.py(y):.1f}" for x, y in zip(xs, ys, strict=True))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        canvas.add(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}>'
            f"<title>{_esc(name)}</title></polyline>"
        )
        if markers:
            for x, y in zip(xs, ys, strict=True):
                canvas.add(
                    f'<circle cx="{canvas.px(x):.1f}" cy="{canvas.py(y):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{_esc(name)}: ({x:.4g}, {y:.4g})</title></circle>"
                )
        canvas.key(name, colour, kind="line", dash=dash)
    return canvas.finish()


def histogram(
    title: str,
    groups: Sequence[tuple[str, Sequence[float]]],
    *,
    x_label: str,
    bins: int = 12,
    y_label: str = "count",
    from_zero: bool = True,
) -> str:
    """Stacked histogram of several groups of values over shared bins.

    With ``from_zero`` (and no negative value) the bins start at 0, so durations read on a true scale.
    """
    values = [number(v) for _, vals in groups for v in vals]
    values = [v for v in values if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if from_zero and lo >= 0:
        lo = 0.0
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = []
    for _, vals in groups:
        row = [0] * bins
        for v in vals:
            v = number(v)
            if v is not None:
                row[min(int((v - lo) / width), bins - 1)] += 1
        counts.append(row)
    top = max([sum(col) for col in zip(*counts, strict=True)] or [1]) if counts else 1
    step = max(math.ceil(top / 5), 1)  # integer ticks for counts
    ticks = max(math.ceil(top / step), 1)
    canvas = _Canvas(title, x_label, y_label)
    canvas.y_axis(0.0, float(step * ticks), ticks=ticks)
    canvas.x_axis_numeric(lo, hi, ticks=min(bins, 6))
    for b in range(bins):
        base = 0
        x0, x1 = canvas.px(lo + b * width), canvas.px(lo + (b + 1) * width)
        for g, (name, _) in enumerate(groups):
            n = counts[g][b]
            if n == 0:
                continue
            y_top, y_base = canvas.py(base + n), canvas.py(base)
            canvas.add(
                f'<rect x="{x0 + 0.5:.1f}" y="{y_top:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                f'height="{y_base - y_top:.1f}" fill="{PALETTE[g % len(PALETTE)]}">'
                f"<title>{_esc(name)}: {n} in [{lo + b * width:.4g}, {lo + (b + 1) * width:.4g})"
                "</title></rect>"
            )
            base += n
    for g, (name, vals) in enumerate(groups):
        canvas.key(f"{name} (n={len(vals)})", PALETTE[g % len(PALETTE)])
    return canvas.finish()
