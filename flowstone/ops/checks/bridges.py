"""Doctor check: every registered worker-pool bridge imports and exposes its commands.

Why: a bridge that does not import fails the first pool that starts it, inside a run; here it
is validated in this process, as the pool validates it before starting workers.
"""

from __future__ import annotations

from flowstone.ops.checks.result import FAIL, OK, CheckResult, first_line


def check_bridges() -> CheckResult:
    """Every registered bridge imports and exposes its commands (in this process, as the pool
    validates them before starting workers)."""
    from flowstone.workers.bridge import registered_bridges, validate_bridge

    name = "pool bridges"
    good, bad = [], []
    for bridge in sorted(registered_bridges()):
        try:
            info = validate_bridge(bridge)
        except Exception as exc:
            bad.append(f"{bridge}: {first_line(exc)}")
            continue
        good.append(f"{bridge} ({len(info.commands)} commands)")
    if bad:
        return CheckResult(
            name,
            FAIL,
            "; ".join(bad) + (f"; fine: {', '.join(good)}" if good else ""),
            "install what the bridge imports, or fix the module the error names",
        )
    return CheckResult(name, OK, ", ".join(good))
