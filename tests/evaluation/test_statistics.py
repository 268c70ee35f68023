"""Bootstrap intervals, paired comparisons and the multiple-comparison correction, each
checked against scipy (or a brute-force enumeration) computed in the same test."""

import itertools
from dataclasses import asdict

import numpy as np
import pytest
from scipy import stats

from flowstone.evaluation import config
from flowstone.evaluation import statistics as st

RNG = np.random.default_rng(20261207)
SKEWED = RNG.beta(0.5, 2.0, 35)


def scipy_interval(values, seed, method="percentile", level=0.95, resamples=1000):
    return stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method=method,
        vectorized=True,
        batch=st.resample_rows(values.size),
        rng=np.random.default_rng(seed),
    ).confidence_interval


@pytest.mark.parametrize("n", [2, 7, 35, 3000])  # 3000 cases: drawn in chunks of rows
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_interval_equals_scipy_bootstrap_with_the_same_generator(n, method):
    values = RNG.beta(0.5, 2.0, n)
    ours = st.bootstrap_ci(values, seed=11, method=method, level=0.9)
    theirs = scipy_interval(values, 11, "BCa" if method == "bca" else method, level=0.9)
    assert ours.low == pytest.approx(theirs.low, abs=1e-12)
    assert ours.high == pytest.approx(theirs.high, abs=1e-12)
    assert (ours.level, ours.method) == (0.9, method)


def test_interval_agrees_with_scipy_across_seeds():
    """Different random draws: the two agree to Monte Carlo error, not by construction."""
    ours = st.bootstrap_ci(SKEWED, seed=1, resamples=20_000)
    theirs = scipy_interval(SKEWED, 2, resamples=20_000)
    assert ours.low == pytest.approx(theirs.low, abs=0.01)
    assert ours.high == pytest.approx(theirs.high, abs=0.01)
    assert ours.contains(float(SKEWED.mean()))


def test_interval_covers_the_true_mean_about_as_often_as_its_level():
    rng = np.random.default_rng(7)
    trials = 400
    covered = sum(
        st.bootstrap_ci(rng.beta(2.0, 5.0, 60), seed=i).contains(2 / 7) for i in range(trials)
    )
    assert 0.90 <= covered / trials <= 0.98, covered / trials


def test_interval_is_deterministic_for_a_seed():
    first = st.bootstrap_ci(SKEWED, seed=3)
    assert st.bootstrap_ci(SKEWED, seed=3) == first
    assert st.bootstrap_ci(SKEWED, seed=4) != first
    wider = st.bootstrap_ci(SKEWED, seed=3, level=0.99)
    assert wider.low < first.low and wider.high > first.high


def test_one_case_or_identical_scores_give_a_degenerate_interval():
    one = st.bootstrap_ci([0.7])
    assert (one.low, one.high, one.degenerate) == (0.7, 0.7, True)
    same = st.bootstrap_ci([1.0] * 12, method="bca")
    assert same.degenerate and same.low == 1.0
    assert not st.bootstrap_ci([0.0, 1.0]).degenerate
    assert st.bootstrap_ci([0.25, 0.75]).describe() == "0.250–0.750 (95% CI)"


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        ([0.5, np.nan, 0.2], {}, "1 of 3 scores are NaN"),
        ([], {}, "no scores"),
        ([[0.1, 0.2]], {}, "1-D"),
        ([0.1, 0.2], {"level": 1.0}, r"level must be in \(0, 1\)"),
        ([0.1, 0.2], {"level": 0}, r"level must be in \(0, 1\)"),
        ([0.1, 0.2], {"resamples": 99}, "at least 100"),
        ([0.1, 0.2], {"method": "basic"}, "unknown interval method"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        st.bootstrap_ci(values, what="bleu", **kwargs)


def test_mcnemar_for_zero_one_scores_equals_scipy_binomtest():
    a = (RNG.random(60) < 0.6).astype(float)
    b = np.where(RNG.random(60) < 0.3, 1.0, a)
    comparison = st.compare_paired(a, b, metric="exact_match", a="base", b="new")
    b_only, a_only = int(((b == 1) & (a == 0)).sum()), int(((a == 1) & (b == 0)).sum())
    assert comparison.test == "mcnemar-exact"
    assert comparison.p_value == stats.binomtest(b_only, b_only + a_only, 0.5).pvalue
    assert comparison.difference == pytest.approx(b.mean() - a.mean())


def test_permutation_p_value_is_exact_for_few_cases():
    """Eight cases, 2^8 sign patterns within the permutations: the p-value is the share of
    sign flips whose mean difference is at least as extreme (scipy's two-sided rule)."""
    a = np.array([0.2, 0.5, 0.1, 0.9, 0.4, 0.35, 0.6, 0.3])
    b = a + np.array([0.1, 0.05, 0.2, -0.02, 0.15, 0.0, 0.12, 0.08])
    d = b - a
    flips = np.array(list(itertools.product([1, -1], repeat=d.size)))
    null = (flips * d).mean(axis=1)
    observed = d.mean()
    tol = 1e-14 * max(1.0, abs(observed))  # scipy's tolerance for ties
    greater, less = np.mean(null >= observed - tol), np.mean(null <= observed + tol)
    expected = min(1.0, 2 * min(greater, less))
    comparison = st.compare_paired(a, b, metric="rouge1", a="base", b="new")
    assert comparison.test == "paired-permutation"
    assert comparison.p_value == pytest.approx(expected, abs=1e-12)


def test_permutation_p_value_agrees_with_scipy_across_seeds():
    a = RNG.random(40)
    b = np.clip(a + RNG.normal(0.04, 0.1, 40), 0, 1)
    ours = st.compare_paired(a, b, metric="m", a="A", b="B", permutations=20_000, seed=1)
    theirs = stats.permutation_test(
        (b, a),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=20_000,
        rng=2,
    ).pvalue
    assert ours.p_value == pytest.approx(theirs, abs=0.01)


def test_paired_interval_resamples_cases_together():
    a = RNG.random(30)
    b = np.clip(a + RNG.normal(0.05, 0.05, 30), 0, 1)
    comparison = st.compare_paired(a, b, metric="m", a="A", b="B", seed=5)
    theirs = stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(y - x, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=1000,
        method="percentile",
        rng=np.random.default_rng(5),
    ).confidence_interval
    assert comparison.ci.low == pytest.approx(theirs.low, abs=1e-12)
    assert comparison.ci.high == pytest.approx(theirs.high, abs=1e-12)
    # the spread both systems share cancels: far narrower than either mean's own interval
    own = st.bootstrap_ci(b, seed=5)
    assert comparison.ci.high - comparison.ci.low < (own.high - own.low) / 3
    assert comparison.significant and comparison.verdict == "better"


def test_no_difference_on_any_case_gives_p_one():
    scores = RNG.random(10)
    same = st.compare_paired(scores, scores, metric="m", a="A", b="B")
    assert (same.p_value, same.difference, same.significant) == (1.0, 0.0, False)
    assert same.ci.degenerate and same.verdict == "no significant difference"
    binary = np.array([1.0, 0.0, 1.0])
    assert st.compare_paired(binary, binary, metric="m", a="A", b="B").p_value == 1.0


def test_paired_comparison_refuses_unpaired_or_invalid_scores():
    with pytest.raises(ValueError, match="same cases in the same order"):
        st.compare_paired([0.1, 0.2], [0.1], metric="m", a="A", b="B")
    with pytest.raises(ValueError, match="m of B: 1 of 2 scores are NaN"):
        st.compare_paired([0.1, 0.2], [0.1, np.nan], metric="m", a="A", b="B")


def test_holm_adjusts_step_down_and_bh_is_scipys():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone, back in input order
    assert st.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert st.holm([]).size == 0
    assert st.adjust(p, "bh") == pytest.approx(stats.false_discovery_control(p, method="bh"))
    with pytest.raises(ValueError, match="unknown correction"):
        st.adjust(p, "sidak")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        st.holm([0.2, 1.5])


def test_correction_decides_significance_on_adjusted_p_values():
    a = RNG.random(40)
    clear = st.compare_paired(a, np.clip(a + 0.05, 0, 1), metric="m", a="A", b="B")
    borderline = st.compare_paired(
        a, a + RNG.normal(0.01, 0.03, 40), metric="m", a="A", b="C", seed=1
    )
    corrected = st.correct([clear, borderline])
    assert [c.correction for c in corrected] == ["holm", "holm"]
    assert all(c.p_adjusted >= c.p_value for c in corrected)
    assert corrected[0].significant
    assert corrected[1].significant == (corrected[1].p_adjusted < 0.05)


def test_settings_defaults_match_the_statistics_defaults():
    """config.py cannot import the statistics module (numpy, scipy at load): its copies of the
    limits must stay equal."""
    assert config.MIN_RESAMPLES == st.MIN_RESAMPLES
    assert config.INTERVAL_METHODS == st.METHODS
    assert asdict(config.StatisticsSettings()) == {
        "confidence_level": st.DEFAULT_LEVEL,
        "resamples": st.DEFAULT_RESAMPLES,
        "seed": st.DEFAULT_SEED,
        "method": "percentile",
    }
