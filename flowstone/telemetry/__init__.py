"""Operational telemetry: Prometheus metrics (``metrics``) and OpenTelemetry spans (``tracing``).

Both are off the hot path by design: the code paths they watch call small hooks that cost a
few microseconds and never raise, and nothing heavy is imported until a hook first runs.
"""
