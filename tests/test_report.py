"""The batch report: one typed BatchReport, built in one place, shown as a page, JSON and summary."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import poisonguard.report as report_module
from landed import empty as empty_landing
from poisonguard.config import load_config
from poisonguard.decision import STAGES, Calibration, decide, decide_batch
from poisonguard.detectors import Table
from poisonguard.detectors.drift import batch_drift
from poisonguard.errors import ConfigError, StoreError
from poisonguard.evidence import (
    MAX_CELL,
    MAX_POINTS,
    TOP_ROWS,
    BatchReport,
    ClassBalance,
    Drift,
    DriftFeature,
    Evidence,
    Projection,
    batch_evidence,
    build_report,
    detector_cut,
    detector_panel,
    dumps,
    loads,
    projection,
)
from poisonguard.pipeline import (
    commit_batch,
    detect_batch,
    entry_for,
    process_landing,
    report_paths,
    validate_batch,
)
from poisonguard.report import load_report, markdown_summary, render_html, write_report
from poisonguard.review import review
from poisonguard.store import Store, open_store
from poisonguard.store.staging import EVIDENCE

PROBE = "<script>window.__pg_pwned=1;document.title='pwned'</script>"
ATTR_PROBE = '"><img src=x onerror="window.__pg_pwned=2">'
#: A file, column or cell name with markup, both quotes and a line break.
NASTY = f'{PROBE}"\n{ATTR_PROBE}'

SECTION_HEADINGS = (
    "Summary",
    "Failed expectations",
    "Detector scores",
    "Trusted vs batch (2-D projection)",
    "Class balance",
    "Drift",
    "Held rows",
)


def _pts(xy: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(a), float(b)) for a, b in np.round(xy, 3).tolist())


def sample_report(
    rng: np.random.Generator,
    *,
    n_batch: int = 400,
    n_reference: int = 720,
    n_features: int = 16,
    batch_id: str = "batch-01-label-flips-3f9a1c2b7d4e",
    batch_hold: str | None = None,
) -> BatchReport:
    """A full, realistic report of a digits-like batch with label flips, far outliers and rows
    that broke an expectation, made by the one builder from synthetic parts."""
    n_broken = n_batch // 40
    n_scored = n_batch - n_broken
    labels = [str(d) for d in range(10)]
    centres = rng.normal(0, 6, size=(10, 2))
    ref_y = rng.integers(0, 10, n_reference)
    batch_y = rng.integers(0, 10, n_scored)
    reference = centres[ref_y] + rng.normal(0, 1.2, (n_reference, 2))
    batch = centres[batch_y] + rng.normal(0, 1.2, (n_scored, 2))

    n_flip, n_far = n_scored // 12, n_scored // 25
    order = rng.permutation(n_scored)
    flipped, far = order[:n_flip], order[n_flip : n_flip + n_far]
    batch[far] = rng.normal(0, 1, (len(far), 2)) * 2 + np.array([22.0, -18.0])

    knn = rng.beta(2, 9, n_scored)
    knn[flipped] = rng.uniform(0.6, 0.98, len(flipped))
    iso = rng.normal(0.42, 0.05, n_scored)
    iso[far] = rng.uniform(0.66, 0.78, len(far))
    maha = rng.chisquare(4, n_scored)
    maha[far] = rng.uniform(150, 400, len(far))  # a heavy tail: most rows sit near 0..15
    held = np.zeros(n_scored, dtype=bool)
    held[np.concatenate([flipped, far])] = True
    held[rng.choice(n_scored, 2, replace=False)] = True  # combined evidence, no single cut
    if batch_hold:
        held[:] = True

    panels = (
        detector_panel("knn_label", knn, held, Calibration.fit(rng.beta(2, 9, 500)), 1e-3),
        detector_panel(
            "isolation_forest", iso, held, Calibration.fit(rng.normal(0.42, 0.05, 500)), 1e-3
        ),
        detector_panel("mahalanobis", maha, held, Calibration.fit(rng.chisquare(4, 500)), 0.0),
    )
    ref_share = np.bincount(ref_y, minlength=10) / n_reference
    batch_share = np.bincount(batch_y, minlength=10) / n_scored
    columns = [f"px{i:02d}" for i in range(n_features)]
    statistics = np.sort(rng.uniform(0.02, 0.4, n_features))[::-1]
    names = [columns[i] for i in rng.permutation(n_features)]
    drift = Drift(
        label_tv=float(0.5 * np.abs(ref_share - batch_share).sum()),
        label_p=0.031,
        features=tuple(
            DriftFeature(name, float(s), float(10 ** (-30 * s)), float(s / 2), bool(s > 0.3))
            for name, s in list(zip(names, statistics, strict=True))[:15]
        ),
        n_features=n_features,
        n_drifted=int((statistics > 0.3).sum()),
    )
    evidence = Evidence(
        detectors=panels,
        projection=Projection(
            reference=_pts(reference),
            clean=_pts(batch[~held]),
            held=_pts(batch[held]),
            n_reference=n_reference,
            n_clean=int((~held).sum()),
            n_held=int(held.sum()),
        ),
        class_balance=ClassBalance(
            tuple(labels), tuple(ref_share.round(4)), tuple(batch_share.round(4))
        ),
        drift=drift,
    )

    rows = pd.DataFrame(rng.integers(0, 17, (n_batch, n_features)), columns=columns)
    rows["digit"] = rng.integers(0, 10, n_batch)
    rows["pg_row"] = np.arange(n_batch)
    scored_rows = np.arange(n_broken, n_batch)
    stage = np.full(n_batch, "", dtype=object)
    reason = np.full(n_batch, "", dtype=object)
    suspicion = np.full(n_batch, np.nan)
    stage[:n_broken] = "expectations"
    reason[:n_broken] = "failed expectation: px03 = 19 outside [0, 16]"
    at = scored_rows[held]
    stage[at] = "batch_hold" if batch_hold else "detectors"
    reason[at] = np.where(
        np.isin(np.flatnonzero(held), flipped),
        "label disagrees with its neighbours",
        "far from trusted data",
    )
    suspicion[scored_rows] = knn * 10
    rows["pg_stage"], rows["pg_reason"], rows["pg_suspicion"] = stage, reason, suspicion
    is_held = stage != ""
    return build_report(
        batch_id=batch_id,
        source="batch-01-label-flips.parquet",
        sha256="3f9a1c2b7d4e" + "0" * 52,
        status="committed",
        created_at="2025-11-22T15:04:05+00:00",
        rows_in=n_batch,
        clean=rows[~is_held],
        quarantine=rows[is_held],
        rejected=0,
        held_by={
            "expectations": n_broken,
            "detectors": 0 if batch_hold else int(held.sum()),
            "batch_hold": int(held.sum()) if batch_hold else 0,
        },
        batch_hold=batch_hold,
        fdr=0.05,
        threshold_p=0.00213,
        failed_expectations=[
            {
                "type": "expect_column_values_to_be_between",
                "column": "px03",
                "kwargs": {"column": "px03", "min_value": 0, "max_value": 16},
                "level": "row",
                "unexpected_count": n_broken,
                "error": None,
            },
            {
                "type": "expect_column_values_to_not_be_null",
                "column": "digit",
                "kwargs": {"column": "digit"},
                "level": "row",
                "unexpected_count": 1,
                "error": "",
            },
        ],
        evidence=evidence,
    )


def hostile_report(rng: np.random.Generator) -> BatchReport:
    """A full report whose every text from the data carries markup, quotes and line breaks:
    the file name, column names (expectation, drift, row values), cells, labels and reasons."""
    report = sample_report(rng, batch_id=PROBE, batch_hold=NASTY)
    evidence = report.evidence
    assert evidence is not None and evidence.class_balance and evidence.drift
    labels = list(evidence.class_balance.labels)
    labels[3] = NASTY
    first, *rest = report.top_rows
    return dataclasses.replace(
        report,
        source=NASTY,
        sha256=ATTR_PROBE,
        created_at=PROBE,
        status=PROBE,
        reason=NASTY,
        failed_expectations=(
            dataclasses.replace(
                report.failed_expectations[0],
                type=PROBE,
                column=NASTY,
                kwargs={PROBE: ATTR_PROBE},
                error=NASTY,
            ),
            *report.failed_expectations[1:],
        ),
        evidence=dataclasses.replace(
            evidence,
            detectors=(
                dataclasses.replace(evidence.detectors[0], name=NASTY),
                *evidence.detectors[1:],
            ),
            class_balance=dataclasses.replace(evidence.class_balance, labels=tuple(labels)),
            drift=dataclasses.replace(
                evidence.drift,
                features=(
                    dataclasses.replace(evidence.drift.features[0], name=NASTY),
                    *evidence.drift.features[1:],
                ),
            ),
        ),
        top_rows=(
            dataclasses.replace(
                first, reason=NASTY, values={**first.values, NASTY: NASTY, "px00": NASTY}
            ),
            *rest,
        ),
    )


class _Tags(HTMLParser):
    """Every start tag with its attributes, and every text node."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("h1", "h2", "h3"):
            self._in = tag
            self.headings.append((tag, ""))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in:
            tag, text = self.headings[-1]
            self.headings[-1] = (tag, text + data)


def parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser


def text_of(page: str) -> str:
    """The page's text as a reader sees it (tags gone, entities decoded)."""
    return "".join(parse(page).text)


def page_counts(page: str) -> dict[str, int | None]:
    """Every count the page shows in a card, by its ``data-count`` key."""
    return {
        key: None if value == "—" else int(value.replace(",", ""))
        for key, value in re.findall(r'data-count="([\w-]+)">([\d,—]+)<', page)
    }


def rejected_report(
    reason: str, rows_in: int | None, failed: list[dict[str, Any]] | None = None
) -> BatchReport:
    """A batch rejected whole, before any row was scored."""
    return build_report(
        batch_id="batch-05-wrong-schema-0a1b2c3d4e5f",
        source="batch-05-wrong-schema.csv",
        sha256="0a1b" * 16,
        status="rejected",
        created_at="2025-11-22T15:04:05+00:00",
        rows_in=rows_in,
        clean=None,
        quarantine=None,
        rejected=rows_in or 0,
        reason=reason,
        failed_expectations=failed or [],
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20251122)


@pytest.fixture
def full(rng) -> BatchReport:
    return sample_report(rng)


# --------------------------------------------------------------------------- the page


def test_a_full_report_shows_every_section(full):
    """Summary, expectations, one histogram per detector, scatter, balance, drift, held rows."""
    page = render_html(full)
    h2 = [text for tag, text in parse(page).headings if tag == "h2"]
    assert h2 == list(SECTION_HEADINGS)
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>poisonguard report · batch-01-label-flips-3f9a1c2b7d4e</title>" in page
    assert 'class="badge committed"' in page
    assert full.evidence is not None
    assert page.count('<figure class="histogram">') == len(full.evidence.detectors)
    assert page.count('class="points ') == 3
    assert page.count('class="share share-batch"') == 10
    assert page.count('class="drift"') == 15
    assert "expect_column_values_to_be_between" in text_of(page)
    assert "label disagrees with its neighbours" in page
    assert "Not available" not in page


def test_the_summary_shows_counts_that_add_up_and_the_rows_held_per_stage(full):
    """Rows in = clean + quarantined + rejected, and the four stages, as the report holds them."""
    counts = full.counts
    page = render_html(full)
    shown = page_counts(page)
    assert shown == {
        "rows_in": counts.rows_in,
        "clean": counts.clean,
        "quarantined": counts.quarantined,
        "rejected": counts.rejected,
        **{f"held-{s}": counts.held_by[s] for s in STAGES},
    }
    assert sum(shown[f"held-{s}"] or 0 for s in STAGES) == shown["quarantined"]
    assert (
        f"{counts.rows_in} rows in = {counts.clean} clean + {counts.quarantined} quarantined "
        "+ 0 rejected." in text_of(page)
    )
    assert "Benjamini–Hochberg at false-discovery rate 0.050 (rows with combined p ≤ 0.002" in page
    no_cut = render_html(dataclasses.replace(full, threshold_p=0.0))
    assert "no row's combined p-value passed the cut" in text_of(no_cut)
    assert "Held for review" not in page


def test_a_batch_hold_shows_its_reason_and_its_rows(rng):
    """A batch held whole names why on the page and counts its rows under "batch hold"."""
    held = sample_report(rng, batch_hold="batch held for review: its label shares are 0.90")
    page = render_html(held)
    assert held.counts.held_by["batch_hold"] > 0
    assert page_counts(page)["held-batch_hold"] == held.counts.held_by["batch_hold"]
    assert re.search(
        r'<div class="callout hold" id="batch-hold"><strong>Held for review:</strong> '
        r"batch held for review: its label shares are 0\.90</div>",
        page,
    )


def test_a_rejected_report_with_only_counts_and_reason_renders():
    """A batch rejected whole shows its badge, reason, counts and failed expectations."""
    failed = {
        "type": "expect_column_to_exist",
        "column": "px07",
        "kwargs": {"column": "px07"},
        "level": "schema",
        "unexpected_count": None,
        "error": "column not found",
    }
    report = rejected_report("column 'px07' is missing", 450, [failed])
    page = render_html(report)
    assert 'class="badge rejected"' in page
    assert "Rejected:</strong> column &#x27;px07&#x27; is missing" in page
    assert page_counts(page)["rejected"] == 450
    assert "450 rows in = 0 clean + 0 quarantined + 450 rejected." in text_of(page)
    assert "expect_column_to_exist" in text_of(page)
    assert "rejected before it was scored" in page
    assert "<svg" not in page


def test_a_file_that_could_not_be_read_shows_its_rows_as_unknown():
    report = rejected_report("b.parquet: not a readable Parquet file", None)
    page = render_html(report)
    assert page_counts(page)["rows_in"] is None
    assert "The file could not be read, so its rows are unknown." in page
    assert "| — | 0 | 0 | 0 |" in markdown_summary(report, Path("b.html"))


def test_a_long_list_of_failed_expectations_folds_away_without_script():
    """The first 15 show; the rest sit in a native <details>; long list arguments are cut."""
    columns = [f"px{i:02d}" for i in range(64)]
    failed: list[dict[str, Any]] = [
        {"type": "expect_column_values_to_be_between", "column": c, "unexpected_count": i}
        for i, c in enumerate(columns)
    ]
    failed[0] = {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": columns}}
    page = render_html(rejected_report("columns do not match", 3, failed))
    shown, folded = page.split("<details>")
    assert shown.count("<tr>") == 1 + 15 and folded.count("<tr>") == 1 + 49
    assert "Show the other 49 failed expectations" in page
    assert "64 expectations of the suite failed" in page
    assert '"px05", … 58 more]' in page.replace("&quot;", '"')
    assert "px63" in folded and "px63" not in shown


def test_a_reason_of_several_clauses_shows_one_clause_per_line(full):
    first = dataclasses.replace(
        full.top_rows[0], reason="px00 = 9 outside [0, 16]; px01 = -3 outside [0, 16]"
    )
    page = render_html(dataclasses.replace(full, top_rows=(first, *full.top_rows[1:])))
    assert "px00 = 9 outside [0, 16]<br>px01 = -3 outside [0, 16]" in page


def test_held_rows_list_rule_held_rows_first_then_the_most_suspicious(full):
    """At most TOP_ROWS rows: those held by a rule (no suspicion) first, then by suspicion."""
    rows = full.top_rows
    assert len(rows) == TOP_ROWS < full.counts.quarantined
    ruled = [r for r in rows if r.suspicion is None]
    assert rows[: len(ruled)] == tuple(ruled) and {r.stage for r in ruled} == {"expectations"}
    scored = [r.suspicion for r in rows[len(ruled) :]]
    assert scored == sorted(scored, reverse=True)
    assert f"The first {TOP_ROWS} of {full.counts.quarantined:,} held rows" in render_html(full)


def test_a_report_that_is_not_a_batch_report_is_refused():
    with pytest.raises(ConfigError, match=r"The 'report' parameter of render_html\(\) must be"):
        render_html({"batch_id": "a dict"})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- safety


def test_every_value_from_the_data_is_escaped(rng):
    """Markup, quotes and line breaks in the file name, columns, cells, labels and reasons
    show as text: no script, no new tag, no event attribute."""
    page = render_html(hostile_report(rng))
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "img", "iframe", "object", "embed"), tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
    text = "".join(parsed.text)
    # The title, h1, badge, created, reason, hold, expectation, detector, label, feature, row.
    assert text.count(PROBE) >= 14
    assert text.count(NASTY) >= 8  # quotes and the line break kept, as text
    assert "window.__pg_pwned=2" in text  # the attribute probe, shown as text
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    assert title and "&lt;script&gt;" in title.group(1)


def test_the_page_references_nothing_outside_itself(full):
    """No src, href or url() points anywhere; a CSP forbids scripts and remote loads."""
    page = render_html(full)
    assert "http://" not in page and "https://" not in page
    for value in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, re.I):
        assert "//" not in value and not value.startswith(("http", "ftp")), value
        assert value.startswith("data:"), value
    for value in re.findall(r"url\(([^)]*)\)", page, re.I):
        raise AssertionError(f"url({value}) in the page")
    assert "@import" not in page
    assert "default-src 'none'" in page
    assert "<script" not in page.lower()


def held_by_detectors(columns: dict[str, list[Any]], suspicion: list[float]) -> BatchReport:
    """A committed batch whose every row the detectors held, with these data columns."""
    rows = pd.DataFrame(columns)
    n = len(rows)
    rows["pg_row"], rows["pg_stage"] = np.arange(n), "detectors"
    rows["pg_reason"], rows["pg_suspicion"] = "y" * 10_000, suspicion
    return build_report(
        batch_id="b",
        source="b.csv",
        sha256="0" * 64,
        status="committed",
        created_at="",
        rows_in=n,
        clean=None,
        quarantine=rows,
        rejected=0,
        held_by={"detectors": n},
    )


def test_long_cells_and_reasons_are_cut_short():
    """A cell keeps at most MAX_CELL characters, so a huge text cannot swell the report."""
    report = held_by_detectors({"text": ["x" * 10_000]}, [3.0])
    (row,) = report.top_rows
    assert len(str(row.values["text"])) == MAX_CELL and str(row.values["text"]).endswith("…")
    assert len(row.reason) < 1000
    assert len(dumps(report)) < 3000


def test_held_row_cells_keep_their_columns_types():
    """An id stays an int beside float features (not 7.0); a missing value is null."""
    report = held_by_detectors({"row_id": [7, 8], "x": [0.5, float("nan")]}, [2.0, 1.0])
    assert [r.values for r in report.top_rows] == [
        {"row_id": 7, "x": 0.5},
        {"row_id": 8, "x": None},
    ]
    assert type(report.top_rows[0].values["row_id"]) is int


# --------------------------------------------------------------------------- plots


def _rects(svg: str, cls: str) -> list[dict[str, str]]:
    return [
        dict(re.findall(r'([\w-]+)="([^"]*)"', m))
        for m in re.findall(rf'<rect class="{cls}[^"]*"[^>]*>', svg)
    ]


def _figures(page: str) -> list[str]:
    return re.findall(r'<figure class="histogram">.*?</figure>', page, re.S)


def test_a_detector_panel_counts_every_score_once_in_its_bin():
    """Kept, held and calibration scores are counted over shared bins, above the last edge, or
    as non-finite: each group's counts add up to its rows."""
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(0, 1, 500), rng.uniform(400, 900, 12), [np.nan, np.inf]])
    held = np.zeros(scores.size, dtype=bool)
    held[rng.choice(scores.size, 60, replace=False)] = True
    calibration = Calibration.fit(rng.normal(0, 1, 300))
    panel = detector_panel("d", scores, held, calibration, 0.0)  # no cut: the tail overflows
    edges = np.asarray(panel.edges)
    for group, values in ((panel.clean, scores[~held]), (panel.held, scores[held])):
        finite = values[np.isfinite(values)]
        assert group.total == values.size
        assert group.nonfinite == values.size - finite.size
        assert group.over == int((finite > edges[-1]).sum())
        assert list(group.counts) == np.histogram(finite[finite <= edges[-1]], edges)[0].tolist()
    assert panel.calibration.total == calibration.n
    assert panel.clean.over + panel.held.over == 12  # the far tail shares the overflow bar


def test_the_drawn_cut_is_the_decisions_own():
    """A row scores at or above a panel's cut exactly when its p-value passes the decision's
    cut for that detector: the line is the decision's, not recomputed by another rule."""
    rng = np.random.default_rng(5)
    n = 2000
    scores = {"a": rng.normal(0, 1, n), "b": rng.exponential(1, n)}
    scores["a"][:40] += 6
    scores["b"][40:70] += 12
    calibrations = {k: Calibration.fit(rng.normal(0, 1, 400)) for k in ("a",)}
    calibrations["b"] = Calibration.fit(rng.exponential(1, 400))
    found = decide(scores, calibrations, fdr=0.05)
    decision = decide_batch(n, scored=np.arange(n), detectors=found, scores=scores)
    table = Table(rng.normal(size=(n, 3)), rng.normal(size=(n, 3)), None, ("x", "y", "z"))
    evidence = batch_evidence(table, table, calibrations, decision)
    for j, panel in enumerate(evidence.detectors):
        assert panel.p_cut == found.p_cuts[j]
        assert panel.cut == detector_cut(calibrations[panel.name], scores[panel.name], panel.p_cut)
        assert panel.cut is not None
        flagged = found.p_values[:, j] <= found.p_cuts[j]
        assert flagged.any()
        assert np.array_equal(scores[panel.name] >= panel.cut, flagged)
        assert panel.held.total == int(found.quarantined.sum())


def test_histogram_bars_are_the_panels_bins(full):
    """Each bar's count and range are the report's own bin; bar heights share one scale."""
    page = render_html(full)
    figures = _figures(page)
    assert full.evidence is not None and len(figures) == len(full.evidence.detectors)
    for panel, svg in zip(full.evidence.detectors, figures, strict=True):
        bars = _rects(svg, "bar ")
        for kind, group in (("clean", panel.clean), ("held", panel.held)):
            chosen = [b for b in bars if f"bar-{kind}" in b["class"]]
            for b in chosen:
                lo, hi = float(b["data-lo"]), float(b["data-hi"])
                if math.isinf(hi):
                    assert int(b["data-count"]) == group.over
                else:
                    i = panel.edges.index(lo)
                    assert panel.edges[i + 1] == hi
                    assert int(b["data-count"]) == group.counts[i]
            assert sum(int(b["data-count"]) for b in chosen) == group.total - group.nonfinite
        per_row = sum(float(b["height"]) for b in bars) / sum(int(b["data-count"]) for b in bars)
        for b in bars:
            assert float(b["height"]) == pytest.approx(int(b["data-count"]) * per_row, abs=0.15)


def test_a_heavy_tail_shares_one_overflow_bar(full):
    """Far outliers do not squash the histogram: past the core range they share the last bar."""
    assert full.evidence is not None
    maha = _figures(render_html(full))[2]
    overflow = [b for b in _rects(maha, "bar ") if b["data-hi"] == "inf"]
    assert sum(int(b["data-count"]) for b in overflow) >= (400 - 400 // 40) // 25
    assert re.search(r"scores beyond [\d.]+ share the last bar \(\d+ batch rows, ", maha)


def test_the_cut_and_the_calibration_are_drawn(full):
    """A detector with a cut shows a dashed line at it; the calibration is an outline."""
    assert full.evidence is not None
    panels = full.evidence.detectors
    figures = _figures(render_html(full))
    assert panels[0].cut is not None
    assert f'data-cut="{panels[0].cut!r}"' in figures[0]
    assert re.search(r">cut [\d.]+</text>", figures[0])
    assert panels[2].cut is None and 'class="cut"' not in figures[2]
    assert "no single-detector cut" in figures[2]
    assert all('class="calibration"' in f for f in figures)


def test_the_projection_keeps_a_bounded_sample_of_each_group():
    """At most MAX_POINTS points per group (trusted, kept, held), the same ones every time;
    the page says how many of how many it shows."""
    rng = np.random.default_rng(1)
    ref = Table(rng.normal(size=(10_000, 4)), np.zeros((10_000, 4)), None, tuple("abcd"))
    batch = Table(rng.normal(size=(8000, 4)), np.zeros((8000, 4)), None, tuple("abcd"))
    held = np.zeros(8000, dtype=bool)
    held[:120] = True
    first, second = projection(ref, batch, held), projection(ref, batch, held)
    assert first is not None and first == second
    assert (len(first.reference), first.n_reference) == (MAX_POINTS, 10_000)
    assert (len(first.clean), first.n_clean) == (MAX_POINTS, 7880)
    assert (len(first.held), first.n_held) == (120, 120)
    report = sample_report(rng)
    assert report.evidence is not None
    page = render_html(
        dataclasses.replace(report, evidence=dataclasses.replace(report.evidence, projection=first))
    )
    groups = re.findall(r'<path class="points ([\w-]+)" data-points="(\d+)" data-total="(\d+)"'
                        r' d="([^"]*)"', page)  # fmt: skip
    assert [(g, int(s), int(t)) for g, s, t, _ in groups] == [
        ("trusted", MAX_POINTS, 10_000),
        ("batch-clean", MAX_POINTS, 7880),
        ("batch-held", 120, 120),
    ]
    for _, shown, _, d in groups:
        assert d.count("M") == int(shown)
    assert "3,000 of 10,000 trusted rows" in page


def test_class_balance_bars_match_the_shares(full):
    """Each label has a trusted and a batch bar whose heights are proportional to the share."""
    assert full.evidence is not None and full.evidence.class_balance is not None
    page = render_html(full)
    for who in ("trusted", "batch"):
        bars = _rects(page, f"share share-{who}")
        expected = getattr(full.evidence.class_balance, "reference" if who == "trusted" else who)
        shares = [float(b["data-share"]) for b in bars]
        assert shares == pytest.approx(list(expected))
        per_share = sum(float(b["height"]) for b in bars) / sum(shares)
        for b, s in zip(bars, shares, strict=True):
            assert float(b["height"]) == pytest.approx(s * per_share, abs=0.15)


def test_drift_shows_the_label_distance_and_the_most_drifted_features(rng):
    """The label TV distance is a figure; the features the report keeps are plotted in order,
    out of every feature compared."""
    report = sample_report(rng, n_features=40)
    assert report.evidence is not None and report.evidence.drift is not None
    drift = report.evidence.drift
    page = render_html(report)
    stats = [float(b["data-statistic"]) for b in _rects(page, "drift")]
    assert stats == pytest.approx([f.statistic for f in drift.features])
    assert f"{drift.label_tv:.3g}"[:4] in page
    assert "The 15 most drifted of 40 features." in page


def test_axes_have_ticks_and_labels(full):
    """Every plot has labelled axes, and the legend names what each colour means."""
    page = render_html(full)
    for label in ("rows", "knn_label score", "PC 1", "PC 2", "share of rows", "label"):
        assert f">{label}</text>" in page, label
    for entry in ("batch, kept", "batch, held", "trusted calibration", "trusted"):
        assert f">{entry}</text>" in page, entry


_edge = st.floats() | st.sampled_from([1e308, -1e308, 5e-324, 0.0, 1e150, -1e-300, 7.0])


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(_edge, max_size=6),
    calibration=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6),
    p_cut=st.floats(0, 1),
    points=st.lists(st.tuples(_edge, _edge), max_size=5),
    shares=st.lists(_edge, min_size=2, max_size=2),
    statistics=st.lists(_edge, max_size=3),
)
def test_plots_cope_with_extreme_numbers(scores, calibration, p_cut, points, shares, statistics):
    """Huge, tiny, equal, infinite and NaN numbers neither break nor hang a plot, and every
    score is still counted once."""
    values = np.asarray(scores, dtype=np.float64)
    held = np.arange(values.size) % 2 == 0
    panel = detector_panel("d", values, held, Calibration.fit(np.asarray(calibration)), p_cut)
    assert panel.clean.total + panel.held.total == values.size
    report = sample_report(np.random.default_rng(0))
    assert report.evidence is not None
    evidence = Evidence(
        detectors=(panel,),
        projection=Projection(tuple(points), tuple(points[::-1]), (), len(points), len(points), 0),
        class_balance=ClassBalance(("a", "b"), tuple(shares), tuple(shares[::-1])),
        drift=Drift(
            None,
            None,
            tuple(DriftFeature("f", x, None, None, False) for x in statistics),
            len(statistics),
            0,
        ),
    )
    page = render_html(dataclasses.replace(report, evidence=evidence))
    assert page.rstrip().endswith("</html>")
    assert not re.search(r"(?i)\bnan\b", page.split("<body>")[1])  # no coordinate is NaN


# --------------------------------------------------------------------------- files


def test_write_report_writes_json_and_html_atomically(full, tmp_path, monkeypatch):
    """Both files go through the store's atomic writer; the JSON reads back to the same report."""
    calls: list[Path] = []
    real = report_module.atomic_write_bytes

    def spy(path: Path, data: bytes) -> None:
        calls.append(path)
        real(path, data)

    monkeypatch.setattr(report_module, "atomic_write_bytes", spy)
    json_path, html_path = write_report(full, tmp_path / "reports")
    folder = tmp_path / "reports"
    assert json_path == folder / f"{full.batch_id}.json"
    assert html_path == folder / f"{full.batch_id}.html"
    assert calls == [json_path, html_path]
    assert sorted(p.name for p in folder.iterdir()) == sorted([json_path.name, html_path.name])
    assert load_report(json_path) == full
    assert html_path.read_text(encoding="utf-8") == render_html(full)


def test_the_json_round_trip_keeps_a_hostile_report_whole(rng, tmp_path):
    """Markup, quotes and line breaks survive the JSON unchanged; only the page escapes them."""
    report = dataclasses.replace(hostile_report(rng), batch_id="b")
    json_path, _ = write_report(report, tmp_path)
    assert load_report(json_path) == report


def test_write_report_writes_nothing_when_the_page_cannot_render(full, tmp_path, monkeypatch):
    """The page is rendered before either file is written."""

    def broken(report: BatchReport) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(report_module, "render_html", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_report(full, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_report_replaces_an_older_report_whole(full, tmp_path):
    """Writing a batch's report again leaves exactly the new files."""
    write_report(dataclasses.replace(full, status="rejected"), tmp_path)
    json_path, html_path = write_report(full, tmp_path)
    assert 'class="badge committed"' in html_path.read_text(encoding="utf-8")
    assert load_report(json_path).status == "committed"
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("batch_id", ["", ".", "..", "../escape", "a/b", "a\\b", PROBE])
def test_write_report_refuses_a_batch_id_that_is_not_a_file_name(full, tmp_path, batch_id):
    with pytest.raises(ConfigError, match=r"The 'batch_id' parameter of write_report\(\)"):
        write_report(dataclasses.replace(full, batch_id=batch_id), tmp_path)
    assert list(tmp_path.iterdir()) == []


def _edit(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        ("counts.clean", "12", r"BatchReport\.counts\.clean must be int, not str"),
        ("counts.held_by.detectors", 1.5, r"held_by\['detectors'\] must be int"),
        ("counts.quarantined", 3, r"do not add up to 3 quarantined"),
        ("status", KeyError, r"BatchReport has missing or unknown fields: status"),
        ("evidence.extra", 1, r"BatchReport\.evidence has missing or unknown fields: extra"),
        ("evidence.detectors.0.clean.counts", [1, 2], r"one count per bin"),
        ("evidence.detectors.0.edges", [1.0] * 31, r"bin edges must increase"),
        ("evidence.projection.reference", [[1.0]], r"reference\[0\] must have 2 items"),
        ("top_rows", {}, r"BatchReport\.top_rows must be a list, not dict"),
    ],
)
def test_load_report_refuses_a_file_that_is_not_a_report(full, tmp_path, path, value, why):
    """A field missing, unknown, of the wrong type, or counts that do not add up: StoreError
    naming the file and the field, never a half-read report."""
    data = _edit(json.loads(dumps(full)), path, value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(StoreError, match=why) as caught:
        load_report(bad)
    assert str(bad) in str(caught.value)


def test_load_report_refuses_text_that_is_not_strict_json(tmp_path):
    for text in ("{", '{"counts": NaN}'):
        (tmp_path / "r.json").write_text(text)
        with pytest.raises(StoreError, match=r"r\.json: not JSON"):
            load_report(tmp_path / "r.json")


def test_evidence_round_trips_through_its_json(full):
    assert full.evidence is not None
    assert loads(Evidence, dumps(full.evidence)) == full.evidence


# --------------------------------------------------------------------------- size


def test_evidence_and_report_stay_small_for_a_200k_row_batch():
    """A 200,000-row batch (6 detectors, 8 features, 5 classes, about 12,000 held rows with
    5,000-character cells) gives an evidence.json under 200 kB, a report JSON under 300 kB and
    a page under 400 kB, bounds that hold whatever the number of rows: histogram counts instead
    of per-row scores, at most MAX_POINTS projection points per group, at most TOP_ROWS rows
    with cut cells. Each detector's counts add up to the batch's scored rows."""
    rng = np.random.default_rng(9)
    n, n_ref, k = 200_000, 2000, 8
    ref_y, y = rng.integers(0, 5, n_ref), rng.integers(0, 5, n)
    reference = Table(rng.normal(size=(n_ref, k)), rng.normal(size=(n_ref, k)), ref_y, tuple("abcdefgh"), tuple(range(5)))  # fmt: skip
    names = ("knn_label", "model_label", "interpolation", "knn_distance", "duplicates", "backdoor")
    calibrations = {d: Calibration.fit(rng.gamma(2, 1, 1500)) for d in names}
    failed = {
        int(r): "failed expectation: a is missing" for r in rng.choice(n, 3000, replace=False)
    }
    scored = np.setdiff1d(np.arange(n), list(failed))
    scores = {d: rng.gamma(2, 1, scored.size) for d in names}
    for d in names:
        scores[d][rng.choice(scored.size, 1500, replace=False)] += 40
        scores[d][:7] = np.nan
    found = decide(scores, calibrations, fdr=0.05)
    decision = decide_batch(n, failed=failed, scored=scored, detectors=found, scores=scores)
    batch = Table(rng.normal(size=(scored.size, k)), rng.normal(size=(scored.size, k)), y[scored], tuple("abcdefgh"), tuple(range(5)))  # fmt: skip
    evidence = batch_evidence(
        reference, batch, calibrations, decision, batch_drift(reference, batch)
    )
    staged = dumps(evidence).encode()
    assert len(staged) < 200_000

    held_scored = int(decision.quarantined[scored].sum())
    assert held_scored > 8000
    for panel in evidence.detectors:
        assert panel.clean.total + panel.held.total == scored.size
        assert panel.held.total == held_scored
        assert panel.clean.nonfinite + panel.held.nonfinite == 7
        assert panel.calibration.total == 1500

    frame = pd.DataFrame(rng.normal(size=(n, k)), columns=list("abcdefgh"))
    frame["note"] = "z" * 5000
    frame["pg_row"] = np.arange(n)
    frame["pg_stage"], frame["pg_reason"] = decision.stage, decision.reason
    frame["pg_suspicion"] = decision.suspicion
    held = decision.quarantined
    report = build_report(
        batch_id="big",
        source="big.parquet",
        sha256="0" * 64,
        status="committed",
        created_at="",
        rows_in=n,
        clean=frame[~held],
        quarantine=frame[held],
        rejected=0,
        held_by=decision.held_by(),
        fdr=0.05,
        threshold_p=found.threshold,
        evidence=evidence,
    )
    assert report.counts.quarantined == 3000 + held_scored
    assert len(dumps(report).encode()) < 300_000
    assert len(render_html(report).encode()) < 400_000


# --------------------------------------------------------------------------- markdown


def test_markdown_summary_holds_the_counts_the_stages_the_top_reasons_and_the_path(full, tmp_path):
    path = tmp_path / "reports" / "batch_one.html"
    md = markdown_summary(full, path)
    c = full.counts
    assert "| rows in | clean | quarantined | rejected |" in md
    assert f"| {c.rows_in} | {c.clean} | {c.quarantined} | 0 |" in md
    assert "| quarantined by | expectations | blocklist | detectors | batch hold |" in md
    held = " | ".join(str(c.held_by[s]) for s in STAGES)
    assert f"| rows | {held} |" in md
    assert "| top reasons | rows |" in md
    assert "label disagrees with its neighbours" in md or "far from trusted data" in md
    assert f"`{path}`" in md
    assert "Held for review" not in md
    assert md.count("\n") < 30


def test_markdown_summary_names_a_batch_hold(rng, tmp_path):
    report = sample_report(rng, batch_hold="batch held for review: 9 of 16 features drifted")
    md = markdown_summary(report, tmp_path / "r.html")
    assert "Held for review: batch held for review: 9 of 16 features drifted" in md


def test_markdown_summary_keeps_hostile_text_from_breaking_the_table(rng, tmp_path):
    """Pipes, markup, line breaks and backticks in the data cannot break the table or inject
    HTML."""
    report = dataclasses.replace(
        hostile_report(rng), batch_id="b|1", reason="missing column <b>x</b> | y\nnext"
    )
    path = tmp_path / "odd `name`.html"
    md = markdown_summary(report, path)
    assert "Rejected: missing column &lt;b&gt;x&lt;/b&gt; \\| y next" in md
    assert "**Batch b\\|1**:" in md
    assert f"``{path}``" in md
    assert "<b>" not in md and "<script" not in md
    cells = [len(re.findall(r"(?<!\\)\|", line)) for line in md.splitlines() if line[:1] == "|"]
    assert set(cells) == {3, 5, 6}  # reasons, counts, stages: no cell adds a column


# --------------------------------------------------------------------------- the pipeline


def _assert_report_matches_the_ledger(store: Store, record: Any) -> BatchReport:
    """The page's and the summary's counts are the ledger's, and the stages add up."""
    html_path, json_path = report_paths(store, record.batch_id)
    page = html_path.read_text(encoding="utf-8")
    shown = page_counts(page)
    assert (shown["rows_in"], shown["clean"], shown["quarantined"], shown["rejected"]) == (
        record.rows_in,
        record.rows_clean,
        record.rows_quarantined,
        record.rows_rejected,
    )
    assert sum(shown[f"held-{s}"] or 0 for s in STAGES) == record.rows_quarantined
    report = load_report(json_path)
    assert render_html(report) == page
    md = markdown_summary(report, html_path)
    assert (
        f"| {record.rows_in} | {record.rows_clean} | {record.rows_quarantined} "
        f"| {record.rows_rejected} |" in md
    )
    assert f"| rows | {' | '.join(str(shown[f'held-{s}']) for s in STAGES)} |" in md
    return report


def test_every_count_on_the_demos_pages_equals_the_ledger(demo_run):
    """For each demo batch (committed or rejected), the page shows the ledger's rows in, clean,
    quarantined and rejected, and the quarantined rows per stage add up to its quarantine."""
    root, records = demo_run
    store = open_store(load_config(root / "poisonguard.toml"))
    assert len(records) == 5
    by_stage = {}
    for record in records:
        report = _assert_report_matches_the_ledger(store, record)
        by_stage[record.source] = report.counts.held_by
        assert (report.evidence is None) == (record.status == "rejected")
    assert by_stage["export/batch-03-broken-rows.csv"]["expectations"] > 0
    assert by_stage["labelling/batch-01-label-flips.parquet"]["detectors"] > 0


def test_a_row_rejected_before_is_counted_under_the_blocklist(demo_run, tmp_path):
    """A reviewer rejects a batch's held rows; landed again in a new batch, they show on its
    page as held by the blocklist, and the stages still add up to the ledger's quarantine."""
    root, records = demo_run
    copy = tmp_path / "demo"
    shutil.copytree(root, copy)
    config = load_config(copy / "poisonguard.toml")
    store = open_store(config)
    flips = next(r for r in records if r.source == "labelling/batch-01-label-flips.parquet")
    held = store.quarantine_frame(flips.batch_id)
    review(store, flips.batch_id, "reject", by="ana", note="mislabelled vendor feed")
    # Every other rejected row (the batch was held whole: all of it is the file that landed).
    again = held.iloc[::2]
    data = again[[c for c in held.columns if not str(c).startswith("pg_")]]
    data.to_parquet(config.landing / "batch-06-again.parquet", index=False)
    (record,) = process_landing(config).records
    report = _assert_report_matches_the_ledger(store, record)
    assert report.counts.held_by["blocklist"] == len(again) == record.rows_quarantined
    assert all(r.stage == "blocklist" for r in report.top_rows)
    assert report.top_rows[0].reason.startswith("near-copy of a row rejected on ")


def test_a_batch_hold_is_counted_and_named_on_the_page(demo_project):
    """A batch mostly of one class is held whole: its page names the hold and counts its rows
    under the expectations, the detectors and the batch hold, adding up to the ledger's."""
    path = demo_project / "poisonguard.toml"
    path.write_text(
        path.read_text().replace("[detection]\n", "[detection]\nhold_label_shift = 0.3\n")
    )
    config = load_config(path)
    landed = pd.concat(
        pd.read_parquet(config.landing / f)
        for f in ("partner/batch-04-clean.parquet", "sensors/batch-02-outliers.parquet")
    )
    empty_landing(config.landing)
    ones = landed["digit"] == 1
    pd.concat([landed[ones], landed[~ones].head(40)]).to_parquet(
        config.landing / "mostly-ones.parquet", index=False
    )
    (record,) = process_landing(config).records
    store = open_store(config)
    report = _assert_report_matches_the_ledger(store, record)
    held_by = report.counts.held_by
    assert held_by["batch_hold"] > 0 and held_by["detectors"] > 0, held_by
    assert sum(held_by.values()) == record.rows_quarantined == record.rows_in
    assert report.batch_hold and report.batch_hold.startswith("batch held for review")
    page = report_paths(store, record.batch_id)[0].read_text(encoding="utf-8")
    assert "Held for review:</strong> batch held for review: its label shares" in page
    assert "Held for review: batch held for review" in markdown_summary(report, Path("x"))


def test_figures_counted_in_parts_with_empty_ones_are_the_whole_batchs(tmp_path):
    """EvidenceCounts fed a batch's rows in parts, empty parts among them (a row group whose
    every row was held before scoring), draws the figures it draws from the batch in one."""
    from sklearn.datasets import load_digits

    from poisonguard.evidence import EvidenceCounts
    from poisonguard.scan import Guard

    data = load_digits(as_frame=True).frame.rename(columns={"target": "label"})
    guard = Guard(label="label").fit(data.iloc[:900])
    table, scores, decision = guard.judge(data.iloc[900:1300].reset_index(drop=True))
    held = np.asarray(decision.quarantined)
    args = (held, guard.calibrations_, decision.detectors, decision.p_cuts)
    whole = EvidenceCounts(guard.reference_, tmp_path)
    whole.add(table, scores)
    parts = EvidenceCounts(guard.reference_, tmp_path)
    for lo, hi in [(0, 0), (0, 150), (150, 150), (150, 400), (400, 400)]:
        rows = np.arange(lo, hi)
        parts.add(table.take(rows), {name: s[rows] for name, s in scores.items()})
    got, want = parts.evidence(*args), whole.evidence(*args)
    assert got.detectors == want.detectors and got.class_balance == want.class_balance
    assert got.projection is not None and want.projection is not None
    np.testing.assert_allclose(got.projection.clean, want.projection.clean, atol=2e-3)
    assert held.sum() > 0 and len(got.projection.held) == held.sum()
    assert list(tmp_path.iterdir()) == []  # the per-row files are unlinked at once


def test_a_batch_with_no_row_scored_keeps_no_stale_evidence(demo_project, rng):
    """Every row broke an expectation, so no detector ran: detect leaves no evidence.json (not
    even one an earlier run left), and the page says why it has no detector scores."""
    config = load_config(demo_project / "poisonguard.toml")
    frame = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet").head(20)
    empty_landing(config.landing)
    frame["px03"] = 99.0
    frame.to_parquet(config.landing / "all-broken.parquet", index=False)
    store = open_store(config)
    staged = validate_batch(entry_for(config.landing / "all-broken.parquet"), config, store).staged
    assert staged is not None
    stale = sample_report(rng).evidence
    assert stale is not None
    (staged / EVIDENCE).write_text(dumps(stale))
    detect_batch(staged, config, store)
    assert not (staged / EVIDENCE).exists()
    record = commit_batch(staged, config, store)
    report = _assert_report_matches_the_ledger(store, record)
    assert report.evidence is None and report.counts.held_by["expectations"] == 20
    page = report_paths(store, record.batch_id)[0].read_text(encoding="utf-8")
    assert "every row was held before the detectors scored it" in page


def test_a_hostile_file_name_shows_as_text_on_its_report(demo_project):
    """A landed file named with markup, quotes and a line break is rejected, and its report
    shows the name as text."""
    config = load_config(demo_project / "poisonguard.toml")
    empty_landing(config.landing)
    name = '<script>window.__pg_pwned=3;"\n<img src=x onerror="window.__pg_pwned=4">.parquet'
    (config.landing / name).write_bytes(b"PAR1garbage")
    (record,) = process_landing(config).records
    assert record.status == "rejected"
    page = report_paths(open_store(config), record.batch_id)[0].read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert name in text_of(page)
    assert load_report(report_paths(open_store(config), record.batch_id)[1]).source == name
