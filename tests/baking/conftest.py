"""Small models for the baking tests: a tiny classifier trained in a second, dropped with its
validation data and bake config, so tests exercise the real passes quickly."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # baking_test_models, bake_helpers by name

import pytest
from bake_helpers import write_tiny_classifier


@pytest.fixture
def tiny_drop(tmp_path: Path) -> Path:
    return write_tiny_classifier(tmp_path / "models")
