"""The scale-out tests import their helpers as ``tests.scaleout.*`` (the test run uses
--import-mode=importlib, which adds nothing to sys.path)."""

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
