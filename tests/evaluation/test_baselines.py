"""The local baselines are deterministic and do what their names say."""

from flowstone.cases import Case
from flowstone.systems.base import SystemRegistry
from flowstone.systems.baselines import (
    EchoSystem,
    LeadSummariser,
    NearestSentenceAnswerer,
    baseline_systems,
)

QA = Case(
    id="q",
    input="Which planet is known as the Red Planet?",
    expected="Mars",
    context="Venus is the hottest planet. Mars is known as the Red Planet because of iron oxide. Jupiter is the largest.",
)
DOC = Case(id="d", input="First sentence here. Second one follows! Third closes it.", expected="x")


def test_echo_and_lead():
    assert EchoSystem().predict([DOC])[0].output == DOC.input
    assert LeadSummariser(1).predict([DOC])[0].output == "First sentence here."
    assert LeadSummariser(2).predict([DOC])[0].output == "First sentence here. Second one follows!"


def test_nearest_sentence_finds_the_answer_sentence():
    out = NearestSentenceAnswerer().predict([QA])[0].output
    assert out.startswith("Mars is known as the Red Planet")


def test_progress_and_determinism():
    seen = []
    system = NearestSentenceAnswerer()
    first = system.predict([QA, DOC], progress=seen.append)
    second = system.predict([QA, DOC])
    assert seen == [1, 2]
    assert [p.output for p in first] == [p.output for p in second]


def test_fingerprint_changes_with_parameters():
    assert LeadSummariser(1).fingerprint() != LeadSummariser(2).fingerprint()
    assert LeadSummariser(1).fingerprint() == LeadSummariser(1).fingerprint()


def test_registry_rejects_bad_and_duplicate_names():
    registry = SystemRegistry(baseline_systems())
    assert registry.names == [
        "echo",
        "lead-1",
        "nearest-sentence",
        "bm25",
        "minilm-nearest",
        "sumbasic-30",
        "rule-paraphrase",
        "minilm-zero-shot",
    ]
    import pytest

    with pytest.raises(ValueError, match="twice"):
        registry.register(EchoSystem())
    bad = EchoSystem()
    bad.name = "a|b"
    with pytest.raises(ValueError, match="partition key"):
        SystemRegistry([bad])
