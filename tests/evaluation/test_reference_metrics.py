"""Per-case metrics against the reference libraries, each called in the same test: HF evaluate's
exact_match (its own script, loaded offline), rouge-score, nltk and sacrebleu."""

import importlib
import itertools
import os
from pathlib import Path

import pytest

from flowstone.evaluation import metrics

HF_EXACT_MATCH = Path(__file__).parent / "reference" / "hf_exact_match" / "exact_match.py"

# HF evaluate's doctest for exact_match
DOC_REFS = ["the cat", "theater", "YELLING", "agent007"]
DOC_PREDS = ["cat?", "theater", "yelling", "agent"]


@pytest.fixture(scope="module")
def hf_exact_match(tmp_path_factory):
    """HF evaluate's exact_match from the shipped script, with no network and no cache
    outside the test's temporary folder (evaluate reads these when it is imported)."""
    home = tmp_path_factory.mktemp("hf_home")
    for name, value in {
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home),
        "HF_MODULES_CACHE": str(home / "modules"),
    }.items():
        os.environ.setdefault(name, value)
    evaluate = importlib.import_module("evaluate")
    return evaluate.load(str(HF_EXACT_MATCH))


def hf_per_case(hf_exact_match, preds, refs, **options):
    """HF's exact_match is a mean; one case at a time gives the per-case values."""
    return [
        float(hf_exact_match.compute(predictions=[p], references=[r], **options)["exact_match"])
        for p, r in zip(preds, refs, strict=True)
    ]


# --- exact match ---------------------------------------------------------------------------


def test_exact_match_with_no_options_is_hf_evaluates(hf_exact_match):
    ours = metrics.exact_match(DOC_PREDS, DOC_REFS)
    theirs = hf_exact_match.compute(predictions=DOC_PREDS, references=DOC_REFS)["exact_match"]
    assert sum(ours) / len(ours) == pytest.approx(theirs) == pytest.approx(0.25)
    assert ours == hf_per_case(hf_exact_match, DOC_PREDS, DOC_REFS)


@pytest.mark.parametrize(
    ("options", "documented"),
    [  # HF evaluate's own doctest values for these options
        (
            {
                "regexes_to_ignore": ["the ", "yell"],
                "ignore_case": True,
                "ignore_punctuation": True,
            },
            0.5,
        ),
        (
            {
                "regexes_to_ignore": ["the ", "yell", "YELL"],
                "ignore_case": True,
                "ignore_punctuation": True,
            },
            0.75,
        ),
        (
            {
                "regexes_to_ignore": ["the ", "yell", "YELL"],
                "ignore_case": True,
                "ignore_punctuation": True,
                "ignore_numbers": True,
            },
            1.0,
        ),
    ],
)
def test_exact_match_options_match_hf_evaluates_doctest(hf_exact_match, options, documented):
    ours = metrics.exact_match(DOC_PREDS, DOC_REFS, **options)
    theirs = hf_exact_match.compute(predictions=DOC_PREDS, references=DOC_REFS, **options)
    assert (
        sum(ours) / len(ours) == pytest.approx(theirs["exact_match"]) == pytest.approx(documented)
    )


def test_exact_match_agrees_with_hf_case_by_case_on_every_option_combination(hf_exact_match):
    preds = [
        "The Cat!", "cat", "Agent 007.", "agent", "  spaced  ", "Ünïcode, yes", "42", "?", "état",
        "a-b", "The answer is 3", "HELLO world",
    ]  # fmt: skip
    refs = [
        "the cat", "Cat", "agent 007", "Agent007", "spaced", "ünïcode yes", "43", "!", "ÉTAT",
        "ab", "the answer is 4", "hello World.",
    ]  # fmt: skip
    for case, punct, numbers, regexes in itertools.product(
        [False, True], [False, True], [False, True], [None, [r"\s+"], ["^the ", "[0-9]"]]
    ):
        options = {"ignore_case": case, "ignore_punctuation": punct, "ignore_numbers": numbers}
        if regexes is not None:
            options["regexes_to_ignore"] = regexes
        ours = metrics.exact_match(preds, refs, **options)
        assert ours == hf_per_case(hf_exact_match, preds, refs, **options), options


def test_exact_match_squad_preset_keeps_the_old_normalisation():
    assert metrics.exact_match(["The Eiffel Tower!"], ["eiffel tower"], preset="squad") == [1.0]
    assert metrics.exact_match(["The Eiffel Tower!"], ["eiffel tower"]) == [0.0]
    assert metrics.exact_match(["“Paris”, an answer"], ["paris answer"], preset="squad") == [1.0]
    with pytest.raises(metrics.OptionError, match="unknown preset 'trivia'"):
        metrics.exact_match(["a"], ["a"], preset="trivia")
    with pytest.raises(metrics.OptionError, match="regexes_to_ignore"):
        metrics.exact_match(["a"], ["a"], regexes_to_ignore=["("])


def test_exact_match_several_references_takes_the_best(hf_exact_match):
    refs = [["Paris", "paris, France"], ["Berlin", "Bonn"]]
    ours = metrics.exact_match(["paris", "Bonn"], refs, ignore_case=True)
    assert ours == [1.0, 1.0]
    best = [
        max(hf_per_case(hf_exact_match, [p] * len(rs), rs, ignore_case=True))
        for p, rs in zip(["paris", "Bonn"], refs, strict=True)
    ]
    assert ours == best


# --- fuzzy match ---------------------------------------------------------------------------


def test_fuzzy_match_several_references_takes_the_best():
    from rapidfuzz import fuzz, utils

    refs = [["a completely different text", "this is a test!"]]
    expected = max(
        fuzz.token_sort_ratio("this is a test", r, processor=utils.default_process) for r in refs[0]
    )
    assert metrics.fuzzy_match(["this is a test"], refs) == [pytest.approx(expected / 100)]


# --- ROUGE ---------------------------------------------------------------------------------

SUMMARY_PRED = "The police killed the gunman.\nHe had taken hostages in a cafe."
SUMMARY_REF = "Police kill the gunman.\nThe hostages in the cafe were freed."


@pytest.mark.parametrize("variant", ["rouge1", "rouge2", "rougeL", "rougeLsum"])
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_f_precision_recall_are_rouge_scores(variant, use_stemmer):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([variant], use_stemmer=use_stemmer)
    preds = [SUMMARY_PRED, "the cats were running fast", "nothing in common"]
    refs = [SUMMARY_REF, "the cat was running", "a reference"]
    expected = [scorer.score(r, p)[variant] for p, r in zip(preds, refs, strict=True)]
    for suffix, field in (("", "fmeasure"), ("_precision", "precision"), ("_recall", "recall")):
        ours = metrics.compute(f"{variant}{suffix}", preds, refs, use_stemmer=use_stemmer)
        assert ours == pytest.approx([getattr(s, field) for s in expected])


def test_rouge_defaults_are_rouge_scores():
    from rouge_score import rouge_scorer

    assert metrics.METRICS["rouge1"].options == {"use_stemmer": False}
    assert metrics.METRICS["rougeLsum"].options == {"use_stemmer": False, "split_summaries": False}
    default = rouge_scorer.RougeScorer(["rouge1"])  # use_stemmer=False there too
    pred, ref = "the cats were running", "the cat was running"
    assert metrics.compute("rouge1", [pred], [ref]) == [
        pytest.approx(default.score(ref, pred)["rouge1"].fmeasure)
    ]


def test_rouge_several_references_keeps_rouge_scores_best_by_f():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge2"])
    refs = ["the cat sat on the mat", "a cat was sitting on a mat", "dogs bark"]
    pred = "a cat sat on a mat"
    best = scorer.score_multi(refs, pred)["rouge2"]
    assert metrics.compute("rouge2", [pred], [refs]) == [pytest.approx(best.fmeasure)]
    assert metrics.compute("rouge2_precision", [pred], [refs]) == [pytest.approx(best.precision)]
    assert metrics.compute("rouge2_recall", [pred], [refs]) == [pytest.approx(best.recall)]


@pytest.fixture
def english_punkt(tmp_path, monkeypatch):
    """A Punkt model folder with empty (untrained) parameters where nltk looks for
    punkt_tab/english. Real model data cannot be downloaded here; what the test checks is
    that FlowStone and rouge-score split with the same nltk tokenizer."""
    import nltk
    from nltk import tokenize

    folder = tmp_path / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (folder / name).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])
    tokenize._get_punkt_tokenizer.cache_clear()
    yield
    tokenize._get_punkt_tokenizer.cache_clear()


def test_rougelsum_split_summaries_is_rouge_scores(english_punkt):
    from rouge_score import rouge_scorer

    pred = "The police killed the gunman. He had taken hostages in a cafe."
    ref = "Police kill the gunman. The hostages in the cafe were freed."
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], split_summaries=True)
    split = scorer.score(ref, pred)["rougeLsum"]
    ours = metrics.compute("rougeLsum", [pred], [ref], split_summaries=True)
    assert ours == [pytest.approx(split.fmeasure)]
    unsplit = metrics.compute("rougeLsum", [pred], [ref])[0]
    assert unsplit != pytest.approx(split.fmeasure)  # one "sentence" without splitting


def test_rougelsum_split_summaries_without_nltk_data_says_how_to_get_it(monkeypatch):
    from nltk import tokenize

    monkeypatch.setattr(tokenize, "punkt_model_available", lambda language="english": False)
    with pytest.raises(metrics.OptionError, match="punkt_tab"):
        metrics.compute("rougeLsum", ["a. b."], ["a. b."], split_summaries=True)


# --- BLEU ----------------------------------------------------------------------------------

HYP = "The cat, which was black, sat on the mat; it didn't move."
REF = "The black cat sat on the mat: it did not move at all."
REF2 = "A black cat was sitting on the mat and didn't move."


def test_bleu_whitespace_tokenizer_is_nltk_on_split_text():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    ours = metrics.bleu([HYP], [[REF, REF2]], tokenizer="whitespace", lowercase=False)
    theirs = sentence_bleu(
        [REF.split(), REF2.split()], HYP.split(), smoothing_function=SmoothingFunction().method1
    )
    assert ours == [pytest.approx(theirs, abs=1e-12)]


@pytest.mark.parametrize("name", ["13a", "intl"])
def test_bleu_sacrebleu_tokenizers_are_sacrebleus(name):
    from nltk.translate.bleu_score import sentence_bleu
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International

    tokenizer = Tokenizer13a() if name == "13a" else TokenizerV14International()
    ours = metrics.bleu([HYP], [REF], tokenizer=name, lowercase=False, smoothing=0, max_order=2)
    theirs = sentence_bleu([tokenizer(REF).split()], tokenizer(HYP).split(), weights=(0.5, 0.5))
    assert ours == [pytest.approx(theirs, abs=1e-12)]


def test_bleu_13a_with_no_smoothing_is_sacrebleus_value():
    """Unsmoothed BLEU with every n-gram order matched is one formula in both libraries."""
    import sacrebleu

    hyp = "the quick brown fox jumps over the lazy dog near the river bank"
    ref = "the quick brown fox jumped over the lazy dog near the river bank today"
    ours = metrics.bleu([hyp], [ref], tokenizer="13a", lowercase=False, smoothing=0)[0]
    theirs = sacrebleu.sentence_bleu(hyp, [ref], smooth_method="none", tokenize="13a").score
    assert ours * 100 == pytest.approx(theirs, rel=1e-9)
    corpus = metrics.corpus_bleu([hyp, HYP], [ref, REF], tokenizer="13a", lowercase=False)
    assert corpus * 100 == pytest.approx(
        sacrebleu.corpus_bleu([hyp, HYP], [[ref, REF]], smooth_method="none").score, rel=1e-9
    )


def test_bleu_unknown_tokenizer_is_refused_by_name():
    with pytest.raises(metrics.OptionError, match="unknown BLEU tokenizer 'moses'") as err:
        metrics.bleu(["a"], ["a"], tokenizer="moses")
    assert err.value.option == "tokenizer"


# --- embedding similarity -------------------------------------------------------------------


@pytest.mark.slow  # loads the real MiniLM
def test_embedding_similarity_keeps_negative_cosines_unless_asked():
    from flowstone.evaluation import embedding

    # a pair from the demo's qa suite (an answer against the lead sentence of its context)
    pred = "Sydney is Australia's largest city and the home of its famous opera house."
    refs = ["Canberra", "The opera house is in Sydney."]
    raw = embedding.cosine_similarities([pred, pred], refs)
    assert metrics.embedding_similarity([pred], [refs]) == [pytest.approx(max(raw), abs=1e-6)]
    negative = ("Quarterly revenue grew by four percent.", "Die Katze schläft auf dem Sofa.")
    cosine = embedding.cosine_similarities([negative[0]], [negative[1]])[0]
    assert cosine < 0
    assert metrics.embedding_similarity([negative[0]], [negative[1]]) == [pytest.approx(cosine)]
    assert metrics.embedding_similarity([negative[0]], [negative[1]], clip_negative=True) == [0.0]
