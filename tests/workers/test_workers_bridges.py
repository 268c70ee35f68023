"""The shipped bridges in real workers: metrics (embedding model loaded once) and inference."""

from __future__ import annotations

import warnings

import pytest
from worker_helpers import HERE

from flowstone.workers.errors import RemoteError
from flowstone.workers.pool import WorkerPool

pytestmark = pytest.mark.slow  # real models (MiniLM, torch) loaded in real workers

PREDICTIONS = [
    "The cat sat on the mat.",
    "Paris is the capital of France.",
    "completely unrelated text",
]
REFERENCES = [
    "A cat was sitting on the mat.",
    "The capital of France is Paris.",
    "The stock market fell today.",
]


@pytest.fixture(scope="module")
def metrics_pool(tmp_path_factory):
    pool = WorkerPool(
        bridge="metrics",
        size=1,
        registry_dir=tmp_path_factory.mktemp("registry"),
        health_interval_s=None,
        start_timeout_s=120,
        bridge_options={"torch_threads": 1},
    ).start()
    yield pool
    pool.close()


def test_metrics_bridge_matches_in_process_scores(metrics_pool):
    from flowstone.evaluation import metrics

    for name in ("exact_match", "fuzzy_match", "bleu", "rouge1", "rougeL"):
        remote = metrics_pool.execute(
            "metrics:compute",
            {"metric": name, "predictions": PREDICTIONS, "references": REFERENCES},
        )
        assert remote == pytest.approx(metrics.compute(name, PREDICTIONS, REFERENCES)), name


def test_embedding_model_loads_once_per_worker(metrics_pool):
    load = metrics_pool.execute("metrics:warmup", timeout=120)
    again = metrics_pool.execute("metrics:warmup")
    assert again["seconds"] == 0.0  # second call finds the model loaded
    assert load["loaded"] is True
    (pid,) = metrics_pool.worker_pids()
    sims = metrics_pool.execute(
        "metrics:compute",
        {"metric": "embedding_similarity", "predictions": PREDICTIONS, "references": REFERENCES},
    )
    # Warm: the same worker served it with the model it had, and still has it loaded.
    assert metrics_pool.worker_pids() == [pid]
    assert metrics_pool.execute("metrics:warmup")["seconds"] == 0.0
    assert sims[0] > 0.7 and sims[1] > 0.8 and sims[2] < 0.4
    raw = metrics_pool.execute(
        "metrics:embedding_similarity", {"predictions": ["same"], "references": ["same"]}
    )
    assert raw[0] == pytest.approx(1.0, abs=1e-5)


def test_metrics_bridge_reports_bad_input_typed(metrics_pool):
    with pytest.raises(RemoteError, match="2 predictions but 1 references") as caught:
        metrics_pool.execute(
            "metrics:compute", {"metric": "bleu", "predictions": ["a", "b"], "references": ["a"]}
        )
    assert caught.value.remote_type == "ValueError"
    with pytest.raises(RemoteError, match="unknown metric 'blue'"):
        metrics_pool.execute(
            "metrics:compute", {"metric": "blue", "predictions": [], "references": []}
        )
    assert "embedding_similarity" in metrics_pool.execute("metrics:list_metrics")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch
    from tiny_model import TinyNet

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = TinyNet().eval()
    scripted = folder / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what baking ships
        torch.jit.script(net).save(str(scripted))
    state = folder / "tiny_state.pth"
    torch.save(net.state_dict(), state)
    inputs = [[0.5, -1.0, 2.0, 0.1], [1.0, 1.0, 1.0, 1.0], [-2.0, 0.0, 3.0, -0.5]]
    with torch.no_grad():
        expected = net(torch.tensor(inputs)).tolist()
    return {"scripted": str(scripted), "state": str(state), "inputs": inputs, "expected": expected}


def test_inference_bridge_torchscript_and_state_dict(models, tmp_path):
    with WorkerPool(
        bridge="inference",
        size=1,
        registry_dir=tmp_path,
        pythonpath=[str(HERE)],
        health_interval_s=None,
        bridge_options={"model_path": models["scripted"], "torch_threads": 1},
        start_timeout_s=120,
    ) as pool:
        out = pool.execute("inference:predict", {"inputs": models["inputs"]})
        _close(out, models["expected"])
        again = pool.execute("inference:load", {"path": models["scripted"]})
        assert again["cached"] is True  # loaded once, at start-up
        loaded = pool.execute(
            "inference:load",
            {"path": models["state"], "kind": "state_dict", "architecture": "tiny_model:TinyNet"},
        )
        assert loaded["cached"] is False and loaded["kind"] == "state_dict"
        out = pool.execute(
            "inference:predict", {"inputs": models["inputs"], "model": models["state"]}
        )
        _close(out, models["expected"])
        batches = list(
            pool.execute_stream(
                "inference:predict_batches",
                {"inputs": models["inputs"], "batch_size": 2, "model": models["scripted"]},
            )
        )
        assert len(batches) == 2 and len(batches[0]) == 2 and len(batches[1]) == 1
        _close(batches[0] + batches[1], models["expected"])
        with pytest.raises(RemoteError, match="2 models are loaded"):
            pool.execute("inference:predict", {"inputs": models["inputs"]})
        with pytest.raises(RemoteError, match="does not exist"):
            pool.execute("inference:load", {"path": str(tmp_path / "missing.pt")})
        assert pool.execute("inference:cleanup")["models_dropped"] == 2


def _close(got, expected, tol=1e-5):
    assert len(got) == len(expected)
    for row_got, row_expected in zip(got, expected, strict=True):
        assert row_got == pytest.approx(row_expected, abs=tol)
    return True
