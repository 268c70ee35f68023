"""Bridges that ship with FlowStone: ``echo`` (diagnostics), ``metrics`` and ``inference``."""
