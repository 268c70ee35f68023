"""The retrieval baselines choose the sentence their measure ranks first: BM25 as bm25s scores
it, MiniLM by the cosine sentence-transformers itself computes."""

import math
import subprocess
import sys

import pytest

from flowstone.cases import Case
from flowstone.systems.retrieval import BM25Answerer, DenseNearestSentence, bm25_scores
from flowstone.text import content_words

# The first sentence says "city" three times; BM25 saturates repeats and weighs the rarer
# "museum", "glass" and "opened" of the second higher.
MUSEUM = Case(
    id="m",
    input="Which city opened a glass museum?",
    expected="Brill",
    context=(
        "The city of Brill is the city where the city council first met. "
        "In 1990 Brill opened a museum of glass. "
        "The city park covers most of the old town."
    ),
)
# No content word in common with its answer sentence: only meaning can find it.
KITTEN = Case(
    id="k",
    input="Which pet did the children adopt?",
    expected="a kitten",
    context=(
        "The weather stayed cold and grey all week. "
        "The kids took in a stray kitten they found behind the shed. "
        "Their school closed early on Friday afternoon."
    ),
)


def test_bm25_scores_are_the_librarys_own_and_lucenes_formula():
    import bm25s

    sentences = [
        "The city of Brill is the city where the city council first met.",
        "In 1990 Brill opened a museum of glass.",
        "The city park covers most of the old town.",
    ]
    ours = bm25_scores(MUSEUM.input, sentences)

    corpus = [content_words(s) for s in sentences]
    query = content_words(MUSEUM.input)
    library = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    library.index(corpus, show_progress=False)
    assert list(ours) == pytest.approx(list(library.get_scores(query)))

    # Lucene's BM25 by hand: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 * norm)
    avgdl = sum(map(len, corpus)) / len(corpus)

    def by_hand(doc):
        total = 0.0
        for term in set(query):
            df = sum(term in d for d in corpus)
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (len(corpus) - df + 0.5) / (df + 0.5))
                total += idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * len(doc) / avgdl))
        return total

    assert list(ours) == pytest.approx([by_hand(d) for d in corpus], rel=1e-5)
    # the sentence with "city" three times loses to the one with the rarer words
    assert int(ours.argmax()) == 1


def test_bm25_answers_with_its_top_sentence_and_ties_go_first():
    out = BM25Answerer().predict([MUSEUM])[0].output
    assert out == "In 1990 Brill opened a museum of glass."
    # a question of stopwords only scores 0 everywhere: the first sentence
    blank = Case(id="b", input="What is it?", expected="x", context=MUSEUM.context)
    assert BM25Answerer().predict([blank])[0].output.startswith("The city of Brill")
    one = Case(id="o", input="He kicked the bucket.", expected="He died.")
    assert BM25Answerer().predict([one])[0].output == one.input


def test_bm25_fingerprint_names_its_settings():
    assert BM25Answerer().params()["method"] == "lucene"
    assert BM25Answerer(k1=1.2).fingerprint() != BM25Answerer().fingerprint()
    assert BM25Answerer().params()["bm25s"] == "0.3.16"  # the version pinned in pyproject


@pytest.mark.slow  # loads the real MiniLM
def test_minilm_picks_the_sentence_nearest_the_question():
    from sentence_transformers import util

    from flowstone.encoder import load_encoder

    sentences = [s.strip() + "." for s in KITTEN.context.rstrip(".").split(". ")]
    model = load_encoder()
    cosines = util.cos_sim(model.encode([KITTEN.input]), model.encode(sentences))[0].tolist()
    nearest = max(range(len(sentences)), key=cosines.__getitem__)
    assert sentences[nearest].startswith("The kids took in a stray kitten")

    predictions = DenseNearestSentence().predict([KITTEN, MUSEUM])
    assert predictions[0].output == sentences[nearest]
    assert predictions[1].output == "In 1990 Brill opened a museum of glass."
    # the lexical baseline, with no word in common, falls back to the first sentence
    from flowstone.systems.baselines import NearestSentenceAnswerer

    assert NearestSentenceAnswerer().predict([KITTEN])[0].output != sentences[nearest]


def test_listing_and_one_sentence_inputs_load_neither_torch_nor_bm25s(repo_root):
    code = (
        "import sys\n"
        "from flowstone.cases import Case\n"
        "from flowstone.systems.registry import default_systems\n"
        "registry = default_systems()\n"
        "[s.fingerprint() for s in registry]\n"
        "one = [Case(id='p', input='Water expands when it freezes.', expected='x')]\n"
        "assert registry.get('minilm-nearest').predict(one)[0].output == one[0].input\n"
        "assert registry.get('bm25').predict(one)[0].output == one[0].input\n"
        "heavy = {'torch', 'sentence_transformers', 'bm25s'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
