"""Statistics against published values (Newcombe 1998, Table I) and exact binomial sums."""

from __future__ import annotations

import pytest

from cai.evaluation.stats import (
    binomial_two_sided_p,
    length_stats,
    mcnemar_exact,
    quantile,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion",
        # Statistics in Medicine 17:857-872, Table I, method 3 (score, no correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # The Wikipedia/statsmodels example 8/10.
        (8, 10, 0.4902, 0.9433),
    ],
)
def test_wilson_interval_matches_published_values(successes, n, low, high):
    interval = wilson_interval(successes, n)
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)
    assert interval.rate == pytest.approx(successes / n)


def test_wilson_interval_at_all_successes_reaches_one_and_mirrors_zero():
    top = wilson_interval(20, 20)
    bottom = wilson_interval(0, 20)
    assert top.high == 1.0
    assert top.low == pytest.approx(1 - bottom.high)


def test_wilson_interval_of_nothing_is_uninformative():
    interval = wilson_interval(0, 0)
    assert (interval.rate, interval.low, interval.high) == (None, 0.0, 1.0)


def test_wilson_interval_widens_with_confidence():
    narrow = wilson_interval(30, 50, confidence=0.8)
    wide = wilson_interval(30, 50, confidence=0.99)
    assert wide.low < narrow.low < 0.6 < narrow.high < wide.high


@pytest.mark.parametrize(("successes", "n"), [(-1, 3), (4, 3)])
def test_wilson_interval_refuses_impossible_counts(successes, n):
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(successes, n)


def test_binomial_p_values_are_exact_tail_sums():
    # 1 vs 9 discordant: 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024.
    assert binomial_two_sided_p(1, 10) == 22 / 1024
    assert binomial_two_sided_p(9, 10) == 22 / 1024
    # 3 vs 12: 2 * (1 + 15 + 105 + 455) / 2^15.
    assert binomial_two_sided_p(3, 15) == 2 * 576 / 2**15
    # A perfectly balanced split is no evidence at all.
    assert binomial_two_sided_p(5, 10) == 1.0
    assert binomial_two_sided_p(0, 0) == 1.0


def test_binomial_p_value_survives_large_counts():
    assert 0.0 < binomial_two_sided_p(400, 1000) < 1e-9


def test_mcnemar_counts_discordant_pairs_only():
    base = [True] * 5 + [False] * 10 + [True] * 1 + [False] * 4
    stage = [True] * 5 + [True] * 10 + [False] * 1 + [False] * 4
    result = mcnemar_exact(base, stage)
    assert (result.n, result.both, result.neither, result.a_only, result.b_only) == (
        20,
        5,
        4,
        1,
        10,
    )
    # 1 vs 10 discordant: 2 * (1 + 11) / 2^11.
    assert result.p_value == pytest.approx(24 / 2048)
    assert result.difference == pytest.approx(9 / 20)


def test_mcnemar_identical_vectors_give_p_one():
    assert mcnemar_exact([True, False, True], [True, False, True]).p_value == 1.0


def test_mcnemar_refuses_unpaired_vectors():
    with pytest.raises(ValueError, match="same instructions"):
        mcnemar_exact([True], [True, False])


def test_quantile_interpolates_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.9) == pytest.approx(7.6)  # numpy.quantile(values, 0.9)
    assert quantile([5.0], 0.9) == 5.0


def test_length_stats_summarise_and_tolerate_empty():
    stats = length_stats([10, 20, 30, 40])
    assert stats.mean == 25.0
    assert stats.median == 25.0
    assert stats.p90 == pytest.approx(37.0)
    assert (stats.min, stats.max, stats.n) == (10, 40, 4)
    assert length_stats([]).mean is None
