"""SumBasic picks by word frequency (worked by hand below) and keeps to its length budget."""

import pytest

from flowstone.cases import Case
from flowstone.systems.baselines import LeadSummariser
from flowstone.systems.compression import SumBasicSummariser, sumbasic_order, sumbasic_summary

# Content words: officials spoke tuesday | flood water closed roads | flood closed schools.
# p(flood) = p(closed) = 2/10, every other word 1/10. Weights: 0.1, 0.15, 0.1667 -> the third
# first; then flood and closed fall to 0.04: 0.1 against 0.07 -> the first, then the second.
DOC = "Officials spoke on Tuesday. Flood water closed the roads. The flood closed schools."


def test_order_is_sumbasics_by_hand():
    sentences = [
        "Officials spoke on Tuesday.",
        "Flood water closed the roads.",
        "The flood closed schools.",
    ]
    assert sumbasic_order(sentences) == [2, 0, 1]


def test_budget_keeps_the_first_pick_whole_and_later_ones_that_fit():
    # 13 words: 30% is 3.9, less than the first pick's 4, which is kept all the same
    assert sumbasic_summary(DOC, 0.3) == "The flood closed schools."
    # 70% is 9.1: the second pick (4 words) fits, the third (5) does not; document order
    assert sumbasic_summary(DOC, 0.7) == "Officials spoke on Tuesday. The flood closed schools."
    assert sumbasic_summary(DOC, 1.0) == DOC
    assert sumbasic_summary("One sentence only, however long it is.", 0.1) == (
        "One sentence only, however long it is."
    )


def test_a_pick_that_does_not_fit_lets_a_shorter_later_one_in():
    # 15 content words: p(rain) = p(towns) = 0.2, p(fell) = 0.133, the rest 0.067.
    # "Rain fell." weighs 0.167, the long one 0.133, "Schools shut." 0.067: the short first.
    # Then rain -> 0.04, fell -> 0.018: the long one weighs 0.094, still before the last.
    doc = (
        "Rain fell. Rain and more rain fell on towns, and towns lost power as towns flooded "
        "overnight. Schools shut."
    )
    sentences = [
        "Rain fell.",
        "Rain and more rain fell on towns, and towns lost power as towns flooded overnight.",
        "Schools shut.",
    ]
    assert sumbasic_order(sentences) == [0, 1, 2]
    # 19 words, half is 9.5: the 15-word second pick does not fit, the 2-word third does
    assert sumbasic_summary(doc, 0.5) == "Rain fell. Schools shut."


def test_it_differs_from_lead_and_names_its_ratio():
    case = Case(id="d", input=DOC, expected="x")
    assert SumBasicSummariser(0.3).predict([case])[0].output != (
        LeadSummariser(1).predict([case])[0].output
    )
    assert SumBasicSummariser(0.3).name == "sumbasic-30"
    assert SumBasicSummariser(0.3).fingerprint() != SumBasicSummariser(0.5).fingerprint()
    with pytest.raises(ValueError, match="ratio"):
        SumBasicSummariser(0)
