"""Metrics against published reference values."""

import pytest

from flowstone.evaluation import metrics

# nltk's documented example (nltk.translate.bleu_score.sentence_bleu docstring).
HYPOTHESIS = (
    "It is a guide to action which ensures that the military always obeys the commands of the party"
)
REFERENCES = [
    "It is a guide to action that ensures that the military will forever heed Party commands",
    "It is the guiding principle which guarantees the military forces always being under the command of the Party",
    "It is the practical guide for the army always to heed the directions of the party",
]


def test_sentence_bleu_matches_nltk_documented_value():
    score = metrics.bleu([HYPOTHESIS], [REFERENCES], smoothing=0, lowercase=False)
    assert score == [pytest.approx(0.5045666840058485, abs=1e-12)]


def test_corpus_bleu_matches_nltk_documented_value():
    # nltk corpus_bleu docstring: two hypotheses, 0.5920778868801042
    hyp2 = "he read the book because he was interested in world history"
    ref2a = "he was interested in world history because he read the book"
    score = metrics.corpus_bleu([HYPOTHESIS, hyp2], [REFERENCES, [ref2a]], lowercase=False)
    assert score == pytest.approx(0.5920778868801042, abs=1e-12)


def test_bleu_order_and_smoothing_change_the_score():
    pred, ref = ["the cat sat on the mat"], ["the cat is on the mat"]
    unsmoothed = metrics.bleu(pred, ref, smoothing=0)[0]
    smoothed = metrics.bleu(pred, ref, smoothing=1)[0]
    bigram = metrics.bleu(pred, ref, max_order=2)[0]
    assert unsmoothed < smoothed < bigram
    with pytest.raises(ValueError, match="max_order"):
        metrics.bleu(pred, ref, max_order=0)


def test_rouge_matches_textbook_example():
    # The standard worked example: reference "the cat was found under the bed".
    pred, ref = ["the cat was under the bed"], ["the cat was found under the bed"]
    assert metrics.compute("rouge1", pred, ref) == [pytest.approx(12 / 13)]  # P=1, R=6/7
    assert metrics.compute("rouge2", pred, ref) == [
        pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    ]
    assert metrics.compute("rougeL", pred, ref) == [pytest.approx(12 / 13)]


def test_rouge_stemming_option():
    pred, ref = ["the cats were running"], ["the cat was running"]
    assert (
        metrics.compute("rouge1", pred, ref, use_stemmer=True)[0]
        > metrics.compute("rouge1", pred, ref, use_stemmer=False)[0]
    )


def test_fuzzy_match_matches_rapidfuzz_documented_values():
    # rapidfuzz README: ratio("this is a test", "this is a test!") == 96.55...
    assert metrics.fuzzy_match(
        ["this is a test"], ["this is a test!"], scorer="ratio", normalize=False
    ) == [pytest.approx(0.9655172413793104)]
    # token_sort_ratio("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear") == 100
    assert metrics.fuzzy_match(["fuzzy wuzzy was a bear"], ["wuzzy fuzzy was a bear"]) == [1.0]
    with pytest.raises(ValueError, match="unknown fuzzy scorer"):
        metrics.fuzzy_match(["a"], ["b"], scorer="nope")


def test_exact_match_normalisation_options():
    # HF evaluate's default compares the strings as they are; SQuAD's normalisation is a preset
    # (tests/evaluation/test_reference_metrics.py checks both against HF evaluate's script)
    assert metrics.exact_match(["The Eiffel Tower!"], ["eiffel tower"]) == [0.0]
    assert metrics.exact_match(["The Eiffel Tower!"], ["eiffel tower"], preset="squad") == [1.0]
    assert metrics.exact_match(["Paris"], ["paris"]) == [0.0]
    assert metrics.exact_match(["Paris"], ["paris"], ignore_case=True) == [1.0]


def test_length_mismatch_is_an_error_not_a_score():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.exact_match(["a", "b"], ["a"])


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(KeyError, match="known metrics: bleu"):
        metrics.get_metric("meteor")


def test_metric_options_come_from_signatures():
    assert metrics.METRICS["bleu"].options == {
        "max_order": 4,
        "smoothing": 1,
        "lowercase": True,
        "tokenizer": "regex",
    }
    assert metrics.METRICS["embedding_similarity"].options == {
        "batch_size": 64,
        "clip_negative": False,
        "model": "default",
    }
    assert metrics.METRICS["exact_match"].options == {
        "regexes_to_ignore": None,
        "ignore_case": False,
        "ignore_punctuation": False,
        "ignore_numbers": False,
        "preset": None,
    }


def test_option_values_are_checked_before_scoring():
    bleu = metrics.METRICS["bleu"]
    bleu.check_options({"tokenizer": "13a", "max_order": 2})
    for options, option in [
        ({"tokenizer": "moses"}, "tokenizer"),
        ({"max_order": "4"}, "max_order"),
        ({"lowercase": "yes"}, "lowercase"),
        ({"order": 3}, "order"),
    ]:
        with pytest.raises(metrics.OptionError) as err:
            bleu.check_options(options)
        assert err.value.option == option
