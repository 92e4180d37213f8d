"""The decision step: conformal p-values, their tail, the combination and Benjamini-Hochberg."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from poisonguard.decision import (
    Calibration,
    benjamini_hochberg,
    cauchy_combine,
    decide,
    decide_batch,
    excess_cut,
    log_cauchy_combine,
)
from poisonguard.errors import ConfigError


def test_p_values_below_the_tail_threshold_are_exactly_conformal():
    """Up to the tail threshold (the top 10% of calibration scores, at least 20 of them),
    p = (1 + #{cal >= s}) / (n + 1)."""
    cal = Calibration.fit(np.arange(1.0, 301.0))
    assert cal.threshold == 270.0
    p = cal.p_values(np.array([0.5, 1.0, 150.0, 270.0]))
    assert p == pytest.approx([301 / 301, 301 / 301, 152 / 301, 32 / 301])
    # A small set still leaves 20 scores above the threshold for the tail fit.
    assert Calibration.fit(np.arange(1.0, 101.0)).threshold == 80.0


def test_p_values_above_the_tail_threshold_follow_the_fitted_tail():
    """Above the threshold the p-value is the conformal one at the threshold times the tail's
    survival: continuous there, decreasing, and past the maximum below 1/(n+1) when the tail
    is steep enough."""
    rng = np.random.default_rng(3)
    cal = Calibration.fit(rng.exponential(size=500))
    at = (1 + np.sum(cal.scores > cal.threshold)) / (cal.n + 1)
    xs = np.linspace(cal.threshold + 1e-9, cal.tail_start + 5, 50)
    p = cal.p_values(xs)
    assert p[0] == pytest.approx(at, rel=1e-6)
    assert np.all(np.diff(p) < 0)
    assert p[-1] < 1 / 501


def test_a_surprise_scale_floors_the_tail():
    """With min_scale=1 a tied calibration gives no p-value below what the detector's own
    null allows, exp(-score), though every score is beyond the calibration maximum."""
    cal = Calibration.fit(np.zeros(99), min_scale=1.0)
    p = cal.p_values(np.array([0.0, 2.0, 20.0]))
    assert p == pytest.approx([1.0, np.exp(-2.0), np.exp(-20.0)])
    # Where the calibration's own tail is more cautious than the null, the floor changes nothing.
    scores, x = np.linspace(0.0, 30.0, 99), np.array([5.0, 29.0, 31.0])
    floored = Calibration.fit(scores, min_scale=1.0).p_values(x)
    assert floored == pytest.approx(Calibration.fit(scores).p_values(x))
    assert np.all(floored > np.exp(-x))


def test_a_fixed_shape_fits_an_exponential_tail_by_its_mean_exceedance():
    """shape=0 keeps the tail exponential whatever the exceedances suggest; its scale is their mean.

    A heavy-looking tail (one extreme calibration row among Gaussian ones) would make the
    estimated shape positive and the p-values of far rows much larger.
    """
    rng = np.random.default_rng(5)
    scores = np.r_[rng.normal(size=199), 9.0]
    fitted = Calibration.fit(scores)
    fixed = Calibration.fit(scores, shape=0.0)
    n_tail = round(fixed.tail_share * fixed.n)
    excess = fixed.scores[-n_tail:]
    assert fitted.xi > 0.0
    assert fixed.xi == 0.0
    assert fixed.sigma == pytest.approx(np.mean(excess - fixed.threshold))
    far = np.array([12.0])
    assert fixed.p_values(far)[0] < fitted.p_values(far)[0] / 10
    # Below the tail threshold nothing changes.
    assert fixed.p_values(np.array([0.0])) == pytest.approx(fitted.p_values(np.array([0.0])))


def test_a_scale_floor_still_applies_to_a_fixed_shape():
    """A surprise's exponential tail never steeper than exp(-score)."""
    cal = Calibration.fit(np.linspace(0.0, 0.1, 100), shape=0.0, min_scale=1.0)
    assert (cal.xi, cal.sigma) == (0.0, 1.0)


def test_a_confidence_bound_on_the_scale_covers_the_true_scale_at_its_level():
    """model_label's tail: the exponential scale's upper 90% bound is at least the true scale
    in about 90% of calibration sets (20 exceedances of 100 scores each), and wider than the
    estimate, by less as exceedances grow."""
    rng = np.random.default_rng(7)
    fits = [
        Calibration.fit(rng.exponential(2.0, 100), shape=0.0, confidence=0.9) for _ in range(2000)
    ]
    covered = np.mean([c.sigma >= 2.0 for c in fits])
    assert covered == pytest.approx(0.9, abs=0.025)
    scores = rng.exponential(2.0, 5000)
    plain = Calibration.fit(scores[:100], shape=0.0)
    bound = Calibration.fit(scores[:100], shape=0.0, confidence=0.9)
    assert bound.sigma / plain.sigma > 1.3
    big = Calibration.fit(scores, shape=0.0, confidence=0.9).sigma
    assert 1.0 < big / Calibration.fit(scores, shape=0.0).sigma < 1.1


def test_the_fitted_tail_does_not_contradict_the_calibration_scores_it_lies_over():
    """A far cluster of calibration scores (exact ties of a coarse table score alike): the
    exponential tail fitted to the bulk puts scores inside the cluster 7 times below what
    the calibration scores at or above them allow. Past the tail threshold the p-value is
    at least the lower 95% bound of that share; past every calibration score the tail rules."""
    from scipy.stats import beta

    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.exponential(size=516), 25.0 + rng.uniform(size=7)])
    cal = Calibration.fit(scores, shape=0.0)
    inside = np.sort(scores)[-3]  # 3 calibration scores at or above it
    bound = beta.ppf(0.05, 3, cal.n - 3 + 1)
    assert cal.p_values(np.array([inside]))[0] == pytest.approx(bound)
    tail = (np.sum(scores > cal.threshold) + 1) / (cal.n + 1)
    assert tail * np.exp(-(inside - cal.threshold) / cal.sigma) < bound / 5
    # Beyond the largest calibration score there is nothing to contradict.
    far = cal.tail_start + 50.0
    assert cal.p_values(np.array([far]))[0] < bound / 100


def test_log_p_values_stay_ordered_where_p_values_underflow():
    """Far in the tail, log p keeps decreasing after p itself hits the floor."""
    cal = Calibration.fit(np.zeros(99), min_scale=1.0)
    logp = cal.log_p_values(np.array([800.0, 900.0]))
    assert logp[1] < logp[0] < -700


def test_p_values_past_every_calibration_score_keep_falling():
    """Beyond the largest calibration score the fitted tail takes p below 1/(n+1), monotonically."""
    rng = np.random.default_rng(0)
    cal = Calibration.fit(rng.exponential(size=200))
    far = np.array([cal.tail_start + 0.01, cal.tail_start + 2, cal.tail_start + 10])
    p = cal.p_values(far)
    assert p[0] <= 1 / 201 + 1e-12
    assert np.all(np.diff(p) < 0)
    assert p[-1] < 1e-4


def test_p_values_are_valid_on_exchangeable_scores():
    """On scores from the calibration distribution, P(p <= a) stays near a (never far above)."""
    rng = np.random.default_rng(1)
    ps = np.concatenate(
        [Calibration.fit(rng.normal(size=300)).p_values(rng.normal(size=500)) for _ in range(100)]
    )
    for a in (0.001, 0.01, 0.05, 0.2):
        assert (ps <= a).mean() <= 1.3 * a + 0.001


def test_a_constant_calibration_gives_the_coarsest_conformal_p_beyond_it():
    """With no spread to fit a tail to, a higher score gets p = 1/(n+1), never 0."""
    cal = Calibration.fit(np.zeros(99))
    assert cal.p_values(np.array([0.0, 5.0])) == pytest.approx([1.0, 0.01])


@given(st.lists(st.floats(0, 0.5, allow_nan=False), min_size=1, max_size=6))
def test_cauchy_combination_of_identical_p_values_is_that_p_value(ps):
    """Combining k copies of the same p-value (up to 0.5) returns it: a mean of tangents."""
    for p in ps:
        p = max(p, 1e-12)
        out = cauchy_combine(np.full((1, 4), p))
        assert out[0] == pytest.approx(p, rel=1e-6, abs=1e-12)


def test_cauchy_combination_is_near_uniform_in_its_small_tail():
    """For independent uniform p-values, P(combined <= a) stays close to a for small a."""
    rng = np.random.default_rng(2)
    out = cauchy_combine(rng.random((400_000, 5)))
    for a in (0.001, 0.01):
        assert abs((out <= a).mean() - a) < 0.15 * a
    assert (out <= 0.05).mean() < 1.25 * 0.05


@given(st.floats(1e-12, 0.5), st.floats(0.05, 0.95))
def test_weights_set_each_detectors_share_of_the_combination(p, w):
    """With every other test at 0.5 (tangent 0), a small p with weight w combines to about p / w;
    all the weight on one test returns its p; equal weights are the unweighted combination."""
    logp = np.log(np.array([[p, 0.5, 0.5]]))
    alone = np.exp(log_cauchy_combine(logp, [1.0, 0.0, 0.0]))[0]
    assert alone == pytest.approx(p, rel=1e-6)
    shared = np.exp(log_cauchy_combine(logp, [w, (1 - w) / 2, (1 - w) / 2]))[0]
    if p < 1e-4:
        assert shared == pytest.approx(p / w, rel=1e-3)
    assert shared >= alone * (1 - 1e-9)
    rng = np.random.default_rng(0)
    many = np.log(rng.random((50, 3)))
    np.testing.assert_allclose(log_cauchy_combine(many, [2.0, 2.0, 2.0]), log_cauchy_combine(many))


def test_decide_gives_a_half_weight_detector_half_the_share():
    """A row only detector b flags: halving b's weight cuts its share from 1/2 to 1/3, so the
    row's combined p-value grows by half."""
    cal = {"a": Calibration.fit(np.arange(200.0)), "b": Calibration.fit(np.arange(200.0))}
    scores = {"a": np.full(50, 100.0), "b": np.full(50, 100.0)}
    scores["b"][0] = 260.0
    equal = decide(scores, cal, fdr=0.05)
    half = decide(scores, cal, fdr=0.05, weights={"a": 1.0, "b": 0.5})
    assert half.combined[0] == pytest.approx(equal.combined[0] * 1.5, rel=0.05)
    with pytest.raises(ValueError, match="weights"):
        decide(scores, cal, fdr=0.05, weights={"a": -1.0, "b": 1.0})


def test_a_detector_that_finds_a_row_ordinary_does_not_veto_the_others():
    """p = 1 from one detector (below every calibration score) leaves another's 1e-4 standing."""
    out = cauchy_combine(np.array([[1.0, 1e-4, 0.5]]))
    assert out[0] < 1e-3


@settings(max_examples=200)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=0, max_size=50), st.floats(0.001, 0.5))
def test_benjamini_hochberg_matches_its_definition(ps, q):
    """Rejected = the k smallest, k the largest i with p_(i) <= q i / n."""
    p = np.array(ps)
    out = benjamini_hochberg(p, q)
    n = p.size
    s = np.sort(p)
    ks = [i for i in range(1, n + 1) if s[i - 1] <= q * i / n]
    k = max(ks) if ks else 0
    assert out.sum() >= k
    if k:
        assert np.all(p[out] <= s[k - 1])
    else:
        assert not out.any()


def _weak_poison(rng: np.random.Generator, n_clean: int = 900, n_poison: int = 100) -> tuple:
    """Log p-values of a batch: clean rows uniform, poisoned rows spread over (0, 0.02);
    each one alone too weak for Benjamini-Hochberg at 0.05 once the batch is 1,000 rows."""
    p = np.concatenate([rng.uniform(size=n_clean), rng.uniform(0, 0.02, size=n_poison)])
    return np.log(p), np.arange(p.size) >= n_clean


def _f1(held: np.ndarray, poison: np.ndarray) -> float:
    return 2 * float((held & poison).sum()) / (held.sum() + poison.sum())


def test_the_excess_rule_seldom_holds_anything_in_a_batch_without_poison():
    """Valid p-values against clean calibration rows: over 300 poison-free batches the rule
    fires (holds a row Benjamini-Hochberg does not) in at most about its level."""
    rng = np.random.default_rng(0)
    null = np.sort(np.log(rng.uniform(size=2000)))
    fired = [excess_cut(np.log(rng.uniform(size=500)), 0.01, null) > 0 for _ in range(300)]
    assert np.mean(fired) <= 0.03


def test_the_excess_rule_holds_a_weak_poison_benjamini_hochberg_leaves():
    """100 poisoned rows at p < 0.02 in 1,000: Benjamini-Hochberg at 0.05 holds few of them;
    the excess rule, seeing far more small p-values than 2,000 clean rows give, holds most,
    at a much better F1."""
    rng = np.random.default_rng(1)
    null = np.sort(np.log(rng.uniform(size=2000)))
    log_p, poison = _weak_poison(rng)
    bh = benjamini_hochberg(log_p, 0.05, log=True)
    k = excess_cut(log_p, 0.01, null)
    held = bh.copy()
    held[np.argsort(log_p)[:k]] = True
    assert k > bh.sum()
    assert (held & poison).sum() >= 80 and _f1(held, poison) >= _f1(bh, poison) + 0.3
    assert (held & ~poison).sum() <= 30


def test_the_excess_rule_trusts_the_clean_rows_it_is_given_not_uniformity():
    """Clean rows whose combined p-values run small (as coarse tables give) are no excess
    when the calibration rows run as small: nothing is held. Against a uniform null the
    same batch would look poisoned."""
    rng = np.random.default_rng(2)
    skewed = np.log(rng.uniform(size=(2000 + 1000)) ** 2)
    null, batch = np.sort(skewed[:2000]), skewed[2000:]
    assert excess_cut(batch, 0.01, null) == 0
    assert excess_cut(batch, 0.01, np.sort(np.log(rng.uniform(size=2000)))) > 0


def test_decide_with_the_excess_rule_holds_a_superset_of_benjamini_hochberg():
    """decide() with a null and a level extends the run of rows Benjamini-Hochberg holds."""
    rng = np.random.default_rng(4)
    cal = {"a": Calibration.fit(rng.uniform(size=2000))}
    log_p, poison = _weak_poison(rng)
    scores = {"a": 1.0 - np.exp(log_p)}
    null = np.sort(np.log(cal["a"].p_values(rng.uniform(size=2000))))
    plain = decide(scores, cal, fdr=0.05)
    more = decide(scores, cal, fdr=0.05, excess_level=0.01, null=null)
    assert np.all(more.quarantined[plain.quarantined])
    assert _f1(more.quarantined, poison) > _f1(plain.quarantined, poison) + 0.2


def test_the_excess_rule_looks_only_at_the_anchored_detectors():
    """An excess of mild p-values seen only by a detector left out of ``anchored`` (a
    within-batch one, whose calibration is not at the batch's size) holds nothing beyond
    Benjamini-Hochberg; the same excess seen by an anchored detector does."""
    rng = np.random.default_rng(6)
    log_p, poison = _weak_poison(rng)
    cal = {name: Calibration.fit(rng.uniform(size=2000)) for name in ("a", "w")}
    mild = 1.0 - np.exp(log_p)  # the weak poison, as scores
    plain = rng.uniform(size=log_p.size)  # nothing to see
    null = np.sort(np.log(cal["a"].p_values(rng.uniform(size=2000))))
    scores = {"a": plain, "w": mild}
    alone = decide(scores, cal, fdr=0.05)
    left_out = decide(scores, cal, fdr=0.05, excess_level=0.01, null=null, anchored=("a",))
    assert np.array_equal(left_out.quarantined, alone.quarantined)
    seen = decide(
        {"a": mild, "w": plain}, cal, fdr=0.05, excess_level=0.01, null=null, anchored=("a",)
    )
    assert _f1(seen.quarantined, poison) >= 0.5


def test_the_row_level_holds_a_row_whatever_the_batch_size():
    """One row at p = 2e-4 among 29 clean rows, and among 2,999: Benjamini-Hochberg holds it
    in the small batch only (its first cut is fdr / n); with a per-row level of 1e-3 it is
    held in both, and a clean row is held only when its own p-value is that small."""
    rng = np.random.default_rng(8)
    cal = {"a": Calibration.fit(rng.exponential(size=20000), shape=0.0)}
    for n in (30, 3000):
        scores = {"a": np.r_[-np.log(2e-4), rng.exponential(size=n - 1)]}
        bh = decide(scores, cal, fdr=0.05)
        floor = decide(scores, cal, fdr=0.05, row_level=1e-3)
        assert bh.quarantined[0] == (n == 30)
        assert floor.quarantined[0]
        clean_held = floor.quarantined[1:] & ~bh.quarantined[1:]
        assert np.all(floor.combined[1:][clean_held] <= 1e-3)


def test_decide_quarantines_only_rows_far_beyond_calibration_and_explains_them():
    """A clean batch keeps every row; planted extremes are held, each with a reason."""
    rng = np.random.default_rng(3)
    cal = {"a": Calibration.fit(rng.normal(size=500)), "b": Calibration.fit(rng.normal(size=500))}
    scores = {"a": rng.normal(size=300), "b": rng.normal(size=300)}
    clean = decide(scores, cal, fdr=0.05)
    assert clean.quarantined.sum() <= 2
    scores["a"][:10] = 8.0

    def explain(name, rows):
        return [f"{name} saw row {r}" for r in rows]

    out = decide(scores, cal, fdr=0.05, explain=explain)
    assert out.quarantined[:10].all()
    assert all("a saw row" in out.reasons[i] for i in range(10))
    assert all(out.reasons[i] == "" for i in np.nonzero(~out.quarantined)[0])
    assert np.all(out.suspicion[:10] > out.suspicion[10:].max())


def test_decide_batch_gives_every_row_one_place_and_a_truthful_stage():
    """Expectations, then the blocklist, then the detectors, then a batch hold: the first
    reason that applies names the stage, every reason is kept, and the counts add up."""
    cal = {"a": Calibration.fit(np.arange(100.0))}
    scored = np.array([0, 2, 3, 5])
    found = decide({"a": np.array([0.0, 1e6, 1.0, 2.0])}, cal, fdr=0.05)
    assert found.quarantined.tolist() == [False, True, False, False]
    out = decide_batch(
        6,
        failed={1: "failed expectation: x is missing", 4: "failed expectation: y"},
        blocked={4: "previously rejected", 5: "previously rejected"},
        scored=scored,
        detectors=found,
        scores={"a": np.array([0.0, 1e6, 1.0, 2.0])},
    )
    assert out.stage.tolist() == ["", "expectations", "detectors", "", "expectations", "blocklist"]
    assert out.reason[4] == "failed expectation: y; previously rejected"
    assert out.held_by() == {"expectations": 2, "blocklist": 1, "detectors": 1, "batch_hold": 0}
    assert np.isnan(out.suspicion[[1, 4]]).all() and np.isfinite(out.suspicion[scored]).all()
    assert np.isnan(out.scores["a"][1]) and out.scores["a"][2] == 1e6

    held = decide_batch(
        3,
        failed={0: "broken"},
        scored=np.array([1, 2]),
        detectors=decide({"a": np.zeros(2)}, cal, fdr=0.05),
        scores={"a": np.zeros(2)},
        batch_hold="batch held",
    )
    assert held.stage.tolist() == ["expectations", "batch_hold", "batch_hold"]
    assert held.reason[0] == "broken; batch held" and held.quarantined.all()


def test_decide_states_each_detectors_cut_as_its_share_of_the_threshold():
    """A detector flags a row (and is named in its reason) exactly when its p-value passes
    its weight times the batch's threshold; reports draw that same cut."""
    cal = {"a": Calibration.fit(np.arange(1000.0)), "b": Calibration.fit(np.arange(1000.0))}
    scores = {"a": np.array([5000.0, 10.0, 990.0]), "b": np.array([10.0, 10.0, 999.0])}
    out = decide(scores, cal, fdr=0.2, weights={"a": 3.0, "b": 1.0})
    assert out.p_cuts == pytest.approx((0.75 * out.threshold, 0.25 * out.threshold))
    for r in np.flatnonzero(out.quarantined):
        for j, name in enumerate(out.detectors):
            if out.p_values[r, j] <= out.p_cuts[j]:
                assert f"{name} (p=" in out.reasons[r]
    none = decide({"a": np.zeros(4)}, {"a": cal["a"]}, fdr=0.1)
    assert none.threshold == 0 and none.p_cuts == pytest.approx((0.1 / 4,))


def test_decide_rejects_a_bad_fdr():
    cal = {"a": Calibration.fit(np.arange(10.0))}
    with pytest.raises(
        ConfigError,
        match=r"The 'fdr' parameter of decide\(\) must be in \(0, 1\)\. Got 1\.5 instead\.",
    ):
        decide({"a": np.zeros(3)}, cal, fdr=1.5)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 5000), st.floats(1e-6, 0.2), st.data())
def test_the_excess_rule_may_skip_cuts_holding_no_more_than_their_mean(n, q, data):
    """``excess_cut`` computes tails only for cuts holding more than ``floor(n * t)`` rows,
    ``t`` the cut's p-value: a binomial's upper tail from at or below the floor of its mean
    is at least 1/2, above any significance level ``level / n`` (``level`` <= 1, ``n`` >= 2),
    however the clean share is raised above ``t``."""
    from scipy.stats import binom

    floor = int(np.floor(n * q))
    assume(floor >= 1)
    k = data.draw(st.integers(1, floor))
    share = data.draw(st.floats(q, 1.0))
    assert binom.sf(k - 1, n, share) >= 0.5 - 1e-12
