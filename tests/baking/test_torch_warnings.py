"""torch 2.13's deprecation warnings for TorchScript and quantized tensors are silenced where
the torch passes raise them, and only those: a bake prints nothing its user cannot act on."""

import subprocess
import sys
import warnings

from flowstone.baking import torch_warnings

# Every warning shown; a fresh interpreter, so torch's once-per-process C++ warning is not spent.
BAKE_AND_LOAD = """
import sys, warnings
warnings.simplefilter("always")
from pathlib import Path
import torch
from flowstone.baking.artifacts import Artifact, open_runner
from flowstone.baking.demo_models import DemoClassifier
from flowstone.baking.passes import quantize_dynamic, torchscript

root = Path(sys.argv[1])
sample = torch.randn(2, 16)
torch.save(DemoClassifier(features=16, hidden=32, classes=3).eval(), str(root / "model.pt"))
original = Artifact("torch_module", root / "model.pt", "classifier")
for name in ("quantized", "scripted"):
    (root / name).mkdir()
quantized = quantize_dynamic(original, {}, root / "quantized", sample)
scripted = torchscript(quantized, {}, root / "scripted", sample)
for artifact in (quantized, scripted):
    print(open_runner(artifact).run(sample.numpy()).shape)
"""


def test_quantize_torchscript_and_load_print_no_warning(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", BAKE_AND_LOAD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "3)", "(2,", "3)"]
    assert "arn" not in out.stderr and "deprecated" not in out.stderr, out.stderr


def test_other_warnings_still_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch_warnings.loading():
            warnings.warn("TypedStorage is deprecated (silenced)", UserWarning, stacklevel=1)
            warnings.warn("something else went wrong", UserWarning, stacklevel=1)
        with torch_warnings.jit_export():
            warnings.warn("`torch.jit.save` is deprecated", DeprecationWarning, stacklevel=1)
            warnings.warn("`torch.jit.save` is deprecated", UserWarning, stacklevel=1)
    assert [(w.category, str(w.message)) for w in caught] == [
        (UserWarning, "something else went wrong"),
        (UserWarning, "`torch.jit.save` is deprecated"),
    ]
