"""The two demo models ``make demo`` bakes: the packaged all-MiniLM-L6-v2 and a small text-free
classifier FlowStone trains itself, so the demo needs no download.

The classifier learns a synthetic task (Gaussian class centres pushed through a fixed random
non-linearity, with label noise) that it cannot solve perfectly, so accuracy retention after
baking is a real measurement rather than 1.0 by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

FEATURES = 256
CLASSES = 10
HIDDEN = 512


class DemoClassifier(nn.Module):
    """An MLP of the size that baking pays off for: big enough that its matrix products, not
    Python overhead, dominate a batch."""

    input_shape = (FEATURES,)

    def __init__(self, features: int = FEATURES, hidden: int = HIDDEN, classes: int = CLASSES):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synthetic_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic features and labels; the same task for every seed, other samples."""
    task = torch.Generator().manual_seed(1234)
    centres = torch.randn(CLASSES, FEATURES, generator=task) * 0.6
    mixing = torch.randn(FEATURES, FEATURES, generator=task) / FEATURES**0.5
    samples = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=samples)
    x = centres[labels] + torch.randn(n, FEATURES, generator=samples)
    x = torch.tanh(x @ mixing) * 2.0
    noisy = torch.rand(n, generator=samples) < 0.05
    labels = torch.where(noisy, torch.randint(0, CLASSES, (n,), generator=samples), labels)
    return x, labels


def train_classifier(
    epochs: int = 3, n: int = 10000, seed: int = 0
) -> tuple[DemoClassifier, float]:
    """Train on ``n`` samples; returns the model and its accuracy on held-out data."""
    torch.manual_seed(seed)
    model = DemoClassifier()
    x, y = synthetic_data(n, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(n)
        for start in range(0, n, 256):
            idx = order[start : start + 256]
            optimiser.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimiser.step()
    model.eval()
    vx, vy = synthetic_data(2000, seed=2)
    with torch.no_grad():
        accuracy = float((model(vx).argmax(1) == vy).float().mean())
    return model, accuracy


CLASSIFIER_CONFIG = """\
# Bake settings for the demo classifier (see README: Model baking).
task: classifier
architecture: flowstone.baking.demo_models:DemoClassifier
input_shape: [256]
validation: demo_classifier.validation.npz
passes:                 # the fastest of bench/bench_baking_classifier.py's recipes
  - name: quantize_dynamic
  - name: torchscript
quality:
  metric: accuracy_retention
  threshold: 0.99
batch_sizes: [1, 32]
speed: {floor: 1.0, max_rounds: 6}   # rounds until the ratio's 95% CI is within 10%, at most 6
"""


def write_demo_classifier(folder: Path, name: str = "demo_classifier") -> Path:
    """Train the classifier and write ``NAME.pt`` (state dict), its validation data and
    ``NAME.bake.yaml`` into ``folder`` (a staging folder; ``flowstone models add`` copies it
    into the drop folder). Returns the state dict's path."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    model, _ = train_classifier()
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), str(path))
    vx, vy = synthetic_data(2000, seed=2)
    np.savez(folder / f"{name}.validation.npz", x=vx.numpy(), y=vy.numpy())
    (folder / f"{name}.bake.yaml").write_text(CLASSIFIER_CONFIG.replace("demo_classifier", name))
    return path


INTENT_CONFIG = """\
# Bake settings for the intent classifier (see README: Classifier systems): a head over the
# packaged MiniLM's sentence embeddings, so a bake of it can answer the intent suite.
task: classifier
architecture: flowstone.baking.demo_models:DemoClassifier
architecture_kwargs: {features: 384, hidden: 512, classes: %(classes)d}
input_shape: [384]
validation: intent_classifier.validation.npz  # the training texts' embeddings and labels
labels: [%(labels)s]
text_features: default  # its input: the packaged MiniLM's embedding of the case's text
passes:
  - name: quantize_dynamic
  - name: torchscript
quality:
  metric: accuracy_retention
  threshold: 0.99
batch_sizes: [1, 32]
speed: {floor: 1.0, max_rounds: 6}
"""


def intent_training_data() -> tuple[list[str], list[str]]:
    """The shipped intent texts and labels (``data/intents_train.jsonl``, written for
    FlowStone; the intent suite's cases are kept apart from them)."""
    import json

    path = Path(__file__).parent / "data" / "intents_train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def write_intent_classifier(folder: Path, name: str = "intent_classifier",
                            epochs: int = 200) -> Path:  # fmt: skip
    """Train a classifier head on the packaged MiniLM's embeddings of the shipped intent texts
    and write ``NAME.pt``, its validation data and ``NAME.bake.yaml`` (with its labels and
    text features) into ``folder``. Returns the state dict's path."""
    import numpy as np

    from flowstone import encoder

    texts, names = intent_training_data()
    labels = sorted(set(names))
    # the packaged MiniLM, as `text_features: default` runs it (flowstone.embedders)
    x = torch.from_numpy(np.asarray(encoder.encode(texts), dtype=np.float32))
    y = torch.tensor([labels.index(n) for n in names])
    torch.manual_seed(0)
    model = DemoClassifier(features=x.shape[1], hidden=HIDDEN, classes=len(labels))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), str(path))
    np.savez(folder / f"{name}.validation.npz", x=x.numpy(), y=y.numpy())
    config = INTENT_CONFIG % {"classes": len(labels), "labels": ", ".join(labels)}
    (folder / f"{name}.bake.yaml").write_text(config.replace("intent_classifier", name))
    return path


MINILM_CONFIG = """\
# Bake settings for the demo's all-MiniLM-L6-v2 (see README: Model baking).
task: embedding
recipe: auto            # measure the candidate recipes on this host, keep the fastest that passes
search_budget_s: 25     # the demo's bound on that search (cached per host: a rerun does not search)
validation: demo_pairs.jsonl  # 300 of the 1,255 held-out pairs (the demo's time budget)
quality:
  metric: spearman_rho  # fidelity to the original on the held-out pairs
  threshold: 0.99
  task_suites: [paraphrase]   # and no worse than the original on the paraphrase suite
  non_inferiority: {margin: 0.01, confidence: 0.95}  # the int8 recipes lower paraphrase
                        # cosines by about 0.004 on average: a 0.005 margin fails them
speed: {floor: 1.0, max_rounds: 4}  # and not slower than the original (upper CI bound of the
                                    # throughput ratio); at most 4 rounds, else "noisy"
batch_sizes: [1, 32]
"""


DEMO_PAIRS = 300


def write_demo_pairs(folder: Path) -> Path:
    """Every fourth of the shipped held-out pairs (300, all kinds of pair), as the demo MiniLM's
    validation file in its drop folder: the search and the quality step then encode a quarter
    of the sentences, which the demo's three minutes need. Never the gold set."""
    import json

    from flowstone.baking.fidelity import load_fidelity_pairs

    texts, pairs = load_fidelity_pairs()
    chosen = pairs[:: max(1, len(pairs) // DEMO_PAIRS)][:DEMO_PAIRS]
    path = folder / "demo_pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"a": texts[a], "b": texts[b]}) + "\n" for a, b, _ in chosen)
    )
    return path


TASK_SUITE_LINES = ("  task_suites: [paraphrase]", "  non_inferiority:")


def write_minilm_config(folder: Path, suites: list[str] | None = None) -> Path:
    """The demo MiniLM's bake.yaml, written into ``folder`` for ``flowstone models add``.
    ``suites``: the suites this deployment has; without the shipped paraphrase suite (a demo
    on suites of one's own) the bake is gated on fidelity and speed only."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "minilm.bake.yaml"
    text = MINILM_CONFIG
    if suites is not None and "paraphrase" not in suites:
        text = (
            "\n".join(
                line
                for line in text.splitlines()
                if not line.startswith(TASK_SUITE_LINES)
                and not line.startswith("                        # cosines")
            )
            + "\n"
        )
    path.write_text(text)
    return path


def minilm_folder() -> Path:
    from flowstone.encoder import model_path

    return model_path()


def demo_models() -> dict[str, Any]:
    return {"demo_classifier": write_demo_classifier, "minilm": minilm_folder}
