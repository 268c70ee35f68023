"""FlowStone: an asset-oriented orchestrator for AI and ML work, built on Dagster.

The packages under ``flowstone`` are plain Python so that metrics, suites, the worker
pool and the rest can be tested and reused without Dagster; the Dagster wiring lives in
the top-level ``assets``, ``io_managers``, ``resources`` and ``sensors`` packages.
"""

__version__ = "0.1.0"
