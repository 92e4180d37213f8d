"""The batch report: one self-contained, script-free HTML page a data steward can read."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import poisonguard.report as report_module
from poisonguard.errors import ConfigError
from poisonguard.report import MAX_POINTS, markdown_summary, render_html, write_report

PROBE = "<script>window.__pg_pwned=1;document.title='pwned'</script>"
ATTR_PROBE = '"><img src=x onerror="window.__pg_pwned=2">'

SECTION_HEADINGS = (
    "Summary",
    "Failed expectations",
    "Detector scores",
    "Trusted vs batch (2-D projection)",
    "Class balance",
    "Drift",
    "Most suspicious rows",
)


def sample_report(
    rng: np.random.Generator,
    *,
    n_batch: int = 400,
    n_reference: int = 720,
    n_features: int = 16,
    batch_id: str = "batch-01-label-flips-3f9a1c2b7d4e",
) -> dict[str, Any]:
    """A full, realistic report for a digits-like batch with label flips and far outliers."""
    labels = [str(d) for d in range(10)]
    centres = rng.normal(0, 6, size=(10, 2))
    ref_y = rng.integers(0, 10, n_reference)
    batch_y = rng.integers(0, 10, n_batch)
    reference = centres[ref_y] + rng.normal(0, 1.2, (n_reference, 2))
    batch = centres[batch_y] + rng.normal(0, 1.2, (n_batch, 2))

    n_flip, n_far, n_broken = n_batch // 12, n_batch // 25, n_batch // 40
    order = rng.permutation(n_batch)
    flipped, far, _broken = np.split(order[: n_flip + n_far + n_broken], [n_flip, n_flip + n_far])
    batch[far] = rng.normal(0, 1, (len(far), 2)) * 2 + np.array([22.0, -18.0])

    knn = rng.beta(2, 9, n_batch)
    knn[flipped] = rng.uniform(0.6, 0.98, len(flipped))
    iso = rng.normal(0.42, 0.05, n_batch)
    iso[far] = rng.uniform(0.66, 0.78, len(far))
    maha = rng.chisquare(4, n_batch)
    maha[far] = rng.uniform(150, 400, len(far))  # a heavy tail: most rows sit near 0..15
    quarantined = np.zeros(n_batch, dtype=bool)
    quarantined[np.concatenate([flipped, far])] = True
    quarantined[rng.choice(n_batch, 2, replace=False)] = True  # combined evidence, no single cut

    detectors = [
        {
            "name": "knn_label",
            "scores": knn.tolist(),
            "quarantined": quarantined.tolist(),
            "cut": 0.55,
            "calibration": rng.beta(2, 9, 500).tolist(),
        },
        {
            "name": "isolation_forest",
            "scores": iso.tolist(),
            "quarantined": quarantined.tolist(),
            "cut": 0.58,
            "calibration": rng.normal(0.42, 0.05, 500).tolist(),
        },
        {
            "name": "mahalanobis",
            "scores": maha.tolist(),
            "quarantined": quarantined.tolist(),
            "cut": None,
            "calibration": rng.chisquare(4, 500).tolist(),
        },
    ]
    ref_share = np.bincount(ref_y, minlength=10) / n_reference
    batch_share = np.bincount(batch_y, minlength=10) / n_batch
    columns = [f"px{i:02d}" for i in range(n_features)]
    statistics = np.sort(rng.uniform(0.02, 0.4, n_features))[::-1]
    features = [
        {"name": columns[i], "statistic": float(s), "p_value": float(10 ** (-30 * s))}
        for i, s in zip(rng.permutation(n_features), statistics, strict=True)
    ]
    suspicious = np.argsort(-knn)[:25]
    top_rows = []
    for row in suspicious:
        reason = (
            "label disagrees with its neighbours" if row in flipped else "far from trusted data"
        )
        values: dict[str, Any] = {c: int(rng.integers(0, 17)) for c in columns}
        values["digit"] = int(batch_y[row])
        top_rows.append(
            {"pg_row": int(row), "suspicion": float(knn[row]), "reason": reason, "values": values}
        )
    n_quar = int(quarantined.sum()) + n_broken
    return {
        "batch_id": batch_id,
        "source": "batch-01-label-flips.parquet",
        "sha256": "3f9a1c2b7d4e" + "0" * 52,
        "status": "committed",
        "created_at": "2025-11-22T15:04:05+00:00",
        "reason": None,
        "counts": {
            "rows_in": n_batch,
            "clean": n_batch - n_quar,
            "quarantined": n_quar,
            "rejected": 0,
            "quarantined_by_expectations": n_broken,
            "quarantined_by_detectors": int(quarantined.sum()),
        },
        "failed_expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "column": "px03",
                "kwargs": {"column": "px03", "min_value": 0, "max_value": 16},
                "unexpected_count": n_broken,
                "error": None,
            },
            {
                "type": "expect_column_values_to_not_be_null",
                "column": "digit",
                "kwargs": {"column": "digit"},
                "unexpected_count": 1,
                "error": "",
            },
        ],
        "decision": {"fdr": 0.05, "threshold_p": 0.00213},
        "detectors": detectors,
        "projection": {
            "reference": reference.tolist(),
            "batch": batch.tolist(),
            "quarantined": quarantined.tolist(),
        },
        "class_balance": {
            "labels": labels,
            "reference": ref_share.tolist(),
            "batch": batch_share.tolist(),
        },
        "drift": {
            "label_tv": float(0.5 * np.abs(ref_share - batch_share).sum()),
            "label_p": 0.031,
            "features": features,
        },
        "top_rows": top_rows,
    }


def hostile_report(rng: np.random.Generator) -> dict[str, Any]:
    """A full report whose every text field carries markup that would run if not escaped."""
    report = sample_report(rng, batch_id=PROBE)
    report["source"] = ATTR_PROBE
    report["sha256"] = ATTR_PROBE
    report["created_at"] = PROBE
    report["status"] = PROBE
    report["reason"] = PROBE
    report["failed_expectations"][0].update(
        type=PROBE, column=PROBE, kwargs={PROBE: ATTR_PROBE}, error=PROBE
    )
    report["detectors"][0]["name"] = PROBE
    report["class_balance"]["labels"][3] = PROBE
    report["drift"]["features"][0]["name"] = PROBE
    report["top_rows"][0]["reason"] = PROBE
    report["top_rows"][0]["values"][PROBE] = ATTR_PROBE
    return report


class _Tags(HTMLParser):
    """Every start tag with its attributes, and every text node."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.headings: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("h1", "h2", "h3"):
            self._in = tag
            self.headings.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in:
            self.headings[-1] += data


def text_of(page: str) -> str:
    """The page's text as a reader sees it (tags gone, entities decoded)."""
    return "".join(parse(page).text)


def parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20251122)


@pytest.fixture
def full(rng) -> dict[str, Any]:
    return sample_report(rng)


# --------------------------------------------------------------------------- the page


def test_a_full_report_shows_every_section(full):
    """Summary, expectations, one histogram per detector, scatter, balance, drift, top rows."""
    page = render_html(full)
    parsed = parse(page)
    h2 = [h for (tag, _), h in zip(_headings(parsed), parsed.headings, strict=True) if tag == "h2"]
    assert h2 == list(SECTION_HEADINGS)
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>poisonguard report · batch-01-label-flips-3f9a1c2b7d4e</title>" in page
    assert 'class="badge committed"' in page
    assert page.count('<figure class="histogram">') == len(full["detectors"])
    assert page.count('class="points ') == 3
    assert page.count('class="share share-batch"') == 10
    assert page.count('class="drift"') == min(len(full["drift"]["features"]), 15)
    assert "expect_column_values_to_be_between" in text_of(page)
    assert "label disagrees with its neighbours" in page
    assert "Not available" not in page


def _headings(parsed: _Tags) -> list[tuple[str, dict[str, str | None]]]:
    return [t for t in parsed.tags if t[0] in ("h1", "h2", "h3")]


def test_counts_show_in_the_summary_with_thousands_separators(full):
    """The four counts appear as numbers a person reads, shares of rows in beside them."""
    full["counts"].update(rows_in=12345, clean=12000, quarantined=300, rejected=45)
    page = render_html(full)
    for key, text in (("rows_in", "12,345"), ("clean", "12,000"), ("quarantined", "300")):
        assert f'data-count="{key}">{text}</div>' in page
    assert "97.2% of rows in" in page
    assert "Benjamini–Hochberg at false-discovery rate 0.050 (rows with combined p ≤ 0.002" in page
    full["decision"]["threshold_p"] = 0.0
    assert "no row's combined p-value passed the cut" in text_of(render_html(full))


def test_a_rejected_report_with_only_counts_and_reason_renders():
    """A batch rejected whole shows its badge, reason, counts and failed expectations."""
    report = {
        "batch_id": "batch-05-wrong-schema-0a1b2c3d4e5f",
        "status": "rejected",
        "reason": "column 'px07' is missing",
        "counts": {"rows_in": 450, "clean": 0, "quarantined": 0, "rejected": 450},
        "failed_expectations": [
            {
                "type": "expect_column_to_exist",
                "column": "px07",
                "kwargs": {"column": "px07"},
                "unexpected_count": None,
                "error": "column not found",
            }
        ],
    }
    page = render_html(report)
    assert 'class="badge rejected"' in page
    assert "Rejected:</strong> column &#x27;px07&#x27; is missing" in page
    assert 'data-count="rejected">450</div>' in page
    assert "expect_column_to_exist" in text_of(page)
    assert "rejected before it was scored" in page
    assert "<svg" not in page


def test_a_long_list_of_failed_expectations_folds_away_without_script():
    """The first 15 show; the rest sit in a native <details>; long list arguments are cut."""
    columns = [f"px{i:02d}" for i in range(64)]
    failed = [
        {"type": "expect_column_values_to_be_between", "column": c, "unexpected_count": i}
        for i, c in enumerate(columns)
    ]
    failed[0] = {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": columns}}
    page = render_html({"failed_expectations": failed})
    shown, folded = page.split("<details>")
    assert shown.count("<tr>") == 1 + 15 and folded.count("<tr>") == 1 + 49
    assert "Show the other 49 failed expectations" in page
    assert "64 expectations of the suite failed" in page
    assert '"px05", … 58 more]' in page.replace("&quot;", '"')
    assert "px63" in folded and "px63" not in shown


def test_a_reason_of_several_clauses_shows_one_clause_per_line(full):
    full["top_rows"][0]["reason"] = "px00 = 9 outside [0, 16]; px01 = -3 outside [0, 16]"
    page = render_html(full)
    assert "px00 = 9 outside [0, 16]<br>px01 = -3 outside [0, 16]" in page


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"counts": {}},
        {"detectors": [], "projection": {}, "class_balance": {}, "drift": {}, "top_rows": []},
        {"detectors": [{"name": "empty", "scores": [], "quarantined": [], "calibration": []}]},
        {"detectors": [{"scores": [0.5, 0.5, 0.5], "cut": 0.5}]},
        {"detectors": [{"scores": [float("nan"), 1.0, float("inf")], "quarantined": [True]}]},
        {"projection": {"reference": [[0, 0]], "batch": [[1, "x"], [2]], "quarantined": None}},
        {"class_balance": {"labels": ["a", "b", "c"], "reference": [0.5], "batch": None}},
        {"drift": {"features": [{"name": "x"}]}},
        {"top_rows": [{"values": None}, {"pg_row": "7", "values": {"a": [1, 2], "b": None}}]},
        {"counts": "nonsense", "failed_expectations": "nonsense", "decision": 3},
    ],
)
def test_sparse_or_malformed_reports_still_render(report):
    """Missing keys, empty lists, wrong types and non-finite numbers never break the page."""
    page = render_html(report)
    assert page.rstrip().endswith("</html>")
    assert "<script" not in page.lower()


_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "batch_id", "status", "reason", "counts", "failed_expectations", "decision",
        "detectors", "projection", "class_balance", "drift", "top_rows",
    ]
)  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _json, max_size=6))
def test_any_json_under_any_key_renders(report):
    """Whatever JSON the pipeline puts under any key, the renderer copes and stays script-free."""
    page = render_html(report)
    assert page.rstrip().endswith("</html>")
    assert "<script" not in page.lower()


_edge = st.floats() | st.sampled_from([1e308, -1e308, 5e-324, 0.0, 1e150, -1e-300, 7.0])


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(_edge, max_size=6),
    calibration=st.lists(_edge, max_size=6),
    cut=st.none() | _edge,
    points=st.lists(st.tuples(_edge, _edge), max_size=5),
    shares=st.lists(_edge, min_size=2, max_size=2),
    statistics=st.lists(_edge, max_size=3),
)
def test_plots_cope_with_extreme_numbers(scores, calibration, cut, points, shares, statistics):
    """Huge, tiny, equal, infinite and NaN numbers neither break nor hang a plot."""
    page = render_html(
        {
            "detectors": [
                {
                    "name": "d",
                    "scores": scores,
                    "quarantined": [True] * len(scores),
                    "calibration": calibration,
                    "cut": cut,
                }
            ],
            "projection": {"reference": points, "batch": points[::-1], "quarantined": [True]},
            "class_balance": {"labels": ["a", "b"], "reference": shares, "batch": shares[::-1]},
            "drift": {"features": [{"name": "f", "statistic": x} for x in statistics]},
        }
    )
    assert page.rstrip().endswith("</html>")
    assert not re.search(r"(?i)\bnan\b", page.split("<body>")[1])  # no coordinate is NaN


def test_a_report_that_is_not_a_dict_is_refused():
    with pytest.raises(ConfigError, match=r"The 'report' parameter of render_html\(\) must be"):
        render_html(["not", "a", "dict"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- safety


def test_every_value_from_the_data_is_escaped(rng):
    """Markup in a reason, column, label, batch id or attribute shows as text; no script tag."""
    page = render_html(hostile_report(rng))
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "img", "iframe", "object", "embed"), tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
    text = "".join(parsed.text)
    # The title, the h1, the reason, a column header, a label, a detector, a feature, a row.
    assert text.count(PROBE) >= 10
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


# --------------------------------------------------------------------------- plots


def _rects(svg: str, cls: str) -> list[dict[str, str]]:
    return [
        dict(re.findall(r'([\w-]+)="([^"]*)"', m))
        for m in re.findall(rf'<rect class="{cls}[^"]*"[^>]*>', svg)
    ]


def _figures(page: str) -> list[str]:
    return re.findall(r'<figure class="histogram">.*?</figure>', page, re.S)


def test_histogram_bars_recount_the_scores(full):
    """Each detector's bars hold every finite score once, in the bin its value falls in.

    Bar heights are one scale per plot, so a bar twice as tall holds twice the rows.
    """
    page = render_html(full)
    figures = _figures(page)
    assert len(figures) == len(full["detectors"])
    for detector, svg in zip(full["detectors"], figures, strict=True):
        scores = np.asarray(detector["scores"], dtype=float)
        flags = np.asarray(detector["quarantined"], dtype=bool)
        bars = _rects(svg, "bar ")
        assert bars
        for kind, mask in (("clean", ~flags), ("quarantined", flags)):
            chosen = [b for b in bars if f"bar-{kind}" in b["class"]]
            assert sum(int(b["data-count"]) for b in chosen) == mask.sum()
            last = max(float(b["data-hi"]) for b in bars if math.isfinite(float(b["data-hi"])))
            for b in chosen:
                lo, hi = float(b["data-lo"]), float(b["data-hi"])
                values = scores[mask]
                inside = ((values >= lo) & (values < hi)) | ((values == hi) & (hi == last))
                if math.isinf(hi):
                    inside = values > lo
                assert int(b["data-count"]) == inside.sum(), (detector["name"], kind, lo, hi)
        assert sum(int(b["data-count"]) for b in bars) == len(scores)
        per_row = sum(float(b["height"]) for b in bars) / len(scores)
        for b in bars:
            assert float(b["height"]) == pytest.approx(int(b["data-count"]) * per_row, abs=0.15)


def test_a_heavy_tail_shares_one_overflow_bar(full):
    """Far outliers do not squash the histogram: past the core range they share the last bar."""
    page = render_html(full)
    maha = _figures(page)[2]
    overflow = [b for b in _rects(maha, "bar ") if b["data-hi"] == "inf"]
    assert sum(int(b["data-count"]) for b in overflow) >= len(full["projection"]["batch"]) // 25
    assert re.search(r"scores beyond [\d.]+ share the last bar \(\d+ batch rows, ", maha)


def test_the_cut_and_the_calibration_are_drawn(full):
    """A detector with a cut shows a dashed line labelled with it; calibration is an outline."""
    figures = _figures(render_html(full))
    assert 'class="cut"' in figures[0] and "cut 0.55" in figures[0]
    assert 'class="cut"' not in figures[2]  # cut None
    assert "no single-detector cut" in figures[2]
    assert all('class="calibration"' in f for f in figures)


def test_scatter_downsamples_each_group_deterministically(rng):
    """A large projection keeps at most MAX_POINTS per group, the same points every time."""
    report = sample_report(rng, n_batch=4000, n_reference=10_000)
    first, second = render_html(report), render_html(report)
    assert first == second
    groups = re.findall(r'<path class="points ([\w-]+)" data-points="(\d+)" data-total="(\d+)"'
                        r' d="([^"]*)"', first)  # fmt: skip
    totals = {name: (int(shown), int(total), d) for name, shown, total, d in groups}
    assert set(totals) == {"trusted", "batch-clean", "batch-quarantined"}
    assert totals["trusted"][:2] == (MAX_POINTS, 10_000)
    assert totals["batch-clean"][0] == MAX_POINTS
    quarantined = sum(report["projection"]["quarantined"])
    assert totals["batch-quarantined"][:2] == (quarantined, quarantined)
    for shown, _, d in totals.values():
        assert d.count("M") == shown
    assert "3,000 of 10,000 trusted rows" in first
    assert len(first) < 600_000


def test_class_balance_bars_match_the_shares(full):
    """Each label has a trusted and a batch bar whose heights are proportional to the share."""
    page = render_html(full)
    for who in ("trusted", "batch"):
        bars = _rects(page, f"share share-{who}")
        key = "reference" if who == "trusted" else "batch"
        shares = [float(b["data-share"]) for b in bars]
        assert shares == pytest.approx(full["class_balance"][key])
        per_share = sum(float(b["height"]) for b in bars) / sum(shares)
        for b, s in zip(bars, shares, strict=True):
            assert float(b["height"]) == pytest.approx(s * per_share, abs=0.15)


def test_drift_shows_the_label_distance_and_at_most_fifteen_features(rng):
    """The label TV distance is a figure; only the most drifted features are plotted, in order."""
    report = sample_report(rng, n_features=40)
    page = render_html(report)
    stats = [float(b["data-statistic"]) for b in _rects(page, "drift")]
    expected = [f["statistic"] for f in report["drift"]["features"][:15]]
    assert stats == pytest.approx(expected)
    assert f"{report['drift']['label_tv']:.3g}"[:4] in page
    assert "The 15 most drifted of 40 features." in page


def test_axes_have_ticks_and_labels(full):
    """Every plot has labelled axes, and the legend names what each colour means."""
    page = render_html(full)
    for label in ("rows", "knn_label score", "PC 1", "PC 2", "share of rows", "label"):
        assert f">{label}</text>" in page, label
    for entry in ("batch, kept", "batch, quarantined", "trusted calibration", "trusted"):
        assert f">{entry}</text>" in page, entry


# --------------------------------------------------------------------------- files


def test_write_report_writes_json_and_html_atomically(full, tmp_path, monkeypatch):
    """Both files go through the store's atomic writer and nothing else is left in the folder."""
    calls: list[Path] = []
    real = report_module.atomic_write_bytes

    def spy(path: Path, data: bytes) -> None:
        calls.append(path)
        real(path, data)

    monkeypatch.setattr(report_module, "atomic_write_bytes", spy)
    full["detectors"][0]["scores"][0] = float("nan")
    json_path, html_path = write_report(full, tmp_path / "reports")
    folder = tmp_path / "reports"
    assert json_path == folder / f"{full['batch_id']}.json"
    assert html_path == folder / f"{full['batch_id']}.html"
    assert calls == [json_path, html_path]
    assert sorted(p.name for p in folder.iterdir()) == sorted([json_path.name, html_path.name])
    saved = json.loads(json_path.read_text(encoding="utf-8"))
    assert saved["detectors"][0]["scores"][0] is None  # strict JSON: NaN is written as null
    assert saved["counts"] == full["counts"]
    assert html_path.read_text(encoding="utf-8") == render_html(full)


def test_write_report_writes_nothing_when_the_page_cannot_render(full, tmp_path, monkeypatch):
    """The page is rendered before either file is written."""

    def broken(report: dict[str, Any]) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(report_module, "render_html", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_report(full, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_report_replaces_an_older_report_whole(full, tmp_path):
    """Writing a batch's report again leaves exactly the new files."""
    write_report({**full, "status": "rejected"}, tmp_path)
    json_path, html_path = write_report(full, tmp_path)
    assert 'class="badge committed"' in html_path.read_text(encoding="utf-8")
    assert json.loads(json_path.read_text(encoding="utf-8"))["status"] == "committed"
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("batch_id", [None, "", ".", "..", "../escape", "a/b", "a\\b", PROBE])
def test_write_report_refuses_a_batch_id_that_is_not_a_file_name(full, tmp_path, batch_id):
    with pytest.raises(ConfigError, match=r"The 'batch_id' parameter of write_report\(\)"):
        write_report({**full, "batch_id": batch_id}, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- markdown


def test_markdown_summary_holds_the_counts_the_top_reasons_and_the_path(full, tmp_path):
    full["counts"].update(rows_in=12345, clean=12000, quarantined=300, rejected=45)
    path = tmp_path / "reports" / "batch_one.html"
    md = markdown_summary(full, path)
    assert "| rows in | clean | quarantined | rejected |" in md
    assert "| 12,345 | 12,000 | 300 | 45 |" in md
    assert "| top reasons | rows |" in md
    assert "label disagrees with its neighbours" in md
    assert f"`{path}`" in md
    assert md.count("\n") < 25


def test_markdown_summary_of_a_rejected_batch_names_the_reason_safely(tmp_path):
    """Pipes, markup and backticks in the data cannot break the table or inject HTML."""
    report = {
        "batch_id": "b|1",
        "status": "rejected",
        "reason": "missing column <b>x</b> | y",
        "counts": {"rows_in": 10, "rejected": 10},
    }
    path = tmp_path / "odd `name`.html"
    md = markdown_summary(report, path)
    assert "Rejected: missing column &lt;b&gt;x&lt;/b&gt; \\| y" in md
    assert "**Batch b\\|1**: rejected" in md
    assert "| 10 | — | — | 10 |" in md
    assert f"``{path}``" in md
    assert "<b>" not in md
