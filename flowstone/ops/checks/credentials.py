"""Doctor check: every LLM provider in systems.yaml has its key reference set.

Why: a system whose key is missing is skipped (its scores never appear), which is easy to
miss in a long run. Secrets are never read into the report: the check names variables and
references, never values.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowstone.ops.checks.result import FAIL, OK, WARN, CheckResult


def check_credentials(systems_path: Path | None = None) -> CheckResult:
    """Every non-local provider in systems.yaml has its key reference set; values unread."""
    from flowstone.errors import ConfigError
    from flowstone.llm.secrets import SecretRef
    from flowstone.systems.config import load_llm_systems, systems_config_path

    name = "provider credentials"
    source = Path(systems_path) if systems_path else systems_config_path()
    if not source.exists():
        return CheckResult(name, OK, f"no {source}: only the local baselines run")
    try:
        systems = load_llm_systems(source)
    except ConfigError as exc:
        return CheckResult(name, FAIL, str(exc), f"correct {source}")
    present: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    unchecked: dict[str, list[str]] = {}
    unavailable = []
    for system in systems:
        usable = False
        for provider in system.spec.providers:
            if provider.kind == "local":
                usable = True
                continue
            ref = provider.key_ref
            if ref is None:
                continue
            try:
                secret = SecretRef.parse(ref)
            except ValueError as exc:
                return CheckResult(
                    name,
                    FAIL,
                    f"system {system.name} in {source}: {exc}",
                    "write api_key as env:NAME, vault:<mount>/<path>#<field> or "
                    "aws:<secret-id>#<field>",
                )
            where = secret.describe()
            if secret.backend != "env":
                needs = ("VAULT_ADDR", "VAULT_TOKEN") if secret.backend == "vault" else ()
                lacking = [v for v in needs if not os.environ.get(v)]
                target = missing if lacking else unchecked
                label = ", ".join(lacking) if lacking else where
                target.setdefault(label, []).append(system.name)
                usable = usable or not lacking
            elif os.environ.get(secret.location):
                present.setdefault(where, []).append(system.name)
                usable = True
            else:
                missing.setdefault(where, []).append(system.name)
        if not usable:
            unavailable.append(system.name)
    parts = [f"{len(systems)} LLM systems in {source.name}"]
    if present:
        parts.append("set: " + ", ".join(sorted(present)))
    if unchecked:
        parts.append("resolved at the first call: " + ", ".join(sorted(unchecked)))
    if not missing:
        return CheckResult(name, OK, "; ".join(parts))
    parts.append(
        "missing: "
        + ", ".join(
            f"{var} (for {', '.join(sorted(set(who)))})" for var, who in sorted(missing.items())
        )
    )
    if unavailable:
        parts.append("skipped until set: " + ", ".join(unavailable))
    return CheckResult(
        name,
        WARN,
        "; ".join(parts),
        "export " + " ".join(f"{var}=..." for var in sorted(missing)) + " (or remove the systems)",
    )
