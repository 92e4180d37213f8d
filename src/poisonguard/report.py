"""A batch's report for the data steward: one self-contained HTML page, its JSON, a summary.

The pipeline builds a plain, JSON-able ``report`` dict per batch; this module only
presents it. Any key may be missing or empty (a rejected batch carries little more
than its counts and reason), and every section copes with that.

The page makes no network request and runs no script: plots are inline SVG drawn
here, styles sit in one ``<style>`` block, a Content-Security-Policy forbids
everything else, and every value taken from the data is HTML-escaped, because
column names, labels and reasons come from files nobody has vetted yet.

Report schema (every key optional)::

    batch_id, source, sha256, status ("committed" | "rejected"), created_at, reason
    counts: {rows_in, clean, quarantined, rejected,
             quarantined_by_expectations, quarantined_by_detectors}
    failed_expectations: [{type, column, kwargs, unexpected_count, error}]
    decision: {fdr, threshold_p}
    detectors: [{name, scores, quarantined, cut, calibration}]
    projection: {reference: [[x, y]], batch: [[x, y]], quarantined: [bool]}
    class_balance: {labels, reference, batch}
    drift: {label_tv, label_p, features: [{name, statistic, p_value}]}
    top_rows: [{pg_row, suspicion, reason, values: {column: value}}]
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from poisonguard.errors import param_error
from poisonguard.store import atomic_write_bytes

__all__ = ["markdown_summary", "render_html", "write_report"]

MAX_POINTS = 3000
"""At most this many scatter points per group (trusted, batch clean, batch quarantined)."""

MAX_TOP_ROWS = 100
MAX_DRIFT_FEATURES = 15
N_BINS = 30
MAX_EXPECTATIONS = 15
MAX_LIST = 8
MAX_ABS = 1e150
"""Numbers beyond this magnitude are treated as missing: no plot can place them."""

# Colour-blind-safe pairs: blue for the batch, orange for what was quarantined,
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
td.reason { min-width: 16em; }
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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return []
    return list(value)


def _number(value: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric, non-finite or absurdly large."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) and abs(out) <= MAX_ABS else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else round(number)


def _floats(values: Any) -> np.ndarray:
    """A float array; entries that are not numbers become NaN."""
    items = _seq(values)
    out = np.full(len(items), np.nan)
    for i, v in enumerate(items):
        number = _number(v)
        if number is not None:
            out[i] = number
    return out


def _flags(values: Any, n: int) -> np.ndarray:
    """A bool mask of length ``n``; missing or non-boolean entries are False."""
    items = _seq(values)[:n]
    out = np.zeros(n, dtype=bool)
    out[: len(items)] = [
        isinstance(v, bool | int | np.bool_ | np.integer) and bool(v) for v in items
    ]
    return out


def _fmt_int(value: Any) -> str:
    count = _count(value)
    return "—" if count is None else f"{count:,}"


def _fmt_float(value: Any, digits: int = 4) -> str:
    number = _number(value)
    if number is None:
        return "—"
    if number != 0 and (abs(number) >= 1e6 or abs(number) < 10 ** -(digits - 1)):
        return f"{number:.{max(digits - 2, 1)}e}"
    return f"{number:.{digits}g}" if abs(number) >= 1 else f"{number:.{digits - 1}f}"


def _fmt_p(value: Any) -> str:
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
    """A cell value from a row, as plain text (escaped by the caller)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if not math.isfinite(number):
            return str(number)
        if number.is_integer() and abs(number) < 1e15:
            return f"{int(number)}"
        return f"{number:.6g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)``, widened when it is empty or finer than floats can split into bins."""
    size = max(1.0, abs(lo), abs(hi))
    if hi - lo > size * 1e-9:
        return lo, hi
    pad = 0.5 if size == 1.0 else size * 0.01
    return lo - pad, hi + pad


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
        lo, hi = _widen(lo, hi)
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


def _histogram_svg(detector: Mapping[str, Any]) -> tuple[str, str]:
    """One detector's histogram: batch scores stacked clean/quarantined, calibration outline, cut.

    Each bar is a ``rect`` with ``data-count``, ``data-lo`` and ``data-hi``, so a test can
    recount the data. Returns (svg, caption).
    """
    name = str(detector.get("name") or "detector")
    raw = _floats(detector.get("scores"))
    quarantined = _flags(detector.get("quarantined"), len(raw))
    finite = np.isfinite(raw)
    scores, flags = raw[finite], quarantined[finite]
    calibration = _floats(detector.get("calibration"))
    calibration = calibration[np.isfinite(calibration)]
    cut = _number(detector.get("cut"))
    n = len(scores)

    everything = np.concatenate([scores, calibration, [cut] if cut is not None else []])
    if len(everything) == 0:
        return "", f"{_e(name)}: no scores."
    lo, hi = float(everything.min()), float(everything.max())
    # A few far outliers (in the batch or the calibration) would squash every other bar
    # into the first bin; past a core range set by most of the calibration, the cut and
    # most of the batch, they share one bar.
    core = max(
        float(np.quantile(calibration, 0.99)) if len(calibration) else lo,
        cut if cut is not None else lo,
        float(np.quantile(scores, 0.9)) if n else lo,
    )
    clip: float | None = None
    if core > lo and hi - lo > 2.5 * (core - lo):
        clip = lo + 1.25 * (core - lo)
        hi = clip
    lo, hi = _widen(lo, hi)
    edges = np.linspace(lo, hi, N_BINS + 1)

    def counts(values: np.ndarray) -> tuple[np.ndarray, int]:
        inside = values <= hi if clip is not None else np.ones(len(values), dtype=bool)
        hist, _ = np.histogram(values[inside], bins=edges)
        return hist, int((~inside).sum())

    clean_hist, clean_over = counts(scores[~flags])
    quar_hist, quar_over = counts(scores[flags])
    cal_hist, cal_over = counts(calibration)
    # The calibration outline is scaled to the batch's size: what this batch would look
    # like if it were distributed like the trusted data.
    cal_scale = n / len(calibration) if len(calibration) and n else 0.0
    cal_expected = cal_hist * cal_scale

    width, height = 560, 270
    left, right, top, bottom = 62, 20, 34, 54
    over_w = 26 if clip is not None else 0
    plot_right = width - right - (over_w + 10 if clip is not None else 0)
    x = _Scale(lo, hi, left, plot_right)
    stacked = clean_hist + quar_hist
    y_max = max(
        float(stacked.max()) if len(stacked) else 0.0,
        float(cal_expected.max()) if len(cal_expected) else 0.0,
        float(clean_over + quar_over),
        cal_over * cal_scale,
        1.0,
    )
    y_ticks = _ticks_to(y_max, 4)
    y = _Scale(0, y_ticks[-1], height - bottom, top)

    parts = [_svg_open(width, height, f"Histogram of {name} scores")]
    parts.append(_y_axis(y, left, plot_right, y_ticks, "rows"))

    def bar(
        x0: float, x1: float, y0: float, count: int, kind: str, lo_v: float, hi_v: float
    ) -> str:
        colour = QUARANTINED if kind == "quarantined" else BATCH
        top_px, base_px = y(y0 + count), y(y0)
        return (
            f'<rect class="bar bar-{kind}" data-count="{count}" data-lo="{float(lo_v)!r}" '
            f'data-hi="{float(hi_v)!r}" x="{_f(x0 + 0.5)}" y="{_f(top_px)}" '
            f'width="{_f(max(x1 - x0 - 1, 0.5))}" height="{_f(base_px - top_px)}" '
            f'fill="{colour}"><title>{_e(_fmt_float(lo_v))} – {_e(_fmt_float(hi_v))}: '
            f"{count:,} {kind} rows</title></rect>"
        )

    for i in range(N_BINS):
        x0, x1 = x(edges[i]), x(edges[i + 1])
        if clean_hist[i]:
            parts.append(bar(x0, x1, 0, int(clean_hist[i]), "clean", edges[i], edges[i + 1]))
        if quar_hist[i]:
            parts.append(
                bar(
                    x0,
                    x1,
                    int(clean_hist[i]),
                    int(quar_hist[i]),
                    "quarantined",
                    edges[i],
                    edges[i + 1],
                )
            )
    if clip is not None:
        x0, x1 = plot_right + 10, plot_right + 10 + over_w
        inf = float("inf")
        if clean_over:
            parts.append(bar(x0, x1, 0, clean_over, "clean", hi, inf))
        if quar_over:
            parts.append(bar(x0, x1, clean_over, quar_over, "quarantined", hi, inf))
        if cal_over and cal_scale:
            cy = _f(y(cal_over * cal_scale))
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
        for i in range(N_BINS):
            points.append(f"V{_f(y(float(cal_expected[i])))}H{_f(x(edges[i + 1]))}")
        points.append(f"V{_f(y(0))}")
        parts.append(
            f'<path class="calibration" d="{"".join(points)}" fill="none" stroke="{INK}" '
            f'stroke-width="1.5" stroke-opacity=".75"/>'
        )

    parts.append(_x_axis(x, height - bottom, _ticks(lo, hi, 6), f"{name} score"))

    if cut is not None and lo <= cut <= hi:
        cx = x(cut)
        anchor, dx = ("end", -4) if cx > (left + plot_right) / 2 else ("start", 4)
        parts.append(
            f'<line class="cut" x1="{_f(cx)}" x2="{_f(cx)}" y1="{_f(top - 4)}" '
            f'y2="{_f(height - bottom)}" stroke="#b3261e" stroke-width="1.5" '
            f'stroke-dasharray="5 3"/>'
            f'<text x="{_f(cx + dx)}" y="{_f(top + 8)}" text-anchor="{anchor}" '
            f'style="fill:#b3261e">cut {_e(_fmt_float(cut, 3))}</text>'
        )

    legend = [(_box(BATCH), "batch, kept"), (_box(QUARANTINED), "batch, quarantined")]
    if cal_scale:
        legend.append((_stroke(INK), "trusted calibration"))
    if cut is not None:
        legend.append((_stroke("#b3261e", "4 2"), "cut"))
    parts.append(_legend(legend, left, 14))
    parts.append("</svg>")

    n_quar = int(flags.sum())
    caption = [f"{n:,} batch rows, {n_quar:,} quarantined"]
    if len(calibration):
        caption.append(
            f"{len(calibration):,} trusted calibration scores, outline scaled to the batch's size"
        )
    if cut is not None:
        caption.append(f"this detector alone flags scores above {_fmt_float(cut)}")
    else:
        caption.append("no single-detector cut")
    if clip is not None:
        over = clean_over + quar_over
        caption.append(
            f"scores beyond {_fmt_float(hi)} share the last bar ({_plural(over, 'batch row')}, "
            f"{_plural(cal_over, 'calibration score')})"
        )
    dropped = int((~finite).sum())
    if dropped:
        caption.append(f"{dropped:,} rows without a finite score not shown")
    return "".join(parts), _e("; ".join(caption) + ".")


def _points(values: Any) -> np.ndarray:
    """An (n, 2) float array of coordinates; malformed pairs become NaN."""
    items = _seq(values)
    out = np.full((len(items), 2), np.nan)
    for i, pair in enumerate(items):
        coords = _seq(pair)
        if len(coords) >= 2:
            a, b = _number(coords[0]), _number(coords[1])
            if a is not None and b is not None:
                out[i] = (a, b)
    return out


def _thin(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices out of ``n``, evenly spread, the same every time."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _scatter_svg(projection: Mapping[str, Any]) -> tuple[str, str]:
    reference = _points(projection.get("reference"))
    batch = _points(projection.get("batch"))
    flags = _flags(projection.get("quarantined"), len(batch))
    reference = reference[np.isfinite(reference).all(axis=1)]
    keep = np.isfinite(batch).all(axis=1)
    batch, flags = batch[keep], flags[keep]
    groups = [
        ("trusted", reference),
        ("batch-clean", batch[~flags]),
        ("batch-quarantined", batch[flags]),
    ]
    everything = np.concatenate([reference, batch]) if len(reference) + len(batch) else None
    if everything is None or len(everything) == 0:
        return "", ""
    x_lo, y_lo = everything.min(axis=0)
    x_hi, y_hi = everything.max(axis=0)
    x_lo, x_hi = _widen(float(x_lo), float(x_hi))
    y_lo, y_hi = _widen(float(y_lo), float(y_hi))
    pad_x, pad_y = (x_hi - x_lo) * 0.04, (y_hi - y_lo) * 0.04
    x_lo, x_hi, y_lo, y_hi = x_lo - pad_x, x_hi + pad_x, y_lo - pad_y, y_hi + pad_y

    width, height = 1000, 500
    left, right, top, bottom = 62, 20, 36, 54
    x = _Scale(float(x_lo), float(x_hi), left, width - right)
    y = _Scale(float(y_lo), float(y_hi), height - bottom, top)
    x_ticks, y_ticks = _ticks(x.lo, x.hi, 7), _ticks(y.lo, y.hi, 5)
    parts = [
        _svg_open(width, height, "Trusted and batch rows on the first two principal components")
    ]
    parts.append(_y_axis(y, left, width - right, y_ticks, "PC 2"))
    parts.append(_x_axis(x, height - bottom, x_ticks, "PC 1"))

    shown: list[str] = []
    for group, coords in groups:
        idx = _thin(len(coords), MAX_POINTS)
        chosen = coords[idx]
        if group == "batch-quarantined":
            d = "".join(f"M{_f(x(a) - 3)} {_f(y(b) - 3)}l6 6m0-6l-6 6" for a, b in chosen)
            style = f'fill="none" stroke="{QUARANTINED}" stroke-width="1.8"'
        else:
            # A zero-length segment with a round cap is a dot: far lighter than circles.
            d = "".join(f"M{_f(x(a))} {_f(y(b))}h0" for a, b in chosen)
            colour, size, alpha = (TRUSTED, 4, 0.55) if group == "trusted" else (BATCH, 4.5, 0.8)
            style = (
                f'fill="none" stroke="{colour}" stroke-width="{size}" '
                f'stroke-linecap="round" stroke-opacity="{alpha}"'
            )
        if len(chosen):
            parts.append(
                f'<path class="points {group}" data-points="{len(chosen)}" '
                f'data-total="{len(coords)}" d="{d}" {style}/>'
            )
        label = {
            "trusted": "trusted",
            "batch-clean": "kept batch",
            "batch-quarantined": "quarantined batch",
        }[group]
        if len(chosen) < len(coords):
            shown.append(f"{len(chosen):,} of {len(coords):,} {label} rows")
        else:
            shown.append(f"{len(coords):,} {label} rows")
    parts.append(
        _legend(
            [
                (_dot(TRUSTED, 0.7), "trusted"),
                (_dot(BATCH), "batch, kept"),
                (_cross(QUARANTINED), "batch, quarantined"),
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


def _balance_svg(labels: list[str], reference: np.ndarray, batch: np.ndarray) -> str:
    n = len(labels)
    group_w = max(28.0, min(64.0, 540.0 / max(n, 1)))
    rotate = n > 12 or max((len(label) for label in labels), default=0) * 6.5 > group_w
    longest = min(max((len(label) for label in labels), default=1), 24)
    bottom = 50 + (int(longest * 5.2) if rotate else 0)
    left, right, top = 62, 20, 36
    width = int(left + right + n * group_w)
    width = max(width, 420)
    height = 260 + (bottom - 50)
    shares = np.concatenate([reference, batch])
    finite = shares[np.isfinite(shares)]
    top_share = max(float(finite.max()) if len(finite) else 0.0, 0.01)
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
    for i, label in enumerate(labels):
        gx = left + i * group_w + 5
        for j, (share, colour, who) in enumerate(
            ((reference[i], TRUSTED, "trusted"), (batch[i], BATCH, "batch"))
        ):
            if not math.isfinite(share):
                continue
            top_px = y(float(share))
            parts.append(
                f'<rect class="share share-{who}" data-share="{float(share)!r}" '
                f'x="{_f(gx + j * bar_w)}" y="{_f(top_px)}" width="{_f(bar_w - 1)}" '
                f'height="{_f(base - top_px)}" fill="{colour}"><title>{_e(label)}: '
                f"{_e(who)} {_e(_fmt_pct(float(share)))}</title></rect>"
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


def _drift_svg(features: list[tuple[str, float | None, float | None]]) -> str:
    n = len(features)
    row_h = 24
    label_w = min(max((len(name) for name, _, _ in features), default=4), 28) * 7 + 16
    left = max(label_w, 60)
    right, top, bottom = 80, 30, 50
    width = 620
    height = top + bottom + n * row_h
    values = [s for _, s, _ in features if s is not None]
    hi = max(max(values, default=0.0), 1e-9)
    x_ticks = _ticks_to(hi, 5)
    x = _Scale(0, x_ticks[-1], left, width - right)
    parts = [_svg_open(width, height, "Most drifted features")]
    for t in x_ticks:
        parts.append(
            f'<line x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{top - 6}" '
            f'y2="{height - bottom}" stroke="{GRID}"/>'
        )
    for i, (name, statistic, p_value) in enumerate(features):
        cy = top + i * row_h + row_h / 2
        shown = name if len(name) <= 28 else name[:27] + "…"
        parts.append(f'<text x="{left - 8}" y="{_f(cy + 4)}" text-anchor="end">{_e(shown)}</text>')
        if statistic is None:
            continue
        x1 = x(max(statistic, 0.0))
        parts.append(
            f'<rect class="drift" data-statistic="{statistic!r}" x="{left}" '
            f'y="{_f(cy - 8)}" width="{_f(max(x1 - left, 0.5))}" height="16" rx="2" '
            f'fill="{BATCH}" fill-opacity=".85"><title>{_e(name)}: statistic '
            f"{_e(_fmt_float(statistic))}, p = {_e(_fmt_p(p_value))}</title></rect>"
            f'<text x="{_f(x1 + 6)}" y="{_f(cy + 4)}">p = {_e(_fmt_p(p_value))}</text>'
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


def _header(report: Mapping[str, Any]) -> str:
    batch_id = report.get("batch_id")
    status = str(report.get("status") or "unknown")
    badge = status if status in ("committed", "rejected") else "unknown"
    meta = []
    for key, label in (("source", "source"), ("created_at", "created"), ("sha256", "sha256")):
        value = report.get(key)
        if value in (None, ""):
            continue
        text = str(value)
        if key == "sha256" and len(text) > 16:
            # The full hash is in the JSON beside the page and in the tooltip.
            meta.append(
                f'<span title="{_e(text)}">{label}: <strong>{_e(text[:16])}…</strong></span>'
            )
        else:
            meta.append(f"<span>{label}: <strong>{_e(text)}</strong></span>")
    title = f"Batch {_e(batch_id)}" if batch_id not in (None, "") else "Batch (no id)"
    return (
        f'<header class="top"><h1>{title}</h1>'
        f'<span class="badge {badge}">{_e(status)}</span>'
        f'<div class="meta">{"".join(meta)}</div></header>'
    )


def _summary(report: Mapping[str, Any]) -> str:
    counts = _mapping(report.get("counts"))
    rows_in = _count(counts.get("rows_in"))
    parts = []
    reason = report.get("reason")
    if reason not in (None, ""):
        parts.append(f'<div class="callout"><strong>Rejected:</strong> {_e(reason)}</div>')

    def share(value: Any) -> str:
        count = _count(value)
        if count is None or not rows_in:
            return ""
        return f'<div class="s">{_fmt_pct(count / rows_in)} of rows in</div>'

    cards = [
        ("rows in", "rows_in", ""),
        ("clean", "clean", "clean"),
        ("quarantined", "quarantined", "quarantined"),
        ("rejected", "rejected", "rejected"),
    ]
    html_cards = []
    for label, key, cls in cards:
        html_cards.append(
            f'<div class="card {cls}"><div class="k">{label}</div>'
            f'<div class="v" data-count="{_e(key)}">{_fmt_int(counts.get(key))}</div>'
            f"{share(counts.get(key)) if key != 'rows_in' else ''}</div>"
        )
    parts.append(f'<div class="cards">{"".join(html_cards)}</div>')
    detail = []
    if counts.get("quarantined_by_expectations") is not None:
        detail.append(
            f"{_fmt_int(counts.get('quarantined_by_expectations'))} quarantined by expectations"
        )
    if counts.get("quarantined_by_detectors") is not None:
        detail.append(f"{_fmt_int(counts.get('quarantined_by_detectors'))} by detectors")
    decision = _mapping(report.get("decision"))
    if decision.get("fdr") is not None or decision.get("threshold_p") is not None:
        threshold = _number(decision.get("threshold_p"))
        if threshold is None:
            cut = ""
        elif threshold > 0:
            cut = f" (rows with combined p ≤ {_e(_fmt_p(threshold))} are flagged)"
        else:
            cut = " (no row's combined p-value passed the cut)"
        detail.append(
            f"Benjamini–Hochberg at false-discovery rate {_e(_fmt_float(decision.get('fdr')))}{cut}"
        )
    if detail:
        parts.append(f'<p class="note">{"; ".join(detail)}.</p>')
    return _section("summary", "Summary", "", "".join(parts))


def _kwarg(value: Any) -> str:
    """A keyword argument's value, with a long list cut short."""
    if isinstance(value, list | tuple) and len(value) > MAX_LIST:
        head = json.dumps(list(value[: MAX_LIST - 2]), default=str, ensure_ascii=False)
        return f"{head[:-1]}, … {len(value) - MAX_LIST + 2:,} more]"
    return _fmt_value(value)


def _breakable(text: str) -> str:
    """Escaped ``text`` that may wrap after an underscore (long expectation names)."""
    return _e(text).replace("_", "_<wbr>")


def _failed_expectations(report: Mapping[str, Any]) -> str:
    failed = [f for f in _seq(report.get("failed_expectations")) if isinstance(f, Mapping)]
    if not failed:
        return _section(
            "expectations", "Failed expectations", "", '<p class="empty">No expectation failed.</p>'
        )
    rows = []
    for item in failed:
        kwargs = _mapping(item.get("kwargs"))
        args = " ".join(f"<code>{_e(k)}={_e(_kwarg(v))}</code>" for k, v in kwargs.items())
        column = item.get("column")
        rows.append(
            [
                (f"<code>{_breakable(str(item.get('type') or '—'))}</code>", "text"),
                (_e(column) if column not in (None, "") else "—", "text"),
                (args or "—", "text kw"),
                (_fmt_int(item.get("unexpected_count")), "num"),
                (_e(item.get("error") or ""), "text"),
            ]
        )
    headers = [
        ("expectation", False),
        ("column", False),
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
        "failed on this batch."
    )
    return _section("expectations", "Failed expectations", lead, body)


def _detectors(report: Mapping[str, Any]) -> str | None:
    detectors = [d for d in _seq(report.get("detectors")) if isinstance(d, Mapping)]
    if not detectors:
        return None
    figures = []
    for detector in detectors:
        svg, caption = _histogram_svg(detector)
        name = _e(detector.get("name") or "detector")
        figures.append(
            f'<figure class="histogram"><h3>{name}</h3>{svg}'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    lead = (
        "Each detector's scores for this batch (higher = more suspicious), against the "
        "scores it gives trusted calibration rows. Bars in orange are rows the gate "
        "quarantined; the dashed line is the score above which this detector alone "
        "would flag a row."
    )
    return _section(
        "detectors", "Detector scores", lead, f'<div class="figs">{"".join(figures)}</div>'
    )


def _projection(report: Mapping[str, Any]) -> str | None:
    svg, caption = _scatter_svg(_mapping(report.get("projection")))
    if not svg:
        return None
    lead = (
        "Where the batch's rows sit relative to the trusted data. Quarantined rows far "
        "from every trusted cloud are likely outliers; those inside a cloud were flagged "
        "for their label or by an expectation."
    )
    return _section(
        "projection",
        "Trusted vs batch (2-D projection)",
        lead,
        f"<figure>{svg}<figcaption>{caption}</figcaption></figure>",
    )


def _class_balance(report: Mapping[str, Any]) -> str | None:
    balance = _mapping(report.get("class_balance"))
    labels = [str(label) for label in _seq(balance.get("labels"))]
    if not labels:
        return None
    reference = _floats(balance.get("reference"))
    batch = _floats(balance.get("batch"))
    n = len(labels)
    reference = np.concatenate([reference[:n], np.full(max(n - len(reference), 0), np.nan)])
    batch = np.concatenate([batch[:n], np.full(max(n - len(batch), 0), np.nan)])
    svg = _balance_svg(labels, reference, batch)
    rows = []
    for label, r, b in zip(labels, reference, batch, strict=True):
        diff = b - r if math.isfinite(r) and math.isfinite(b) else math.nan
        rows.append(
            [
                (_e(label), "text"),
                (_fmt_pct(r) if math.isfinite(r) else "—", "num"),
                (_fmt_pct(b) if math.isfinite(b) else "—", "num"),
                (f"{100 * diff:+.1f} pt" if math.isfinite(diff) else "—", "num"),
            ]
        )
    table = _table(
        [("label", False), ("trusted", True), ("batch", True), ("change", True)], rows, scroll=True
    )
    lead = "Share of each label among trusted rows and among this batch's rows."
    body = f'<div class="two"><figure>{svg}</figure>{table}</div>'
    return _section("class-balance", "Class balance", lead, body)


def _drift(report: Mapping[str, Any]) -> str | None:
    drift = _mapping(report.get("drift"))
    features = []
    for item in _seq(drift.get("features")):
        if isinstance(item, Mapping):
            features.append(
                (
                    str(item.get("name", "")),
                    _number(item.get("statistic")),
                    _number(item.get("p_value")),
                )
            )
    label_tv, label_p = drift.get("label_tv"), drift.get("label_p")
    if not features and label_tv is None and label_p is None:
        return None
    cards = (
        '<div class="cards">'
        f'<div class="card"><div class="k">label TV distance</div>'
        f'<div class="v">{_e(_fmt_float(label_tv, 3))}</div>'
        '<div class="s">0 = same label mix, 1 = disjoint</div></div>'
        f'<div class="card"><div class="k">label shift p-value</div>'
        f'<div class="v">{_e(_fmt_p(label_p))}</div>'
        '<div class="s">small = mix differs from trusted</div></div>'
        "</div>"
    )
    body = [cards]
    if features:
        shown = features[:MAX_DRIFT_FEATURES]
        note = (
            f"The {len(shown)} most drifted of {len(features):,} features."
            if len(features) > len(shown)
            else "Features, most drifted first."
        )
        body.append(
            f'<figure style="margin-top:16px">{_drift_svg(shown)}'
            f"<figcaption>{_e(note)}</figcaption></figure>"
        )
    lead = (
        "How far this batch's distribution moved from the trusted data: the label mix as "
        "a total-variation distance, and each feature's two-sample statistic."
    )
    return _section("drift", "Drift", lead, "".join(body))


def _top_rows(report: Mapping[str, Any]) -> str | None:
    rows = [r for r in _seq(report.get("top_rows")) if isinstance(r, Mapping)]
    if not rows:
        return None
    shown = rows[:MAX_TOP_ROWS]
    columns: list[str] = []
    seen: set[str] = set()
    for row in shown:
        for column in _mapping(row.get("values")):
            if column not in seen:
                seen.add(column)
                columns.append(column)
    headers = [("#", True), ("row", True), ("suspicion", True), ("reason", False)]
    headers += [(str(c), False) for c in columns]
    body = []
    for rank, row in enumerate(shown, 1):
        values = _mapping(row.get("values"))
        cells = [
            (str(rank), "num"),
            (_fmt_int(row.get("pg_row")), "num"),
            (_e(_fmt_float(row.get("suspicion"), 3)), "num"),
            (
                "<br>".join(_e(part) for part in str(row.get("reason") or "—").split("; ")),
                "text reason",
            ),
        ]
        for column in columns:
            value = values.get(column)
            is_num = isinstance(value, int | float) and not isinstance(value, bool)
            cells.append(
                (_e(_fmt_value(value)) if column in values else "", "num" if is_num else "text")
            )
        body.append(cells)
    note = (
        f"The {len(shown)} most suspicious of {len(rows):,} listed rows, most suspicious first."
        if len(rows) > len(shown)
        else "Most suspicious first."
    )
    lead = (
        f"{_e(note)} <em>row</em> is the row's position in the batch file; scroll "
        "sideways for every column's value."
    )
    return _section(
        "top-rows", "Most suspicious rows", lead, _table(headers, body, scroll=True, cls="rows")
    )


# --------------------------------------------------------------------------- public API


def _join_or(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _check_report(report: Any, owner: str) -> Mapping[str, Any]:
    if not isinstance(report, Mapping):
        raise param_error("report", owner, "a dict", type(report).__name__)
    return report


def render_html(report: dict[str, Any]) -> str:
    """Render one batch's report as a self-contained HTML page.

    Parameters
    ----------
    report : dict
        The batch's report (schema in the module docstring); any key may be missing.

    Returns
    -------
    str
        A complete HTML document: inline CSS and SVG only, no script, no external
        reference; every value from ``report`` is escaped.
    """
    report = dict(_check_report(report, "render_html()"))
    batch_id = report.get("batch_id")
    title = (
        f"poisonguard report · {batch_id}" if batch_id not in (None, "") else ("poisonguard report")
    )
    sections = [_summary(report), _failed_expectations(report)]
    optional = [
        _detectors(report),
        _projection(report),
        _class_balance(report),
        _drift(report),
        _top_rows(report),
    ]
    sections += [s for s in optional if s is not None]
    missing = [
        name
        for name, s in zip(
            ("detector scores", "projection", "class balance", "drift", "suspicious rows"),
            optional,
            strict=True,
        )
        if s is None
    ]
    if missing:
        why = (
            " (the batch was rejected before it was scored)"
            if report.get("status") == "rejected"
            else ""
        )
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


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json`` can write strictly: non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``<batch_id>.json`` and ``<batch_id>.html`` into ``folder``, each atomically.

    The page is rendered before anything is written, so a report that cannot be
    rendered leaves no file behind.

    Parameters
    ----------
    report : dict
        The batch's report; its ``batch_id`` names the files.
    folder : Path
        Where the files go; created if missing.

    Returns
    -------
    (Path, Path)
        The JSON file and the HTML page.

    Raises
    ------
    ConfigError
        When ``batch_id`` is missing or is not a plain file name.
    """
    report = dict(_check_report(report, "write_report()"))
    batch_id = report.get("batch_id")
    if (
        not isinstance(batch_id, str)
        or batch_id in ("", ".", "..")
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
    data = json.dumps(_jsonable(report), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    folder = Path(folder)
    json_path, html_path = folder / f"{batch_id}.json", folder / f"{batch_id}.html"
    atomic_write_bytes(json_path, (data + "\n").encode("utf-8"))
    atomic_write_bytes(html_path, page.encode("utf-8"))
    return json_path, html_path


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


def _top_reasons(report: Mapping[str, Any], limit: int = 5) -> list[tuple[str, int]]:
    reasons: Counter[str] = Counter()
    for item in _seq(report.get("failed_expectations")):
        if isinstance(item, Mapping):
            what = str(item.get("type") or "expectation")
            if item.get("column") not in (None, ""):
                what += f" on {item.get('column')}"
            reasons[what] += _count(item.get("unexpected_count")) or 0
    for row in _seq(report.get("top_rows")):
        if isinstance(row, Mapping) and row.get("reason") not in (None, ""):
            reasons[str(row.get("reason"))] += 1
    return [(r, c) for r, c in reasons.most_common() if c > 0][:limit]


def markdown_summary(report: dict[str, Any], html_path: Path) -> str:
    """A short markdown summary of one batch, for a Prefect markdown artifact.

    Parameters
    ----------
    report : dict
        The batch's report.
    html_path : Path
        Where its HTML page was written.

    Returns
    -------
    str
        A heading line, a table of counts, the top reasons (failed expectations by
        unexpected rows, then the reasons of the most suspicious rows) and the page's path.
    """
    report = dict(_check_report(report, "markdown_summary()"))
    counts = _mapping(report.get("counts"))
    status = str(report.get("status") or "unknown")
    lines = [f"**Batch {_md(report.get('batch_id') or '(no id)')}**: {_md(status)}"]
    if report.get("source") not in (None, ""):
        lines[0] += f" (source {_md(report.get('source'))})"
    lines.append("")
    if report.get("reason") not in (None, ""):
        lines += [f"Rejected: {_md(report.get('reason'))}", ""]
    keys = ["rows_in", "clean", "quarantined", "rejected"]
    lines += [
        "| " + " | ".join(k.replace("_", " ") for k in keys) + " |",
        "|" + "---:|" * len(keys),
        "| " + " | ".join(_fmt_int(counts.get(k)) for k in keys) + " |",
        "",
    ]
    reasons = _top_reasons(report)
    if reasons:
        lines += ["| top reasons | rows |", "|---|---:|"]
        lines += [f"| {_md(r)} | {c:,} |" for r, c in reasons]
        lines.append("")
    lines.append(f"Report: {_md_code(Path(html_path))}")
    return "\n".join(lines) + "\n"
