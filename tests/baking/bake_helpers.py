"""Small trained models for the baking tests (a module name of its own: several test folders
have a ``conftest``, so ``from conftest import ...`` would be ambiguous)."""

from pathlib import Path

TINY = {"features": 16, "hidden": 32, "classes": 3}


# Two rounds and no floor: a 16-32-3 net is too small for int8 to be reliably faster, and the
# tests that are not about the speed gate must not depend on which side a busy machine favours.
FAST_PROFILE = "speed: {floor: 0.0, min_rounds: 2, max_rounds: 2}"


def tiny_config(passes: str, threshold: float = 0.99, extra: str = "") -> str:
    if "speed:" not in extra:
        extra = f"{FAST_PROFILE}\n{extra}"
    return f"""task: classifier
architecture: flowstone.baking.demo_models:DemoClassifier
architecture_kwargs: {{features: 16, hidden: 32, classes: 3}}
input_shape: [16]
validation: tiny.validation.npz
passes: {passes}
quality: {{metric: accuracy_retention, threshold: {threshold}}}
batch_sizes: [1, 8]
{extra}"""


def write_tiny_classifier(folder: Path, name: str = "tiny", passes: str = "[prune, quantize_dynamic, torchscript]",
                          threshold: float = 0.99, extra: str = "") -> Path:  # fmt: skip
    """A trained tiny classifier (state dict), its validation data and bake config."""
    import numpy as np
    import torch

    from flowstone.baking.demo_models import DemoClassifier

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 2
    y = torch.randint(0, 3, (600,), generator=gen)
    x = centres[y] + torch.randn(600, 16, generator=gen)
    torch.manual_seed(0)
    model = DemoClassifier(**TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:400]), y[:400]).backward()
        opt.step()
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), str(path))
    np.savez(folder / "tiny.validation.npz", x=x[400:].numpy(), y=y[400:].numpy())
    (folder / f"{name}.bake.yaml").write_text(tiny_config(passes, threshold, extra))
    return path
