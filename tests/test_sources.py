"""Memory across batches: a sequential test per landing source, and one pooled over all."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from landed import empty as empty_landing
from poisonguard.cli import main
from poisonguard.config import Config, load_config
from poisonguard.demo import LABEL
from poisonguard.errors import ConfigError, GateError, ReviewError
from poisonguard.gate import gate
from poisonguard.pipeline import fit_guard
from poisonguard.review import review
from poisonguard.sources import (
    BETS,
    FLOW_BETS,
    POOLED,
    THRESHOLDS,
    BatchCounts,
    Event,
    FlowCounts,
    LabelFlows,
    RowTally,
    SourceReplay,
    SourceTest,
    alarms,
    batch_counts,
    log_evalues,
    size_drift,
    source_states,
)
from poisonguard.store import open_store
from test_backdoor_window import _window_entry
from test_reference import _land

NO_RATES = np.zeros(len(THRESHOLDS))


def _clean(rng: np.random.Generator, n: int = 100) -> np.ndarray:
    return rng.uniform(size=n)


def _poisoned(rng: np.random.Generator, n: int = 100, k: int = 2, p: float = 1e-5) -> np.ndarray:
    return np.concatenate([rng.uniform(size=n - k), np.full(k, p)])


def _counts(p: np.ndarray, rates=NO_RATES, near_copies: int = 0, flows=()) -> BatchCounts:
    """A batch's counts from its rows' p-values over the anchored detectors."""
    return batch_counts(RowTally.of(np.log(p), None), rates, near_copies, flows)


def _events(source: str, batches: list[np.ndarray], rates=NO_RATES, start: int = 0) -> list[Event]:
    return [
        Event(source, f"{source}-{start + i}", len(p), _counts(p, rates))
        for i, p in enumerate(batches)
    ]


def _first_alarm(events: list[Event], test: SourceTest, source: str) -> int | None:
    """The 1-based position, among ``source``'s batches, of the batch that raised its alarm."""
    state = source_states(events, test)[source]
    if not state.alarmed:
        return None
    mine = [e.batch_id for e in events if e.source == source and e.counts is not None]
    return mine.index(state.alarmed_at) + 1


# ----------------------------------------------------------------------------- the test itself


def test_a_batch_e_value_averages_at_most_one_on_clean_rows():
    """Each bet's batch e-value has expectation at most 1 when rows' p-values are valid: the
    statistic is a fair bet against a clean source, whatever the batch size."""
    rng = np.random.default_rng(0)
    for n in (10, 100, 1000):
        e = np.array(
            [np.exp(log_evalues(_counts(_clean(rng, n), NO_RATES), 1.0)) for _ in range(4000)]
        )
        assert e.shape == (4000, len(BETS))
        # Monte Carlo mean within a few standard errors of at most 1.
        assert (e.mean(axis=0) <= 1 + 4 * e.std(axis=0) / np.sqrt(len(e))).all(), (n, e.mean(0))


def test_a_clean_source_does_not_alarm_in_two_hundred_batches():
    """200 batches of 100 valid p-values each, five sources: no alarm, pooled or not."""
    rng = np.random.default_rng(1)
    events = [e for s in "abcde" for e in _events(s, [_clean(rng) for _ in range(200)])]
    states = source_states(events, SourceTest())
    assert alarms(states) == []
    assert states["a"].batches == 200 and states[POOLED].batches == 1000


def test_a_little_poison_in_every_batch_alarms_within_a_few_batches():
    """Two rows far in the tail among 98 clean ones, batch after batch: the source alarms
    within five batches; the evidence in words names it."""
    rng = np.random.default_rng(2)
    events = _events("partner-b", [_poisoned(rng) for _ in range(16)])
    at = _first_alarm(events, SourceTest(), "partner-b")
    assert at is not None and at <= 5
    words = source_states(events, SourceTest())["partner-b"].describe(SourceTest())
    assert words.startswith("partner-b: 32 of its 1,600 scored rows at p <= 0.001")
    assert "alarm at batch partner-b-" in words


def test_a_long_clean_history_does_not_slow_the_alarm():
    """Poison that starts after 500 clean batches alarms as fast as poison from the start:
    the statistic does not bank a clean past against later evidence."""
    rng = np.random.default_rng(3)
    history = _events("s", [_clean(rng) for _ in range(500)])
    fresh = _events("s", [_poisoned(rng) for _ in range(16)], start=500)
    late = _first_alarm(history + fresh, SourceTest(), "s")
    early = _first_alarm(fresh, SourceTest(), "s")
    assert late is not None and early is not None
    assert late - 500 <= early + 1


def test_poison_split_over_many_sources_alarms_the_pooled_test_and_its_sources():
    """One poisoned row per batch in each of eight sources: the pooled test alarms, and so does
    every source that contributed; a clean source beside them does not."""
    rng = np.random.default_rng(4)
    events = []
    for b in range(12):
        for s in range(8):
            events += _events(f"src{s}", [_poisoned(rng, k=1, p=1e-4)], start=b)
        events += _events("honest", [_clean(rng)], start=b)
    test = SourceTest()
    states = source_states(events, test)
    assert states[POOLED].alarmed
    flagged = {s.source for s in alarms(states)} - {POOLED}
    assert len(flagged) >= 4 and "honest" not in flagged
    assert all(states[s].pooled_alarm for s in flagged if not _alone(events, s, test))


def _alone(events: list[Event], source: str, test: SourceTest) -> bool:
    return source_states([e for e in events if e.source == source], test)[source].alarmed


def test_clearing_a_source_restarts_its_test_and_the_pooled_one():
    rng = np.random.default_rng(5)
    events = _events("s", [_poisoned(rng) for _ in range(8)])
    assert source_states(events, SourceTest())["s"].alarmed
    after = [*events, Event("s", cleared=True), *_events("s", [_clean(rng)], start=8)]
    states = source_states(after, SourceTest())
    assert not states["s"].alarmed and not states[POOLED].alarmed
    assert states["s"].batches == 1


def test_trusted_rows_that_reach_the_tail_raise_what_a_clean_source_may_send():
    """When trusted rows themselves reach p <= 1e-4 one time in a hundred (a table with honest
    extremes), a source sending as many is not evidence; the same rows against a table whose
    trusted rows never do are."""
    rng = np.random.default_rng(6)
    batches = [_poisoned(rng, k=1, p=5e-5) for _ in range(30)]
    honest = np.array([0.01, 0.01, 0.01])
    calm = source_states(_events("s", batches, honest), SourceTest())["s"]
    assert not calm.alarmed and calm.statistic < 10
    assert source_states(_events("s", batches), SourceTest())["s"].alarmed


def test_the_counts_survive_the_audit_entry_round_trip():
    counts = _counts(np.array([0.5, 0.005, 0.0005, 0.00001]), [0.0, 0.001, 0.0], 2)
    assert counts.rows == 6 and counts.below == (5, 4, 3)
    assert BatchCounts.from_dict(counts.as_dict()) == counts


def test_within_batch_evidence_counts_once_a_batch_however_many_rows_share_it():
    """Rows the within-batch detectors find in one dense corner share their evidence: the
    batch counts it once, as one more row at the smallest p-value times the rows
    (Bonferroni). Four rows of one cluster at p = 5e-8 weigh what one does, far short of
    an alarm, where counted row by row they would alarm a new source at once; and the
    batch e-value stays a fair bet when the within-batch p-values are valid."""
    anchored = np.log(np.full(100, 0.5))
    within = np.zeros(100)
    within[:4] = np.log(5e-8)
    tally = RowTally.of(anchored, within)
    assert tally.within_p() == pytest.approx(100 * 5e-8)
    one = within.copy()
    one[1:4] = 0.0
    np.testing.assert_allclose(
        log_evalues(batch_counts(tally, NO_RATES), 2.0),
        log_evalues(batch_counts(RowTally.of(anchored, one), NO_RATES), 2.0),
    )
    once = batch_counts(tally, NO_RATES)
    by_row = _counts(np.exp(np.minimum(anchored, within)))
    assert not source_states([Event("s", "s-0", 100, once)], SourceTest())["s"].alarmed
    assert source_states([Event("s", "s-0", 100, by_row)], SourceTest())["s"].alarmed
    assert BatchCounts.from_dict(once.as_dict()) == once
    rng = np.random.default_rng(9)
    e = np.array(
        [
            np.exp(
                log_evalues(
                    batch_counts(RowTally.of(*np.log(rng.uniform(size=(2, 100)))), NO_RATES), 1.0
                )
            )
            for _ in range(4000)
        ]
    )
    assert (e.mean(axis=0) <= 1 + 4 * e.std(axis=0) / np.sqrt(len(e))).all(), e.mean(0)


def test_a_flood_in_one_batch_is_held_but_cannot_alarm_its_source_alone(demo_project):
    """Ten copies of one honest row in a demo batch: the gate holds them (the copy detector
    reads the batch), and the batch's e-value for its source stays below the alarm under
    every bet, where the same rows' combined p-values counted one by one would alarm it."""
    config = load_config(demo_project / "poisonguard.toml")
    guard = fit_guard(config, open_store(config))
    clean = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet")
    batch = pd.concat([clean.iloc[:90], clean.iloc[[0] * 10]], ignore_index=True)
    batch["row_id"] = np.arange(len(batch)) + 10**6
    _, _, found = guard.judge(batch)
    assert found.quarantined[90:].all()
    assert found.tally.rows == 100 and guard.anchored_ and found.tally.within_p() is not None
    limit = np.log(1.0 / config.sources.alarm_level)
    counted = log_evalues(batch_counts(found.tally, guard.clean_rates_), config.sources.slack)
    assert counted.max() < limit
    rows = RowTally.of(np.log(found.combined), None)
    assert log_evalues(batch_counts(rows, guard.clean_rates_), config.sources.slack).max() > limit


# ----------------------------------------------------------------------------- label flows

CLASSES = ("a", "b", "c", "d")


def _model_rows(rng: np.random.Generator, n: int, mix=None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of a model's log-probabilities over four classes and labels drawn from them
    (a calibrated model), the rows' likeliest class drawn from ``mix``."""
    mix = np.full(4, 0.25) if mix is None else np.asarray(mix)
    top = rng.choice(4, size=n, p=mix)
    logits = rng.normal(0.0, 1.0, size=(n, 4))
    logits[np.arange(n), top] += rng.uniform(0.0, 5.0, size=n)
    log_q = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=np.exp(row)) for row in log_q])
    return log_q, y


def _flows(rng: np.random.Generator) -> LabelFlows:
    return LabelFlows.fit(*_model_rows(rng, 2000), CLASSES)


def _flow_events(
    source: str, flows: LabelFlows, batches: list[tuple[np.ndarray, np.ndarray]], start: int = 0
) -> list[Event]:
    """Events whose rows are all unremarkable to the row-level tests, with their label flows."""
    out = []
    for i, (log_q, y) in enumerate(batches):
        tally = FlowCounts(flows)
        tally.add(flows.log_evalues(log_q, y))
        counts = _counts(np.full(len(y), 0.5), NO_RATES, flows=tally.pairs())
        out.append(Event(source, f"{source}-{start + i}", len(y), counts))
    return out


def _relabelled(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``n`` rows where ``k`` rows the model gives to class 0 carry label 2."""
    log_q, y = _model_rows(rng, n)
    mine = np.flatnonzero(np.exp(log_q[:, 0]) > 0.8)[:k]
    y[mine] = 2
    return log_q, y


def test_a_batch_label_flow_e_value_averages_at_most_one_when_labels_follow_the_model():
    """Labels drawn as a calibrated model says: every pair's batch e-value, under every bet,
    has expectation at most 1."""
    rng = np.random.default_rng(20)
    flows = _flows(rng)
    e = np.array([np.exp(flows.log_evalues(*_model_rows(rng, 50))) for _ in range(3000)])
    assert e.shape == (3000, 4, 4, len(FLOW_BETS))
    bound = 1 + 4 * e.std(axis=0) / np.sqrt(len(e))
    assert (e.mean(axis=0) <= bound).all()
    assert (flows.weight.diagonal() == 0).all() and (flows.weight <= 0.5).all()


def test_rows_moved_from_one_class_to_another_alarm_their_source_when_no_row_stands_out():
    """Two rows a batch that the model gives to 'a' arrive labelled 'c', every row's p-value
    unremarkable: the source alarms within ten batches (eight here) through its label
    flows, and the words name the flow. Without flows the same batches raise nothing."""
    rng = np.random.default_rng(21)
    flows = _flows(rng)
    events = _flow_events("partner", flows, [_relabelled(rng, 50, 2) for _ in range(16)])
    at = _first_alarm(events, SourceTest(), "partner")
    assert at is not None and at <= 10
    state = source_states(events, SourceTest())["partner"]
    assert state.flow == ("a", "c")
    assert "rows labelled 'c' that the trusted rows' model gives to 'a'" in state.describe(
        SourceTest()
    )
    bare = [
        Event(e.source, e.batch_id, e.rows_in, _counts(np.full(50, 0.5), NO_RATES)) for e in events
    ]
    assert not source_states(bare, SourceTest())["partner"].alarmed


def test_a_clean_source_with_its_own_mix_of_classes_does_not_alarm_on_label_flows():
    """200 batches whose rows are mostly of class 'b' (features that say so, labels that
    follow them), five sources: a mix of classes the trusted rows explain is not evidence."""
    rng = np.random.default_rng(22)
    flows = _flows(rng)
    events = [
        e
        for s in "vwxyz"
        for e in _flow_events(
            s, flows, [_model_rows(rng, 50, [0.1, 0.7, 0.1, 0.1]) for _ in range(200)]
        )
    ]
    states = source_states(events, SourceTest())
    assert alarms(states) == []


def test_clean_sources_beside_one_that_alarms_on_label_flows_are_not_swept_into_its_alarm():
    """A partner moving labels alarms, and with it the pooled test; clean sources sending at
    the same time, their labels following the model, stay clear: their evidence is weighed
    over every pair and bet as their statistic is, not by the one of sixteen pairs and four
    bets that a clean source's evidence favours by chance."""
    rng = np.random.default_rng(23)
    flows = _flows(rng)
    events = []
    for b in range(16):
        events += _flow_events("partner", flows, [_relabelled(rng, 120, 6)], start=b)
        for s in "xyz":
            events += _flow_events(s, flows, [_model_rows(rng, 50)], start=b)
    states = source_states(events, SourceTest())
    assert states["partner"].alarmed and states[POOLED].alarmed
    assert {s.source for s in alarms(states)} == {"partner", POOLED}


def test_a_flow_spread_one_batch_a_source_alarms_every_source_that_sends_it_after_the_pool():
    """Twenty-four sources each send one batch of 120 rows, up to five of class 'a' labelled
    'c', beside three clean sources: the pooled test alarms on the flow a -> c, and from
    then on every source whose batch carries that flow is alarmed (its batch held), though
    its evidence weighed over every pair would not be; the clean sources stay clear."""
    rng = np.random.default_rng(24)
    flows = _flows(rng)
    events = []
    for b in range(24):
        events += _flow_events(f"partner-{b}", flows, [_relabelled(rng, 120, 5)], start=b)
        for s in "xyz":
            events += _flow_events(s, flows, [_model_rows(rng, 50)], start=b)
    states = source_states(events, SourceTest())
    assert states[POOLED].alarmed and states[POOLED].flow == ("a", "c")
    first = int(str(states[POOLED].alarmed_at).rsplit("-", 1)[1])
    assert first < 12
    assert not any(states[s].alarmed for s in "xyz")
    late = [f"partner-{b}" for b in range(first, 24)]
    assert all(states[s].alarmed and states[s].pooled_alarm for s in late)
    assert all(states[s].pooled_flow == ("a", "c") for s in late)
    assert "with every source's evidence pooled, on rows labelled 'c'" in states[late[0]].describe(
        SourceTest()
    )


def test_a_model_that_overstates_odds_on_trusted_rows_is_trusted_less():
    """Trusted rows labelled 'c' where an overconfident model gives 'a' high odds: the pair's
    weight falls below the slack's, so honest rows like them are not evidence."""
    rng = np.random.default_rng(23)
    log_q, y = _model_rows(rng, 2000)
    honest = np.flatnonzero(np.exp(log_q[:, 0]) > 0.8)[:200]
    y[honest] = 2  # 'c' happens where the model says 'a' far more often than it claims
    weight = LabelFlows.fit(log_q, y, CLASSES).weight
    assert weight[0, 2] < 0.1 < weight[1, 2]


def test_label_flows_add_up_over_chunks_and_survive_the_audit_entry():
    rng = np.random.default_rng(24)
    flows = _flows(rng)
    log_q, y = _model_rows(rng, 90)
    whole = flows.log_evalues(log_q, y)
    tally = FlowCounts(flows)
    for part in np.array_split(np.arange(90), [0, 7, 40]):
        tally.add(flows.log_evalues(log_q[part], y[part]))
    assert tally.log_e is not None and np.allclose(tally.log_e, whole)
    counts = _counts(np.array([0.5]), NO_RATES, flows=tally.pairs())
    assert len(counts.flows) == 12
    assert BatchCounts.from_dict(counts.as_dict()) == counts
    assert FlowCounts(None).pairs() == () and FlowCounts(flows).pairs() == ()


def _flows_by_hand(events: list[Event], test: SourceTest, source: str) -> float:
    """A source's log statistic computed pair by pair from its own events (no clears):
    the Shiryaev-Roberts recursion per pair and bet, a pair followed from its first record
    on (an e-value of 1 in a batch without it), averaged with the row counts' statistic."""
    counts = np.full(len(BETS), -np.inf)
    pairs: dict[tuple[str, str], np.ndarray] = {}
    for ev in events:
        if ev.source != source or ev.counts is None:
            continue
        counts = np.logaddexp(counts, 0.0) + log_evalues(ev.counts, test.slack)
        recorded = {(a, c): np.asarray(e) for a, c, e in ev.counts.flows}
        for pair in set(pairs) | set(recorded):
            before = pairs.get(pair, np.full(len(FLOW_BETS), -np.inf))
            pairs[pair] = np.logaddexp(before, 0.0) + recorded.get(pair, 0.0)
    mean_counts = np.logaddexp.reduce(counts) - np.log(counts.size)
    if not pairs:
        return float(mean_counts)
    flat = np.concatenate(list(pairs.values()))
    return float(
        np.logaddexp(mean_counts, np.logaddexp.reduce(flat) - np.log(flat.size)) - np.log(2)
    )


def test_the_label_flow_statistic_follows_each_pair_from_its_first_record():
    """Two sources, pairs that appear late or skip batches: each source's statistic is the
    pair-by-pair recursion's (the replay keeps every pair as a row of one array)."""
    rng = np.random.default_rng(31)
    test = SourceTest(alarm_level=0)
    every = [(a, c) for a in CLASSES for c in CLASSES if a != c]
    events = []
    for i in range(40):
        source = "p" if i % 3 else "q"
        # Early batches know two classes only; later ones every pair, some batches none.
        known = every[:2] if i < 10 else every if i % 7 else []
        shift = 0.3 if source == "p" else -0.2
        flows = tuple((a, c, tuple(rng.normal(shift, 0.5, len(FLOW_BETS)))) for a, c in known)
        counts = _counts(rng.uniform(size=50), NO_RATES, flows=flows)
        events.append(Event(source, f"{source}-{i}", 50, counts))
    states = source_states(events, test)
    for source in ("p", "q"):
        expected = _flows_by_hand(events, test, source)
        assert np.log(states[source].statistic) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert states["p"].flow in every and states["p"].flow_statistic > 1.0
    # Taken in pieces, with a clear between them, and a copy added to: the same states.
    events.insert(25, Event("q", cleared=True))
    whole = source_states(events, test)
    replay = SourceReplay(test).add(events[:10])
    before = replay.states()
    replay.copy().add(events[10:])
    assert replay.states() == before
    assert replay.add(events[10:30]).add(events[30:]).states() == whole
    assert replay.sizes("p") == tuple(e.rows_in for e in events if e.source == "p")[-20:]


def test_the_source_events_read_once_are_not_read_again_and_match_a_fresh_read(demo_project):
    """Source events are kept per ledger with the entry they run to: new entries are added
    as they come, and equal a read of the whole chain; a store made again in the same place
    is read afresh."""
    from poisonguard.initialize import init_dataset
    from poisonguard.store import core

    config = load_config(demo_project / "poisonguard.toml")
    clean = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet")
    empty_landing(config.landing)
    rng = np.random.default_rng(3)
    store = open_store(config)
    _land(config, "partner/a.parquet", _batch(clean, rng, 0, flips=0))
    first = store.source_events()
    assert [e.source for e in first] == ["partner"]
    _land(config, "partner/b.parquet", _batch(clean, rng, 1, flips=3))
    kept = store.source_events()
    assert len(kept) == 2 and kept[0] == first[0]
    store.clear_source("partner", actor="ana", note="checked")
    _land(config, "partner/c.parquet", _batch(clean, rng, 2, flips=3))
    kept = store.source_events()
    assert [e.cleared for e in kept] == [False, False, True, False]
    replayed = store.source_replay(config.sources).states()
    core._kept_events.clear()
    assert store.source_events() == kept
    assert replayed == source_states(kept, config.sources) != {}
    # The same place, a new store: its own (no) events, not the old ones.
    (demo_project / "poisonguard.toml").unlink()
    shutil.rmtree(config.store)
    (demo_project / "store.key").unlink()
    init_dataset(
        demo_project / "trusted.parquet", label=LABEL, directory=demo_project, id_column="row_id"
    )
    assert open_store(config).source_events() == []


def test_a_batch_far_from_a_source_s_usual_size_is_drift():
    assert size_drift([100] * 4, 5000) is None  # too little history to say
    assert size_drift([90, 100, 110, 100, 95], 900) is None
    drift = size_drift([90, 100, 110, 100, 95], 3000)
    assert drift is not None and "3,000 rows" in drift and "median 100" in drift
    assert size_drift([1000] * 6, 20) is not None


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [("alarm_level", 1.5, r"in \[0, 1\)"), ("slack", 0.5, ">= 1"), ("alarm_level", "x", "float")],
)
def test_bad_source_settings_are_one_line_errors(demo_project, key, value, rule):
    path = demo_project / "poisonguard.toml"
    text, n = re.subn(
        rf"^{key} = .*$", f"{key} = {value!r}".replace("'", '"'), path.read_text(), flags=re.M
    )
    assert n == 1  # the demo's config states every [sources] key
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"sources\.{key}.*{rule}") as info:
        load_config(path)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- in the pipeline


def _batch(clean: pd.DataFrame, rng: np.random.Generator, i: int, flips: int) -> pd.DataFrame:
    rows = clean.sample(60, random_state=i).reset_index(drop=True)
    rows["row_id"] = np.arange(100_000 + 1000 * i, 100_000 + 1000 * i + len(rows))
    hit = rng.choice(len(rows), flips, replace=False)
    rows.loc[hit, LABEL] = (rows.loc[hit, LABEL] + 5) % 10
    return rows


def _moved_threes(
    demo_project, source: Callable[[int], str], seed: int
) -> tuple[Config, list[str], set[int]]:
    """Eight demo batches of 30 rows, two of each batch's three 3s relabelled 8, landed from
    ``source(i)`` past a gate set to hold almost nothing row by row (fdr 1e-6, no per-row
    level, no excess rule): the config, the batches and the moved rows' ids."""
    config = load_config(demo_project / "poisonguard.toml").with_detection(
        fdr=1e-6, row_level=0.0, excess_level=0.0
    )
    clean = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet")
    empty_landing(config.landing)
    threes = clean[clean[LABEL] == 3].sample(frac=1.0, random_state=seed)
    others = clean[clean[LABEL] != 3].sample(frac=1.0, random_state=seed)
    moved_ids: set[int] = set()
    batches = []
    for i in range(8):
        rows = pd.concat([threes.iloc[3 * i : 3 * i + 3], others.iloc[27 * i : 27 * i + 27]])
        rows = rows.reset_index(drop=True)
        rows.loc[:1, LABEL] = 8  # two of its three 3s, relabelled
        moved_ids |= set(rows.loc[:1, "row_id"].tolist())
        batches.append(_land(config, f"{source(i)}/b{i}.parquet", rows).batch_id)
    return config, batches, moved_ids


def test_rows_that_follow_the_label_flow_a_source_alarmed_on_leave_the_training_set(
    demo_project,
):
    """A partner moves two rows of 3 to 8 in every batch past a gate set to hold almost
    nothing row by row (fdr 1e-6, no per-row level, no excess rule), so they are accepted:
    the source alarms on that flow, and the moved rows it sent before leave the training
    set for review (stage ``rescan``), each with the flow in its reason; the partner's
    honest rows go with them as the alarm's take-back, not as rows of the flow."""
    config, batches, moved_ids = _moved_threes(demo_project, lambda i: "partner-b", seed=0)
    store = open_store(config)
    state = source_states(store.source_events(), config.sources)["partner-b"]
    assert state.alarmed and state.flow == ("3", "8")
    held = pd.concat([store.quarantine_frame(b) for b in batches], ignore_index=True)
    by_flow = held[held["pg_reason"].str.contains("label flows", regex=False)]
    assert len(by_flow) and (by_flow["pg_stage"] == "rescan").all()
    assert set(by_flow["row_id"].tolist()) <= moved_ids
    assert (
        "follow the label flow it alarmed on (labelled '8', given to '3'"
        in by_flow["pg_reason"].iloc[0]
    )
    # The rest of what the partner sent before the alarm left as the alarm's take-back.
    assert not set(store.clean_frame()["pg_batch"]) & set(batches)
    rest = held[(held["pg_stage"] == "rescan") & ~held.index.isin(by_flow.index)]
    assert len(rest) and rest["pg_reason"].str.contains("since its last clean checkpoint").all()


def test_rows_of_a_flow_spread_over_sources_leave_when_their_source_sends_after_the_pool(
    demo_project,
):
    """Four partners each move two rows of 3 to 8 in a batch, twice, past a gate set to hold
    almost nothing row by row: no partner alarms on its own evidence, the pooled test alarms
    on the flow 3 -> 8, and a partner swept into it takes the moved rows it sent before out
    of the training set with its next batch (stage ``rescan``, the pooled flow in the
    reason); none of the partners' honest rows go with them."""
    config, batches, moved_ids = _moved_threes(demo_project, lambda i: f"partner-{i % 4}", seed=1)
    store = open_store(config)
    states = source_states(store.source_events(), config.sources)
    assert states[POOLED].alarmed and states[POOLED].flow == ("3", "8")
    partners = [states[f"partner-{k}"] for k in range(4)]
    assert all(s.pooled_alarm for s in partners if s.alarmed)
    assert any(s.pooled_flow == ("3", "8") for s in partners)
    held = pd.concat([store.quarantine_frame(b) for b in batches], ignore_index=True)
    pooled = held[held["pg_reason"].str.contains("every source's evidence pooled alarmed on")]
    assert len(pooled) and (pooled["pg_stage"] == "rescan").all()
    assert set(pooled["row_id"].tolist()) <= moved_ids
    assert not set(pooled["row_id"].tolist()) & set(store.clean_frame()["row_id"].tolist())


def test_a_source_that_sent_a_spread_flow_once_gives_it_back_when_the_pool_alarms(demo_project):
    """Eight partners each send one batch with two rows of 3 relabelled 8, past a gate set to
    hold almost nothing row by row: the pooled test alarms on the flow 3 -> 8, and the
    partners it sweeps in at that batch, which never send again, give back the moved rows
    they sent (stage ``rescan``, the pooled flow in the reason), with no honest row."""
    config, batches, moved_ids = _moved_threes(demo_project, lambda i: f"partner-{i}", seed=2)
    store = open_store(config)
    states = source_states(store.source_events(), config.sources)
    assert states[POOLED].alarmed and states[POOLED].flow == ("3", "8")
    alarm = batches.index(states[POOLED].alarmed_at)
    assert alarm > 0
    earlier = batches[:alarm]  # each from a partner that sent nothing after it
    held = pd.concat([store.quarantine_frame(b) for b in earlier], ignore_index=True)
    pooled = held[held["pg_reason"].str.contains("every source's evidence pooled alarmed on")]
    assert len(pooled) and (pooled["pg_stage"] == "rescan").all()
    assert set(pooled["row_id"]) <= moved_ids
    detail = _window_entry(store, store.batch(batches[alarm]))["swept"]
    assert {b for found in detail for b in found["accepted_flagged"]} <= set(earlier)
    assert not set(pooled["row_id"]) & set(store.clean_frame()["row_id"])


def test_the_batch_that_raises_an_alarm_takes_back_what_its_source_sent_since_its_checkpoint(
    demo_project,
):
    """A partner sends three clean batches: the first is promoted into the reference, and
    a reviewer clears the partner after the second (its checkpoints). Then two flipped
    labels in every batch until it alarms. The batch that raises the alarm takes every
    batch the partner sent after its last checkpoint out of the training set for review
    (stage ``rescan``, the alarm in the reason, an audit entry); the batches up to the
    checkpoint and another source's batch stay."""
    config = load_config(demo_project / "poisonguard.toml")
    clean = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet")
    clean = clean.sample(frac=1.0, random_state=5).reset_index(drop=True)
    empty_landing(config.landing)
    store = open_store(config)

    def send(name: str, rows: pd.DataFrame, flips: int = 0) -> str:
        rows = rows.reset_index(drop=True)
        rows.loc[: flips - 1, LABEL] = (rows.loc[: flips - 1, LABEL] + 5) % 10
        return _land(config, name, rows).batch_id

    other = send("default-0.parquet", clean.iloc[:30])
    early = [send("partner-b/c0.parquet", clean.iloc[30:60])]
    if len(store.quarantine_frame(early[0])):  # promotion needs no row awaiting review
        review(store, early[0], "release", by="ana", note="checked")
    store.promote([early[0]], actor="ana")
    early.append(send("partner-b/c1.parquet", clean.iloc[60:90]))
    store.clear_source("partner-b", actor="ana", note="checked")
    after = [send("partner-b/c2.parquet", clean.iloc[90:120])]
    sent = []
    for i, start in enumerate(range(120, len(clean) - 24, 25)):
        batch_id = send(f"partner-b/f{i}.parquet", clean.iloc[start : start + 25], flips=2)
        state = source_states(store.source_events(), config.sources)["partner-b"]
        if state.alarmed:
            break
        sent.append(batch_id)
    assert state.alarmed_at == batch_id and sent, "no accepted poisoned batch before the alarm"
    taken = _window_entry(store, store.batch(batch_id))["alarm"]
    assert taken["batches"] == after + sent
    training = store.clean_frame()
    assert set(training["pg_batch"]) >= {other, *early}
    assert not set(training["pg_batch"]) & {*after, *sent, batch_id}
    back = pd.concat([store.quarantine_frame(b) for b in after + sent], ignore_index=True)
    back = back[back["pg_stage"] == "rescan"]  # the others were held when they arrived
    assert len(back) >= len(after) * 30
    assert back["pg_reason"].str.contains(f"alarmed at batch {batch_id}", regex=False).all()
    assert {e["batch_id"] for e in store.audit_log() if e["action"] == "rescan"} == {*after, *sent}


def test_a_source_that_alarms_has_its_batches_held_and_the_gate_refuses(demo_project, capsys):
    """A partner sending a few flipped labels in every batch alarms; its next batch is held
    whole with the evidence in words, `status`, `source` and the gate say so, and after
    a reviewer clears it (audited) the gate no longer names it. Batches of another source
    are not held."""
    config = load_config(demo_project / "poisonguard.toml")
    clean = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet")
    empty_landing(config.landing)
    rng = np.random.default_rng(7)
    held_whole = []
    for i in range(8):
        rec = _land(config, f"partner-b/b{i}.parquet", _batch(clean, rng, i, flips=4))
        store = open_store(config)
        frame = store.quarantine_frame(rec.batch_id)
        if len(frame) == rec.rows_in and frame["pg_reason"].str.contains("source alarm").all():
            held_whole.append(i)
    assert held_whole, "the partner never alarmed"
    assert held_whole[0] <= 5
    store = open_store(config)
    reason = store.quarantine_frame(store.batches()[-1].batch_id)["pg_reason"].iloc[0]
    assert "partner-b:" in reason and "scored rows at p <= 0.001" in reason
    assert "poisonguard source clear partner-b" in reason

    other = _land(config, "default-0.parquet", _batch(clean, rng, 50, flips=0))
    assert other.rows_quarantined < other.rows_in

    with pytest.raises(GateError, match="source alarm: partner-b"):
        gate(config)
    assert main(["status", "-c", str(config.path)]) == 0
    assert "ALARM partner-b" in capsys.readouterr().out
    assert main(["source", "-c", str(config.path)]) == 0
    assert "ALARM partner-b" in capsys.readouterr().out

    with pytest.raises(ReviewError, match="no landing source 'nobody'"):
        store.clear_source("nobody", actor="ana", note="x")
    assert (
        main(
            [
                "source",
                "clear",
                "partner-b",
                "-c",
                str(config.path),
                "--by",
                "ana",
                "--note",
                "flips found and rejected",
            ]
        )
        == 0
    )
    assert store.audit_log()[-1]["action"] == "source_clear"
    try:
        gate(config)
    except GateError as exc:
        assert not any("source alarm" in r for r in exc.reasons), exc.reasons
