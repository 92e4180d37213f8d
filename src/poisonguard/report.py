"""A batch's report for the data steward: one self-contained HTML page, its JSON, a summary.

Three writers of one ``BatchReport`` (``poisonguard.evidence`` builds it, in one
place): ``render_html``, ``write_report`` (the page and the JSON beside it, which
``load_report`` reads back) and ``markdown_summary`` (the Prefect artifact). They
present the report's figures and never recompute the decision's: the cuts, the
counts and the held rows per stage are read off the dataclass.

The page makes no network request and runs no script: plots are inline SVG drawn
here, styles sit in one ``<style>`` block, a Content-Security-Policy forbids
everything else, and every value taken from the data is HTML-escaped, because
file names, column names, cells, labels and reasons come from files nobody has
vetted yet.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from poisonguard.decision import STAGES
from poisonguard.errors import param_error
from poisonguard.evidence import (
    MAX_ABS,
    BatchReport,
    ClassBalance,
    DetectorPanel,
    Drift,
    Projection,
    ReferenceUsed,
    dumps,
    loads,
    span,
)
from poisonguard.store import atomic_write_bytes

__all__ = ["load_report", "markdown_summary", "render_html", "write_report"]

MAX_EXPECTATIONS = 15
MAX_LIST = 8

#: How each stage is named on the page and in the summary.
STAGE_NAMES = {
    "expectations": "expectations",
    "blocklist": "blocklist",
    "detectors": "detectors",
    "batch_hold": "batch hold",
}

# Colour-blind-safe pairs: blue for the batch, orange for what was held,
# grey for the trusted reference.
TRUSTED = "#9aa3ad"
BATCH = "#3a6ea5"
QUARANTINED = "#e07b24"
INK = "#1f2933"
MUTED = "#616e7c"
GRID = "#e4e7eb"

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f6f8; color: #1f2933;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 28px 48px; }
header.top { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 14px;
  padding-bottom: 14px; border-bottom: 1px solid #d9dee4; margin-bottom: 20px; }
header.top h1 { font-size: 24px; font-weight: 600; margin: 0; overflow-wrap: anywhere; }
header.top .meta { flex-basis: 100%; color: #616e7c; font-size: 13px; }
header.top .meta span { margin-right: 18px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 2px 12px; border-radius: 999px; font-size: 13px;
  font-weight: 600; letter-spacing: .02em; text-transform: uppercase; vertical-align: middle; }
.badge.committed { background: #e3f2e7; color: #1d6b36; border: 1px solid #b4dcbf; }
.badge.rejected { background: #fbe7e6; color: #9b2420; border: 1px solid #efbdb9; }
.badge.unknown { background: #eceff2; color: #3e4c59; border: 1px solid #cfd5dc; }
section { background: #fff; border: 1px solid #e1e5ea; border-radius: 10px;
  padding: 18px 22px 20px; margin: 0 0 18px; }
h2 { font-size: 18px; font-weight: 600; margin: 0 0 4px; }
h3 { font-size: 15px; font-weight: 600; margin: 0 0 2px; overflow-wrap: anywhere; }
p.lead { color: #616e7c; margin: 0 0 14px; font-size: 14px; }
p.note { color: #616e7c; margin: 6px 0 0; font-size: 13px; }
p.empty { color: #616e7c; font-style: italic; margin: 6px 0 0; }
.callout { border-left: 4px solid #c0392b; background: #fdf1f0; padding: 10px 14px;
  margin: 0 0 14px; border-radius: 0 6px 6px 0; overflow-wrap: anywhere; }
.callout strong { color: #9b2420; }
.callout.hold { border-left-color: #b85a12; background: #fdf5ec; }
.callout.hold strong { color: #8a4410; }
h3.stages { margin: 14px 0 8px; }
.card.stage .v { font-size: 20px; color: #b85a12; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.card { border: 1px solid #e1e5ea; border-radius: 8px; padding: 10px 14px; background: #fafbfc; }
.card .k { color: #616e7c; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .s { color: #616e7c; font-size: 12px; }
.card.quarantined .v { color: #b85a12; }
.card.rejected .v { color: #9b2420; }
.card.clean .v { color: #1d6b36; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(500px, 1fr)); gap: 18px; }
figure { margin: 0; }
figcaption { color: #616e7c; font-size: 13px; margin-top: 2px; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  font-size: 11px; fill: #3e4c59; }
svg text.axis-label { font-size: 12px; fill: #1f2933; }
svg text.legend { font-size: 12px; fill: #1f2933; }
.scroll { overflow-x: auto; border: 1px solid #e1e5ea; border-radius: 8px; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
.scroll table { width: auto; min-width: 100%; }
th, td { padding: 6px 10px; border-bottom: 1px solid #edf0f3; text-align: left;
  vertical-align: top; }
th { background: #f5f6f8; font-weight: 600; color: #3e4c59; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 420px; overflow-wrap: break-word; }
td.reason { min-width: 30em; }
td code, .kw code { font: 12px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  background: #f1f3f5; padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
details { margin-top: 10px; }
summary { cursor: pointer; color: #3a6ea5; font-size: 13px; margin-bottom: 8px; }
.two { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 22px;
  align-items: start; }
footer { color: #616e7c; font-size: 12px; text-align: center; margin-top: 26px; }
"""


# --------------------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _number(value: float | None) -> float | None:
    """A float a plot can place, or None for a missing, non-finite or absurdly large one."""
    if value is None or not math.isfinite(value) or abs(value) > MAX_ABS:
        return None
    return float(value)


def _fmt_int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _fmt_float(value: float | None, digits: int = 4) -> str:
    number = _number(value)
    if number is None:
        return "—"
    if number != 0 and (abs(number) >= 1e6 or abs(number) < 10 ** -(digits - 1)):
        return f"{number:.{max(digits - 2, 1)}e}"
    return f"{number:.{digits}g}" if abs(number) >= 1 else f"{number:.{digits - 1}f}"


def _fmt_p(value: float | None) -> str:
    number = _number(value)
    if number is None:
        return "—"
    if number == 0:
        return "0"
    return f"{number:.1e}" if number < 1e-3 else f"{number:.3f}"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _fmt_pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _fmt_value(value: Any) -> str:
    """A cell or argument value, as plain text (escaped by the caller)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return str(number)
        if number.is_integer() and abs(number) < 1e15:
            return f"{int(number)}"
        return f"{number:.6g}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    if not (math.isfinite(raw) and raw > 1e-300):
        return span if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * magnitude >= raw * (1 - 1e-9):
            return m * magnitude
    return 10 * magnitude


def _ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values inside [lo, hi] (both ends when no round step fits)."""
    if not hi > lo:
        return [lo]
    step = _nice_step(hi - lo, target)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    if not 0 <= last - first <= 4 * target:
        return [lo, hi]
    return [k * step for k in range(first, last + 1)]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    """A tick's text, with as many decimals as the tick step needs."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    biggest = max((abs(t) for t in ticks), default=abs(value))
    if biggest >= 1e6 or (0 < biggest < 1e-3):
        return f"{value:.1e}"
    decimals = next((d for d in range(10) if abs(round(step, d) - step) <= step * 1e-6), 10)
    text = f"{value:,.{decimals}f}"
    return "0" if text.strip("-0.,") == "" else text


def _ticks_to(top: float, target: int = 4) -> list[float]:
    """Ticks from 0 up to the first round value at or above ``top``."""
    step = _nice_step(max(top, 1e-12), target)
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


class _Scale:
    """A linear map from data to pixels."""

    def __init__(self, lo: float, hi: float, px_lo: float, px_hi: float) -> None:
        lo, hi = span(lo, hi)
        self.lo, self.hi, self.px_lo, self.px_hi = lo, hi, px_lo, px_hi

    def __call__(self, value: float) -> float:
        return self.px_lo + (value - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)


def _f(value: float) -> str:
    """A pixel coordinate, short."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
    )


def _x_axis(scale: _Scale, y: float, ticks: Sequence[float], label: str) -> str:
    parts = [
        f'<line x1="{_f(scale.px_lo)}" x2="{_f(scale.px_hi)}" y1="{_f(y)}" y2="{_f(y)}" '
        f'stroke="{MUTED}"/>'
    ]
    for t in ticks:
        x = scale(t)
        parts.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(y)}" y2="{_f(y + 5)}" stroke="{MUTED}"/>'
            f'<text x="{_f(x)}" y="{_f(y + 18)}" text-anchor="middle">'
            f"{_e(_tick_label(t, ticks))}</text>"
        )
    parts.append(
        f'<text class="axis-label" x="{_f((scale.px_lo + scale.px_hi) / 2)}" y="{_f(y + 36)}" '
        f'text-anchor="middle">{_e(label)}</text>'
    )
    return "".join(parts)


def _y_axis(
    scale: _Scale, x: float, right: float, ticks: Sequence[float], label: str, fmt: Any = None
) -> str:
    parts = [
        f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(scale.px_lo)}" y2="{_f(scale.px_hi)}" '
        f'stroke="{MUTED}"/>'
    ]
    for t in ticks:
        y = scale(t)
        text = fmt(t) if fmt else _tick_label(t, ticks)
        parts.append(
            f'<line x1="{_f(x)}" x2="{_f(right)}" y1="{_f(y)}" y2="{_f(y)}" stroke="{GRID}"/>'
            f'<line x1="{_f(x - 5)}" x2="{_f(x)}" y1="{_f(y)}" y2="{_f(y)}" stroke="{MUTED}"/>'
            f'<text x="{_f(x - 8)}" y="{_f(y + 4)}" text-anchor="end">{_e(text)}</text>'
        )
    mid = (scale.px_lo + scale.px_hi) / 2
    parts.append(
        f'<text class="axis-label" transform="translate({_f(x - 46)} {_f(mid)}) rotate(-90)" '
        f'text-anchor="middle">{_e(label)}</text>'
    )
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    """A one-line legend; each item is (swatch svg, text). Returns svg."""
    parts = []
    cursor = x
    for swatch, text in items:
        parts.append(
            f'<g transform="translate({_f(cursor)} {_f(y)})">{swatch}'
            f'<text class="legend" x="18" y="4">{_e(text)}</text></g>'
        )
        cursor += 30 + 6.6 * len(text)
    return "".join(parts)


def _box(colour: str, opacity: float = 1.0) -> str:
    return (
        f'<rect x="0" y="-6" width="12" height="12" rx="2" fill="{colour}" '
        f'fill-opacity="{opacity}"/>'
    )


def _dot(colour: str, opacity: float = 1.0) -> str:
    return f'<circle cx="6" cy="0" r="3.5" fill="{colour}" fill-opacity="{opacity}"/>'


def _cross(colour: str) -> str:
    return f'<path d="M2.5 -3.5l7 7m0 -7l-7 7" stroke="{colour}" stroke-width="2"/>'


def _stroke(colour: str, dash: str = "") -> str:
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<line x1="0" x2="12" y1="0" y2="0" stroke="{colour}" stroke-width="2"{dashed}/>'


# --------------------------------------------------------------------------- plots


def _histogram_svg(panel: DetectorPanel) -> tuple[str, str]:
    """One detector's histogram: batch rows stacked kept/held, calibration outline, cut.

    Each bar is a ``rect`` with ``data-count``, ``data-lo`` and ``data-hi`` (the
    panel's own bins), so a test can check them against the report. Returns
    (svg, caption).
    """
    name = panel.name
    edges = list(panel.edges)
    n_bins = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    clean, held, cal = panel.clean, panel.held, panel.calibration
    n_batch = sum(clean.counts) + clean.over + sum(held.counts) + held.over
    n_cal = sum(cal.counts) + cal.over
    overflow = bool(clean.over or held.over or cal.over)
    # The calibration outline is scaled to the batch's size: what this batch would look
    # like if it were distributed like the trusted data.
    cal_scale = n_batch / n_cal if n_cal and n_batch else 0.0
    cut = _number(panel.cut)

    width, height = 560, 270
    left, right, top, bottom = 62, 20, 34, 54
    over_w = 26 if overflow else 0
    plot_right = width - right - (over_w + 10 if overflow else 0)
    x = _Scale(lo, hi, left, plot_right)
    stacked = [c + h for c, h in zip(clean.counts, held.counts, strict=True)]
    y_max = max(
        max(stacked, default=0),
        max(cal.counts, default=0) * cal_scale,
        clean.over + held.over,
        cal.over * cal_scale,
        1.0,
    )
    y_ticks = _ticks_to(y_max, 4)
    y = _Scale(0, y_ticks[-1], height - bottom, top)

    parts = [_svg_open(width, height, f"Histogram of {name} scores")]
    parts.append(_y_axis(y, left, plot_right, y_ticks, "rows"))

    def bar(x0: float, x1: float, y0: int, count: int, kind: str, lo_v: float, hi_v: float) -> str:
        colour = QUARANTINED if kind == "held" else BATCH
        top_px, base_px = y(y0 + count), y(y0)
        return (
            f'<rect class="bar bar-{kind}" data-count="{count}" data-lo="{float(lo_v)!r}" '
            f'data-hi="{float(hi_v)!r}" x="{_f(x0 + 0.5)}" y="{_f(top_px)}" '
            f'width="{_f(max(x1 - x0 - 1, 0.5))}" height="{_f(base_px - top_px)}" '
            f'fill="{colour}"><title>{_e(_fmt_float(lo_v))} – {_e(_fmt_float(hi_v))}: '
            f"{count:,} {kind} rows</title></rect>"
        )

    for i in range(n_bins):
        x0, x1 = x(edges[i]), x(edges[i + 1])
        kept, flagged = clean.counts[i], held.counts[i]
        if kept:
            parts.append(bar(x0, x1, 0, kept, "clean", edges[i], edges[i + 1]))
        if flagged:
            parts.append(bar(x0, x1, kept, flagged, "held", edges[i], edges[i + 1]))
    if overflow:
        x0, x1 = plot_right + 10, plot_right + 10 + over_w
        inf = float("inf")
        if clean.over:
            parts.append(bar(x0, x1, 0, clean.over, "clean", hi, inf))
        if held.over:
            parts.append(bar(x0, x1, clean.over, held.over, "held", hi, inf))
        if cal.over and cal_scale:
            cy = _f(y(cal.over * cal_scale))
            parts.append(
                f'<path class="calibration" d="M{_f(x0)} {_f(y(0))}V{cy}H{_f(x1)}V{_f(y(0))}" '
                f'fill="none" stroke="{INK}" stroke-width="1.5" stroke-opacity=".75"/>'
            )
        parts.append(
            f'<text x="{_f((x0 + x1) / 2)}" y="{_f(height - bottom + 18)}" '
            f'text-anchor="middle">&gt;{_e(_fmt_float(hi, 3))}</text>'
        )

    if cal_scale:
        # A step outline over the bins, closed to the axis at both ends.
        points = [f"M{_f(x(edges[0]))} {_f(y(0))}"]
        for i in range(n_bins):
            points.append(f"V{_f(y(cal.counts[i] * cal_scale))}H{_f(x(edges[i + 1]))}")
        points.append(f"V{_f(y(0))}")
        parts.append(
            f'<path class="calibration" d="{"".join(points)}" fill="none" stroke="{INK}" '
            f'stroke-width="1.5" stroke-opacity=".75"/>'
        )

    parts.append(_x_axis(x, height - bottom, _ticks(x.lo, x.hi, 6), f"{name} score"))

    if cut is not None and lo <= cut <= hi:
        cx = x(cut)
        anchor, dx = ("end", -4) if cx > (left + plot_right) / 2 else ("start", 4)
        parts.append(
            f'<line class="cut" data-cut="{cut!r}" x1="{_f(cx)}" x2="{_f(cx)}" '
            f'y1="{_f(top - 4)}" y2="{_f(height - bottom)}" stroke="#b3261e" '
            f'stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text x="{_f(cx + dx)}" y="{_f(top + 8)}" text-anchor="{anchor}" '
            f'style="fill:#b3261e">cut {_e(_fmt_float(cut, 3))}</text>'
        )

    legend = [(_box(BATCH), "batch, kept"), (_box(QUARANTINED), "batch, held")]
    if cal_scale:
        legend.append((_stroke(INK), "trusted calibration"))
    if cut is not None:
        legend.append((_stroke("#b3261e", "4 2"), "cut"))
    parts.append(_legend(legend, left, 14))
    parts.append("</svg>")

    caption = [f"{n_batch:,} batch rows, {sum(held.counts) + held.over:,} held"]
    if n_cal:
        caption.append(f"{n_cal:,} trusted calibration scores, outline scaled to the batch's size")
    if cut is not None:
        caption.append(
            f"this detector alone flags scores above {_fmt_float(cut)} (p ≤ {_fmt_p(panel.p_cut)})"
        )
    else:
        caption.append("no single-detector cut")
    if overflow:
        caption.append(
            f"scores beyond {_fmt_float(hi)} share the last bar "
            f"({_plural(clean.over + held.over, 'batch row')}, "
            f"{_plural(cal.over, 'calibration score')})"
        )
    dropped = clean.nonfinite + held.nonfinite
    if dropped:
        caption.append(f"{_plural(dropped, 'batch row')} without a finite score not shown")
    if cal.nonfinite:
        caption.append(f"{_plural(cal.nonfinite, 'calibration score')} not finite, not shown")
    return "".join(parts), _e("; ".join(caption) + ".")


def _scatter_svg(projection: Projection) -> tuple[str, str]:
    groups = [
        ("trusted", projection.reference, projection.n_reference),
        ("batch-clean", projection.clean, projection.n_clean),
        ("batch-held", projection.held, projection.n_held),
    ]
    placed = [
        (group, [(a, b) for a, b in points if _number(a) is not None and _number(b) is not None], n)
        for group, points, n in groups
    ]
    everything = [p for _, points, _ in placed for p in points]
    if not everything:
        return "", ""
    x_lo, x_hi = span(min(a for a, _ in everything), max(a for a, _ in everything))
    y_lo, y_hi = span(min(b for _, b in everything), max(b for _, b in everything))
    pad_x, pad_y = (x_hi - x_lo) * 0.04, (y_hi - y_lo) * 0.04
    x_lo, x_hi, y_lo, y_hi = x_lo - pad_x, x_hi + pad_x, y_lo - pad_y, y_hi + pad_y

    width, height = 1000, 500
    left, right, top, bottom = 62, 20, 36, 54
    x = _Scale(x_lo, x_hi, left, width - right)
    y = _Scale(y_lo, y_hi, height - bottom, top)
    x_ticks, y_ticks = _ticks(x.lo, x.hi, 7), _ticks(y.lo, y.hi, 5)
    parts = [
        _svg_open(width, height, "Trusted and batch rows on the first two principal components")
    ]
    parts.append(_y_axis(y, left, width - right, y_ticks, "PC 2"))
    parts.append(_x_axis(x, height - bottom, x_ticks, "PC 1"))

    shown: list[str] = []
    for group, points, total in placed:
        if group == "batch-held":
            d = "".join(f"M{_f(x(a) - 3)} {_f(y(b) - 3)}l6 6m0-6l-6 6" for a, b in points)
            style = f'fill="none" stroke="{QUARANTINED}" stroke-width="1.8"'
        else:
            # A zero-length segment with a round cap is a dot: far lighter than circles.
            d = "".join(f"M{_f(x(a))} {_f(y(b))}h0" for a, b in points)
            colour, size, alpha = (TRUSTED, 4, 0.55) if group == "trusted" else (BATCH, 4.5, 0.8)
            style = (
                f'fill="none" stroke="{colour}" stroke-width="{size}" '
                f'stroke-linecap="round" stroke-opacity="{alpha}"'
            )
        if points:
            parts.append(
                f'<path class="points {group}" data-points="{len(points)}" '
                f'data-total="{total}" d="{d}" {style}/>'
            )
        label = {"trusted": "trusted", "batch-clean": "kept batch", "batch-held": "held batch"}
        if len(points) < total:
            shown.append(f"{len(points):,} of {total:,} {label[group]} rows")
        else:
            shown.append(f"{total:,} {label[group]} rows")
    parts.append(
        _legend(
            [
                (_dot(TRUSTED, 0.7), "trusted"),
                (_dot(BATCH), "batch, kept"),
                (_cross(QUARANTINED), "batch, held"),
            ],
            left,
            16,
        )
    )
    parts.append("</svg>")
    caption = (
        "Rows projected on the trusted data's first two principal components. Shown: "
        + ", ".join(shown)
        + "."
    )
    return "".join(parts), _e(caption)


def _balance_svg(balance: ClassBalance) -> str:
    labels = list(balance.labels)
    pairs = [
        (_number(r), _number(b)) for r, b in zip(balance.reference, balance.batch, strict=True)
    ]
    n = len(labels)
    group_w = max(28.0, min(64.0, 540.0 / max(n, 1)))
    rotate = n > 12 or max((len(label) for label in labels), default=0) * 6.5 > group_w
    longest = min(max((len(label) for label in labels), default=1), 24)
    bottom = 50 + (int(longest * 5.2) if rotate else 0)
    left, right, top = 62, 20, 36
    width = max(int(left + right + n * group_w), 420)
    height = 260 + (bottom - 50)
    finite = [s for pair in pairs for s in pair if s is not None]
    top_share = max(max(finite, default=0.0), 0.01)
    y_ticks = _ticks_to(top_share, 4)
    y = _Scale(0, y_ticks[-1], height - bottom, top)
    parts = [_svg_open(width, height, "Class balance, trusted against batch")]
    parts.append(
        _y_axis(
            y,
            left,
            width - right,
            y_ticks,
            "share of rows",
            fmt=lambda t: f"{100 * t:.0f}%" if _nice_step(y.hi, 4) >= 0.01 else f"{100 * t:.1f}%",
        )
    )
    base = y(0)
    bar_w = (group_w - 10) / 2
    for i, (label, (reference, batch)) in enumerate(zip(labels, pairs, strict=True)):
        gx = left + i * group_w + 5
        for j, (share, colour, who) in enumerate(
            ((reference, TRUSTED, "trusted"), (batch, BATCH, "batch"))
        ):
            if share is None:
                continue
            top_px = y(share)
            parts.append(
                f'<rect class="share share-{who}" data-share="{share!r}" '
                f'x="{_f(gx + j * bar_w)}" y="{_f(top_px)}" width="{_f(bar_w - 1)}" '
                f'height="{_f(base - top_px)}" fill="{colour}"><title>{_e(label)}: '
                f"{_e(who)} {_e(_fmt_pct(share))}</title></rect>"
            )
        cx = gx + bar_w
        shown = label if len(label) <= 24 else label[:23] + "…"
        if rotate:
            parts.append(
                f'<text transform="translate({_f(cx)} {_f(base + 12)}) rotate(-40)" '
                f'text-anchor="end">{_e(shown)}</text>'
            )
        else:
            parts.append(
                f'<text x="{_f(cx)}" y="{_f(base + 17)}" text-anchor="middle">{_e(shown)}</text>'
            )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{_f(base)}" y2="{_f(base)}" stroke="{MUTED}"/>'
    )
    parts.append(
        f'<text class="axis-label" x="{_f((left + width - right) / 2)}" '
        f'y="{height - 8}" text-anchor="middle">label</text>'
    )
    parts.append(_legend([(_box(TRUSTED), "trusted"), (_box(BATCH), "batch")], left, 16))
    parts.append("</svg>")
    return "".join(parts)


def _drift_svg(drift: Drift) -> str:
    features = drift.features
    n = len(features)
    row_h = 24
    label_w = min(max((len(f.name) for f in features), default=4), 28) * 7 + 16
    left = max(label_w, 60)
    right, top, bottom = 80, 30, 50
    width = 620
    height = top + bottom + n * row_h
    values = [s for s in (_number(f.statistic) for f in features) if s is not None]
    hi = max(max(values, default=0.0), 1e-9)
    x_ticks = _ticks_to(hi, 5)
    x = _Scale(0, x_ticks[-1], left, width - right)
    parts = [_svg_open(width, height, "Most drifted features")]
    for t in x_ticks:
        parts.append(
            f'<line x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{top - 6}" '
            f'y2="{height - bottom}" stroke="{GRID}"/>'
        )
    for i, feature in enumerate(features):
        cy = top + i * row_h + row_h / 2
        name = feature.name
        shown = name if len(name) <= 28 else name[:27] + "…"
        parts.append(f'<text x="{left - 8}" y="{_f(cy + 4)}" text-anchor="end">{_e(shown)}</text>')
        statistic = _number(feature.statistic)
        if statistic is None:
            continue
        x1 = x(max(statistic, 0.0))
        flag = " (drifted)" if feature.drifted else ""
        parts.append(
            f'<rect class="drift" data-statistic="{statistic!r}" x="{left}" '
            f'y="{_f(cy - 8)}" width="{_f(max(x1 - left, 0.5))}" height="16" rx="2" '
            f'fill="{QUARANTINED if feature.drifted else BATCH}" fill-opacity=".85">'
            f"<title>{_e(name)}: statistic {_e(_fmt_float(statistic))}, "
            f"p = {_e(_fmt_p(feature.p_value))}, PSI {_e(_fmt_float(feature.psi, 3))}"
            f"{flag}</title></rect>"
            f'<text x="{_f(x1 + 6)}" y="{_f(cy + 4)}">p = {_e(_fmt_p(feature.p_value))}</text>'
        )
    parts.append(_x_axis(x, height - bottom, x_ticks, "drift statistic (higher = more drift)"))
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- sections


def _section(anchor: str, title: str, lead: str, body: str) -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{lead_html}{body}</section>'


def _table(
    headers: Sequence[tuple[str, bool]],
    rows: Iterable[Sequence[tuple[str, str]]],
    *,
    scroll: bool = False,
    cls: str = "",
) -> str:
    """``headers`` are (text, numeric); each cell is (already-escaped html, css class)."""
    head = "".join(
        f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in headers
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{c}">{cell}</td>' if c else f"<td>{cell}</td>" for cell, c in row)
        + "</tr>"
        for row in rows
    )
    table = f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div class="scroll">{table}</div>' if scroll else table


def _header(report: BatchReport) -> str:
    status = report.status
    badge = status if status in ("committed", "rejected") else "unknown"
    meta = []
    for label, value in (
        ("source", report.source),
        ("created", report.created_at),
        ("sha256", report.sha256),
    ):
        if not value:
            continue
        if label == "sha256" and len(value) > 16:
            # The full hash is in the JSON beside the page and in the tooltip.
            meta.append(
                f'<span title="{_e(value)}">{label}: <strong>{_e(value[:16])}…</strong></span>'
            )
        else:
            meta.append(f"<span>{label}: <strong>{_e(value)}</strong></span>")
    title = f"Batch {_e(report.batch_id)}" if report.batch_id else "Batch (no id)"
    return (
        f'<header class="top"><h1>{title}</h1>'
        f'<span class="badge {badge}">{_e(status)}</span>'
        f'<div class="meta">{"".join(meta)}</div></header>'
    )


def _card(label: str, key: str, value: int | None, cls: str, note: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="k">{_e(label)}</div>'
        f'<div class="v" data-count="{_e(key)}">{_fmt_int(value)}</div>'
        + (f'<div class="s">{note}</div>' if note else "")
        + "</div>"
    )


def _summary(report: BatchReport) -> str:
    counts = report.counts
    rows_in = counts.rows_in
    parts = []
    if report.reason:
        parts.append(f'<div class="callout"><strong>Rejected:</strong> {_e(report.reason)}</div>')
    if report.batch_hold:
        parts.append(
            '<div class="callout hold" id="batch-hold"><strong>Held for review:</strong> '
            f"{_e(report.batch_hold)}</div>"
        )
    if report.source_state:
        parts.append(
            f'<div class="callout" id="source-state"><strong>Source:</strong> '
            f"{_e(report.source_state)}</div>"
        )

    def share(count: int) -> str:
        return f"{_fmt_pct(count / rows_in)} of rows in" if rows_in else ""

    cards = [
        _card("rows in", "rows_in", rows_in, ""),
        _card("clean", "clean", counts.clean, "clean", share(counts.clean)),
        _card(
            "quarantined",
            "quarantined",
            counts.quarantined,
            "quarantined",
            share(counts.quarantined),
        ),
        _card("rejected", "rejected", counts.rejected, "rejected", share(counts.rejected)),
    ]
    parts.append(f'<div class="cards">{"".join(cards)}</div>')
    parts.append(
        f'<p class="note">{_fmt_int(rows_in)} rows in = {counts.clean:,} clean + '
        f"{counts.quarantined:,} quarantined + {counts.rejected:,} rejected."
        + ("" if rows_in is not None else " The file could not be read, so its rows are unknown.")
        + "</p>"
    )
    stages = [_card(STAGE_NAMES[s], f"held-{s}", counts.held_by[s], "stage") for s in STAGES]
    parts.append(
        f'<h3 class="stages">Quarantined by stage</h3><div class="cards">{"".join(stages)}</div>'
        '<p class="note">Each held row counts once, at the first stage that held it '
        "(expectations, then the blocklist of rows reviewers rejected before, the detectors, "
        "the batch hold); its reason names every stage that would have held it.</p>"
    )
    if report.fdr is not None:
        threshold = _number(report.threshold_p)
        if threshold is None:
            cut = ""
        elif threshold > 0:
            cut = f" (rows with combined p ≤ {_e(_fmt_p(threshold))} are flagged)"
        else:
            cut = " (no row's combined p-value passed the cut)"
        parts.append(
            '<p class="note">Detectors: Benjamini–Hochberg at false-discovery rate '
            f"{_e(_fmt_float(report.fdr))}{cut}.</p>"
        )
    if report.reference is not None:
        parts.append(f'<p class="note">{_e(_judged_by(report.reference))}.</p>')
    return _section("summary", "Summary", "", "".join(parts))


def _judged_by(reference: ReferenceUsed) -> str:
    """One sentence naming the reference version a batch was judged against."""
    return (
        f"Judged against reference version {reference.version} ({reference.rows:,} trusted "
        f"rows, digest {reference.digest[:12]})"
    )


def _kwarg(value: Any) -> str:
    """A keyword argument's value, with a long list cut short."""
    if isinstance(value, list | tuple) and len(value) > MAX_LIST:
        head = json.dumps(list(value[: MAX_LIST - 2]), default=str, ensure_ascii=False)
        return f"{head[:-1]}, … {len(value) - MAX_LIST + 2:,} more]"
    return _fmt_value(value)


def _breakable(text: str) -> str:
    """Escaped ``text`` that may wrap after an underscore (long expectation names)."""
    return _e(text).replace("_", "_<wbr>")


def _failed_expectations(report: BatchReport) -> str:
    failed = report.failed_expectations
    if not failed:
        return _section(
            "expectations", "Failed expectations", "", '<p class="empty">No expectation failed.</p>'
        )
    rows = []
    for item in failed:
        args = " ".join(f"<code>{_e(k)}={_e(_kwarg(v))}</code>" for k, v in item.kwargs.items())
        rows.append(
            [
                (f"<code>{_breakable(item.type)}</code>", "text"),
                (_e(item.column) if item.column else "—", "text"),
                (_e(item.level), "text"),
                (args or "—", "text kw"),
                (_fmt_int(item.unexpected_count), "num"),
                (_e(item.error or ""), "text"),
            ]
        )
    headers = [
        ("expectation", False),
        ("column", False),
        ("level", False),
        ("arguments", False),
        ("unexpected rows", True),
        ("error", False),
    ]
    body = _table(headers, rows[:MAX_EXPECTATIONS], scroll=True)
    if len(rows) > MAX_EXPECTATIONS:
        # Native disclosure: the rest is one click away, with no script.
        rest = len(rows) - MAX_EXPECTATIONS
        body += (
            f"<details><summary>Show the other {rest:,} failed expectations</summary>"
            f"{_table(headers, rows[MAX_EXPECTATIONS:], scroll=True)}</details>"
        )
    lead = (
        f"{len(failed):,} expectation{'s' if len(failed) != 1 else ''} of the suite "
        "failed on this batch. A schema-level one rejects the batch whole; a row-level one "
        "holds the rows that break it."
    )
    return _section("expectations", "Failed expectations", lead, body)


def _detectors(panels: Sequence[DetectorPanel]) -> str | None:
    if not panels:
        return None
    figures = []
    for panel in panels:
        svg, caption = _histogram_svg(panel)
        figures.append(
            f'<figure class="histogram"><h3>{_e(panel.name)}</h3>{svg}'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    lead = (
        "Each detector's scores for the batch's scored rows (higher = more suspicious), "
        "against the scores it gives trusted calibration rows. Orange bars are rows the "
        "batch decision held; the dashed line is the decision's own cut for this detector: "
        "above it, this detector alone flags a row."
    )
    return _section(
        "detectors", "Detector scores", lead, f'<div class="figs">{"".join(figures)}</div>'
    )


def _projection(projection: Projection | None) -> str | None:
    svg, caption = _scatter_svg(projection) if projection is not None else ("", "")
    if not svg:
        return None
    lead = (
        "Where the batch's scored rows sit relative to the trusted data. Held rows far "
        "from every trusted cloud are likely outliers; those inside a cloud were held "
        "for their label, as a duplicate or trigger, or with the whole batch."
    )
    return _section(
        "projection",
        "Trusted vs batch (2-D projection)",
        lead,
        f"<figure>{svg}<figcaption>{caption}</figcaption></figure>",
    )


def _class_balance(balance: ClassBalance | None) -> str | None:
    if balance is None or not balance.labels:
        return None
    rows = []
    for label, r, b in zip(balance.labels, balance.reference, balance.batch, strict=True):
        ref, bat = _number(r), _number(b)
        rows.append(
            [
                (_e(label), "text"),
                (_fmt_pct(ref) if ref is not None else "—", "num"),
                (_fmt_pct(bat) if bat is not None else "—", "num"),
                (
                    f"{100 * (bat - ref):+.1f} pt" if ref is not None and bat is not None else "—",
                    "num",
                ),
            ]
        )
    table = _table(
        [("label", False), ("trusted", True), ("batch", True), ("change", True)], rows, scroll=True
    )
    if balance.kind == "target":
        lead = (
            "Share of the target's values in each range (the trusted targets' deciles, and "
            "beyond them) among trusted rows and among this batch's scored rows."
        )
        title = "Target distribution"
    else:
        lead = "Share of each label among trusted rows and among this batch's scored rows."
        title = "Class balance"
    body = f'<div class="two"><figure>{_balance_svg(balance)}</figure>{table}</div>'
    return _section("class-balance", title, lead, body)


def _drift(drift: Drift | None) -> str | None:
    if drift is None or (not drift.features and drift.label_tv is None and drift.label_p is None):
        return None
    cards = (
        '<div class="cards">'
        f'<div class="card"><div class="k">label TV distance</div>'
        f'<div class="v">{_e(_fmt_float(drift.label_tv, 3))}</div>'
        '<div class="s">0 = same label mix, 1 = disjoint</div></div>'
        f'<div class="card"><div class="k">label shift p-value</div>'
        f'<div class="v">{_e(_fmt_p(drift.label_p))}</div>'
        '<div class="s">small = mix differs from trusted</div></div>'
        f'<div class="card"><div class="k">features drifted</div>'
        f'<div class="v">{drift.n_drifted:,}</div>'
        f'<div class="s">of {_plural(drift.n_features, "feature")}: significant and '
        "material</div></div>"
        "</div>"
    )
    body = [cards]
    if drift.features:
        note = (
            f"The {len(drift.features)} most drifted of {drift.n_features:,} features."
            if drift.n_features > len(drift.features)
            else "Features, most drifted first."
        )
        body.append(
            f'<figure style="margin-top:16px">{_drift_svg(drift)}'
            f"<figcaption>{_e(note)} Drifted ones in orange.</figcaption></figure>"
        )
    lead = (
        "How far this batch's distribution moved from the trusted data: the label mix as "
        "a total-variation distance, and each feature's two-sample statistic."
    )
    return _section("drift", "Drift", lead, "".join(body))


def _top_rows(report: BatchReport) -> str | None:
    rows = report.top_rows
    if not rows:
        return None
    columns = list(dict.fromkeys(c for row in rows for c in row.values))
    headers = [
        ("#", True),
        ("row", True),
        ("stage", False),
        ("suspicion", True),
        ("reason", False),
    ]
    headers += [(c, False) for c in columns]
    body = []
    for rank, row in enumerate(rows, 1):
        cells = [
            (str(rank), "num"),
            (f"{row.row:,}", "num"),
            (_e(STAGE_NAMES.get(row.stage, row.stage)), "text"),
            (_e(_fmt_float(row.suspicion, 3)), "num"),
            ("<br>".join(_e(part) for part in (row.reason or "—").split("; ")), "text reason"),
        ]
        for column in columns:
            value = row.values.get(column)
            is_num = isinstance(value, int | float) and not isinstance(value, bool)
            cells.append(
                (_e(_fmt_value(value)) if column in row.values else "", "num" if is_num else "text")
            )
        body.append(cells)
    held = report.counts.quarantined
    note = (
        f"The first {len(rows)} of {held:,} held rows" if held > len(rows) else "Every held row"
    ) + ": those held by a rule (no suspicion) first, then the most suspicious."
    lead = (
        f"{_e(note)} <em>row</em> is the row's position in the batch file; long values are "
        "cut short; scroll sideways for every column's value."
    )
    return _section("top-rows", "Held rows", lead, _table(headers, body, scroll=True, cls="rows"))


# --------------------------------------------------------------------------- public API


def _join_or(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _check_report(report: Any, owner: str) -> BatchReport:
    if not isinstance(report, BatchReport):
        raise param_error("report", owner, "a BatchReport", type(report).__name__)
    return report


def render_html(report: BatchReport) -> str:
    """Render one batch's report as a self-contained HTML page.

    Parameters
    ----------
    report : BatchReport

    Returns
    -------
    str
        A complete HTML document: inline CSS and SVG only, no script, no external
        reference; every text from ``report`` is escaped.
    """
    report = _check_report(report, "render_html()")
    evidence = report.evidence
    title = f"poisonguard report · {report.batch_id}"
    sections = [_summary(report), _failed_expectations(report)]
    optional = [
        _detectors(evidence.detectors if evidence else ()),
        _projection(evidence.projection if evidence else None),
        _class_balance(evidence.class_balance if evidence else None),
        _drift(evidence.drift if evidence else None),
        _top_rows(report),
    ]
    sections += [s for s in optional if s is not None]
    missing = [
        name
        for name, s in zip(
            ("detector scores", "projection", "class balance", "drift", "held rows"),
            optional,
            strict=True,
        )
        if s is None
    ]
    if missing:
        if report.status == "rejected":
            why = " (the batch was rejected before it was scored)"
        elif evidence is None:
            why = " (every row was held before the detectors scored it)"
        else:
            why = ""
        sections.append(
            '<section id="not-available"><h2>Not available</h2><p class="empty">'
            f"This report holds no {_e(_join_or(missing))}{why}.</p></section>"
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f"{_header(report)}{''.join(sections)}"
        "<footer>Generated by poisonguard. This page is self-contained: it loads nothing "
        "and runs no script.</footer>"
        "</main></body></html>\n"
    )


def write_report(report: BatchReport, folder: Path) -> tuple[Path, Path]:
    """Write ``<batch_id>.json`` and ``<batch_id>.html`` into ``folder``, each atomically.

    Both are rendered before anything is written, so a report that cannot be
    rendered leaves no file behind.

    Parameters
    ----------
    report : BatchReport
        Its ``batch_id`` names the files.
    folder : Path
        Where the files go; created if missing.

    Returns
    -------
    (Path, Path)
        The JSON file (``load_report`` reads it back) and the HTML page.

    Raises
    ------
    ConfigError
        When ``batch_id`` is not a plain file name.
    """
    report = _check_report(report, "write_report()")
    batch_id = report.batch_id
    if (
        batch_id in ("", ".", "..")
        or Path(batch_id).name != batch_id
        or any(c in batch_id for c in "/\\\x00")
        or len(batch_id) > 200
    ):
        raise param_error(
            "batch_id",
            "write_report()",
            "a plain file name (no path separator, at most 200 characters)",
            batch_id,
        )
    page = render_html(report)
    data = dumps(report)
    folder = Path(folder)
    json_path, html_path = folder / f"{batch_id}.json", folder / f"{batch_id}.html"
    atomic_write_bytes(json_path, (data + "\n").encode("utf-8"))
    atomic_write_bytes(html_path, page.encode("utf-8"))
    return json_path, html_path


def load_report(path: str | Path) -> BatchReport:
    """Read a report's JSON (``write_report``'s) back into a ``BatchReport``.

    Raises
    ------
    StoreError
        When the file is not a report: not JSON, or a field missing, unknown or
        of the wrong type (the message names the file and the field).
    """
    path = Path(path)
    return loads(BatchReport, path.read_bytes(), source=str(path))


def _md(value: Any) -> str:
    """Text safe inside a markdown table cell: no HTML, no pipes, no line breaks."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    for ch in "\\`*_[]|#":
        text = text.replace(ch, "\\" + ch)
    return text


def _md_code(value: Any) -> str:
    """``value`` as an inline code span, verbatim, whatever backticks it holds."""
    text = " ".join(str(value).splitlines())
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _top_reasons(report: BatchReport, limit: int = 5) -> list[tuple[str, int]]:
    reasons: Counter[str] = Counter()
    for item in report.failed_expectations:
        what = item.type + (f" on {item.column}" if item.column else "")
        reasons[what] += item.unexpected_count or 0
    for row in report.top_rows:
        if row.reason:
            reasons[row.reason] += 1
    return [(r, c) for r, c in reasons.most_common() if c > 0][:limit]


def markdown_summary(report: BatchReport, html_path: Path) -> str:
    """A short markdown summary of one batch, for a Prefect markdown artifact.

    Parameters
    ----------
    report : BatchReport
    html_path : Path
        Where its HTML page was written.

    Returns
    -------
    str
        A heading line; the rejection or batch-hold reason, if any; the counts
        (rows in = clean + quarantined + rejected) and the quarantined rows by
        stage; the top reasons (failed expectations by unexpected rows, then
        the listed held rows' reasons) and the page's path.
    """
    report = _check_report(report, "markdown_summary()")
    counts = report.counts
    lines = [f"**Batch {_md(report.batch_id or '(no id)')}**: {_md(report.status)}"]
    if report.source:
        lines[0] += f" (source {_md(report.source)})"
    lines.append("")
    if report.reason:
        lines += [f"Rejected: {_md(report.reason)}", ""]
    if report.batch_hold:
        lines += [f"Held for review: {_md(report.batch_hold)}", ""]
    if report.reference is not None:
        lines += [f"{_md(_judged_by(report.reference))}.", ""]
    if report.source_state:
        lines += [f"Source: {_md(report.source_state)}", ""]
    lines += [
        "| rows in | clean | quarantined | rejected |",
        "|---:|---:|---:|---:|",
        f"| {_fmt_int(counts.rows_in)} | {counts.clean:,} | {counts.quarantined:,} "
        f"| {counts.rejected:,} |",
        "",
        "| quarantined by | " + " | ".join(STAGE_NAMES[s] for s in STAGES) + " |",
        "|---|" + "---:|" * len(STAGES),
        "| rows | " + " | ".join(f"{counts.held_by[s]:,}" for s in STAGES) + " |",
        "",
    ]
    reasons = _top_reasons(report)
    if reasons:
        lines += ["| top reasons | rows |", "|---|---:|"]
        lines += [f"| {_md(r)} | {c:,} |" for r, c in reasons]
        lines.append("")
    lines.append(f"Report: {_md_code(Path(html_path))}")
    return "\n".join(lines) + "\n"
