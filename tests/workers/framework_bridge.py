"""A bridge around a real third-party library (PyYAML), to check what a framework's own
exception looks like when it crosses a pool server: its type, message and traceback."""

from __future__ import annotations

import os
from typing import Any

from flowstone.workers.bridge import Bridge, command


class FrameworkBridge(Bridge):
    name = "framework"
    framework = "PyYAML"  # installed with FlowStone, so the server reports a version

    @command(idempotent=True)
    def parse(self, text: str) -> Any:
        import yaml

        return yaml.safe_load(text)

    @command(idempotent=True)
    def pid(self) -> int:
        return os.getpid()
