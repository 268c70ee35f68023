"""Loading the code location (what `dagster dev` and every run worker do) against loading the
Dagster integrations it cannot do without.

Peer: a fresh interpreter importing dagster, dagster_dbt and dagster_aws.s3 (the floor for any
code location using them). Ours: a fresh interpreter importing flowstone.definitions and
resolving its asset graph. Medians of interleaved rounds; target: our load under 3 s on a quiet
2-core machine, no model library imported.
Run: ``.venv/bin/python bench/bench_code_location.py``
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("FLOWSTONE_BENCH_ROUNDS", "5"))
TIMER = "import time; t = time.perf_counter(); {body}; print(time.perf_counter() - t)"
OURS = TIMER.format(body="import flowstone.definitions as d; d.defs.resolve_asset_graph()")
PEER = TIMER.format(body="import dagster, dagster_dbt, dagster_aws.s3")


def once(code: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ours, peer = [], []
    for _ in range(ROUNDS):
        peer.append(once(PEER))
        ours.append(once(OURS))
    o, p = statistics.median(ours), statistics.median(peer)
    print(f"code location load: {o:.2f} s (range {min(ours):.2f}-{max(ours):.2f}), "
          f"integrations alone: {p:.2f} s, ratio {o / p:.2f}x, ours on top {o - p:.2f} s "
          f"(load average {os.getloadavg()[0]:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
