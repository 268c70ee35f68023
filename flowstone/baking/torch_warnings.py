"""The deprecation warnings torch 2.13 raises for what the torch passes write, silenced exactly
where they are raised.

torch 2.13 deprecates TorchScript (``torch.jit.trace``/``freeze``/``save``/``load``) and its
own quantized tensors (in favour of ``torch.export`` and torchao). The ``torchscript`` and
``quantize_dynamic`` passes still write those formats on purpose: they run on any CPU today and
the baked classifier's figures are measured on them. Until the passes move, every bake would
print warnings its user can do nothing about. Each filter here names one message and applies
only around the call that raises it; any other warning still shows.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

# (category, message regex) pairs, one per known warning.
JIT_EXPORT: list[tuple[type[Warning], str]] = [
    (DeprecationWarning, r"`torch\.jit\.(trace|trace_method|freeze|save)` is deprecated"),
]
LOAD: list[tuple[type[Warning], str]] = [
    (DeprecationWarning, r"`torch\.jit\.load` is deprecated"),
    # torch.load of a module holding quantized tensors: torch's own unpickler
    # (torch/_utils.py _rebuild_qtensor) reads TypedStorage.device, not FlowStone's code.
    (UserWarning, r"TypedStorage is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized"),
]


@contextlib.contextmanager
def _ignoring(known: Sequence[tuple[type[Warning], str]]) -> Iterator[None]:
    with warnings.catch_warnings():
        for category, message in known:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def jit_export() -> contextlib.AbstractContextManager[None]:
    """Around ``torch.jit.trace``, ``freeze`` and ``save`` in the ``torchscript`` pass."""
    return _ignoring(JIT_EXPORT)


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Around ``torch.jit.load`` and ``torch.load`` of what the torch passes wrote.

    The quantized-tensor deprecation is a once-per-process warning raised in C++. Loading
    TorchScript raises it outside any Python call, where it bypasses ``warnings`` and is printed
    straight to stderr; creating one quantized tensor here first, from Python and under the
    filter, spends that once so the load that follows stays quiet.
    """
    import torch

    with _ignoring(LOAD):
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.qint8)
        yield
