"""Systems compared pairwise on one suite: differences, intervals, corrected p-values, leaders."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flowstone.evaluation.comparison import ComparisonSettings, compare_systems
from flowstone.evaluation.statistics import compare_paired, holm


def _frame(scores: list[float | None], ids: list[str] | None = None) -> pd.DataFrame:
    ids = ids or [f"c{i}" for i in range(len(scores))]
    return pd.DataFrame({"case_id": ids, "m": [np.nan if s is None else s for s in scores]})


def test_a_clearly_better_system_leads_and_ties_stay_ties() -> None:
    rng = np.random.default_rng(7)
    base = rng.uniform(0.2, 0.6, 40)
    scores = {
        "weak": _frame(list(base)),
        "weak-too": _frame(list(np.clip(base + rng.normal(0, 0.01, 40), 0, 1))),
        "strong": _frame(list(base + 0.3)),
    }
    result = compare_systems("qa", scores, ["m"])
    m = result.metrics["m"]
    assert m.ranking[0] == "strong" and m.leaders == ["strong"]
    assert m.verdict("strong", "weak") == "better" and m.verdict("weak", "strong") == "worse"
    assert m.verdict("weak", "weak-too") == "no significant difference"
    # each pair's raw p-value is compare_paired's own; the adjusted ones are Holm's over them
    pair = next(p for p in m.pairs if {p.a, p.b} == {"strong", "weak"})
    alone = compare_paired(scores[pair.a]["m"], scores[pair.b]["m"], metric="m", a=pair.a, b=pair.b)
    assert pair.p_value == alone.p_value and pair.difference == pytest.approx(alone.difference)
    assert [p.p_adjusted for p in m.pairs] == pytest.approx(
        list(holm([p.p_value for p in m.pairs]))
    )
    assert all(p.correction == "holm" for p in m.pairs)
    assert result.to_dict()["metrics"]["m"]["leaders"] == ["strong"]


def test_binary_scores_use_mcnemar_on_the_cases_both_answered() -> None:
    a = _frame([1, 1, 0, 0, 1, 0, 1, None], [f"c{i}" for i in range(8)])
    b = _frame([1, 0, 0, 1, 1, 1, 1, 1, 1], [f"c{i}" for i in range(9)])  # c8: only b has it
    m = compare_systems("qa", {"a": a, "b": b}, ["m"]).metrics["m"]
    (pair,) = m.pairs
    assert pair.cases == 7 and pair.test == "mcnemar-exact"  # c7 invalid for a, c8 not in a
    assert pair.p_value == pytest.approx(stats.binomtest(2, 3, 0.5).pvalue)


def test_no_shared_case_is_an_error_not_a_tie() -> None:
    with pytest.raises(ValueError, match="share no case"):
        compare_systems("qa", {"a": _frame([0.1], ["x"]), "b": _frame([0.2], ["y"])}, ["m"])
    with pytest.raises(ValueError, match="needs two systems"):
        compare_systems("qa", {"a": _frame([0.1])}, ["m"], ComparisonSettings())


def _merged(left: pd.DataFrame, right: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The pairing as a merge on case_id states it (what _paired computed before)."""
    joined = (
        left[["case_id", "m"]]
        .rename(columns={"m": "a"})
        .merge(right[["case_id", "m"]].rename(columns={"m": "b"}), on="case_id", how="inner")
        .dropna(subset=["a", "b"])
    )
    return joined["a"].to_numpy(dtype=float), joined["b"].to_numpy(dtype=float)


def test_pairing_is_the_inner_merge_on_case_id_in_the_first_systems_order() -> None:
    from flowstone.evaluation.comparison import _paired

    rng = np.random.default_rng(3)
    ids = [f"c{i}" for i in range(25)]
    for _ in range(200):
        left_ids = list(rng.permutation(ids)[: rng.integers(1, 26)])
        right_ids = list(rng.permutation(ids)[: rng.integers(1, 26)])
        left = _frame([None if rng.random() < 0.2 else rng.random() for _ in left_ids], left_ids)
        right = _frame([None if rng.random() < 0.2 else rng.random() for _ in right_ids],
                       right_ids)  # fmt: skip
        x, y = _paired({"a": left, "b": right}, "a", "b", "m")
        want_x, want_y = _merged(left, right)
        assert x.tobytes() == want_x.tobytes() and y.tobytes() == want_y.tobytes()
    # a case answered twice (repeats) pairs every answer with every other, as the merge does
    left, right = _frame([0.1, 0.2, 0.3], ["c0", "c0", "c1"]), _frame([0.5, 0.6], ["c0", "c1"])
    x, y = _paired({"a": left, "b": right}, "a", "b", "m")
    want_x, want_y = _merged(left, right)
    assert list(x) == list(want_x) and list(y) == list(want_y) and len(x) == 3


def test_systems_that_answer_alike_get_the_same_figures_under_their_own_names() -> None:
    rng = np.random.default_rng(11)
    base = list(rng.uniform(0.2, 0.8, 30))
    better = list(np.clip(np.array(base) + rng.normal(0.1, 0.05, 30), 0, 1))
    scores = {"echo": _frame(base), "copy": _frame(base), "twin": _frame(base),
              "better": _frame(better)}  # fmt: skip
    m = compare_systems("qa", scores, ["m"]).metrics["m"]
    assert len(m.pairs) == 6 and m.leaders == ["better"]
    for pair in m.pairs:  # computed once for the three alike, each pair as if on its own
        alone = compare_paired(scores[pair.a]["m"], scores[pair.b]["m"], metric="m", a=pair.a,
                               b=pair.b)  # fmt: skip
        assert (pair.a, pair.b, pair.metric) == (alone.a, alone.b, "m")
        assert (pair.difference, pair.ci, pair.p_value, pair.test, pair.cases) == (
            alone.difference, alone.ci, alone.p_value, alone.test, alone.cases
        )  # fmt: skip
