"""The ceiling benchmark's best-cut F1 and its informed scores do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from ceiling import best_f1


def test_best_f1_is_the_best_top_k_cut():
    """Poison ranked 1st, 2nd and 4th: the best cut is the top 4 (F1 6/7) or top 2 (0.8)."""
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.0])
    poison = np.array([True, True, False, True, False, False])
    assert best_f1(poison, score) == pytest.approx(6 / 7)


def test_best_f1_cuts_only_between_distinct_scores():
    """Tied rows are flagged together: a poisoned row tied with three clean ones cannot be
    taken alone."""
    score = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    poison = np.array([True, False, False, False, False])
    assert best_f1(poison, score) == pytest.approx(2 / 5)
    assert np.isnan(best_f1(np.zeros(5, dtype=bool), score))


def test_best_f1_of_a_perfect_ranking_is_one():
    rng = np.random.default_rng(0)
    poison = rng.random(200) < 0.1
    assert best_f1(poison, poison + rng.random(200) * 0.5) == 1.0
