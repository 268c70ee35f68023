"""Where provider keys come from: the environment, HashiCorp Vault or AWS Secrets Manager.

A reference is a short string so that it fits in YAML and Dagster config without the secret
itself: ``env:ANTHROPIC_API_KEY``, ``vault:secret/data/llm#anthropic`` (KV v2 path, then the
field), ``aws:prod/llm#openai`` (secret id, then an optional JSON field). A bare name is an
environment variable. Every resolved value is registered for redaction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from flowstone.llm.errors import MissingSecretError
from flowstone.llm.redaction import register_secret


@dataclass(frozen=True)
class SecretRef:
    backend: str  # env | vault | aws
    location: str
    field: str | None = None

    @classmethod
    def parse(cls, ref: str) -> SecretRef:
        backend, sep, rest = ref.partition(":")
        if not sep:
            backend, rest = "env", ref
        if backend not in ("env", "vault", "aws"):
            raise ValueError(f"secret reference '{ref}': backend must be env, vault or aws")
        location, _, field = rest.partition("#")
        if not location:
            raise ValueError(f"secret reference '{ref}' names no variable, path or secret id")
        return cls(backend, location, field or None)

    def describe(self) -> str:
        """A human name for errors: says where to put the secret, never its value."""
        if self.backend == "env":
            return self.location
        return f"{self.backend}:{self.location}" + (f"#{self.field}" if self.field else "")


def _from_env(ref: SecretRef) -> str | None:
    return os.environ.get(ref.location) or None


def _from_vault(ref: SecretRef) -> str | None:
    """Read a KV v2 secret with hvac; VAULT_ADDR and VAULT_TOKEN configure the client."""
    import hvac

    client = hvac.Client(url=os.environ.get("VAULT_ADDR"), token=os.environ.get("VAULT_TOKEN"))
    mount, _, path = ref.location.partition("/")
    if path.startswith("data/"):
        path = path[len("data/") :]
    response = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point=mount, raise_on_deleted_version=True
    )
    data = response["data"]["data"]
    if ref.field is None:
        if len(data) != 1:
            raise ValueError(f"vault secret '{ref.location}' has several fields: add '#<field>'")
        return str(next(iter(data.values())))
    value = data.get(ref.field)
    return None if value is None else str(value)


def _from_aws(ref: SecretRef) -> str | None:
    """Read from AWS Secrets Manager with boto3 (region and credentials from the environment)."""
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=os.environ.get("AWS_SECRETS_ENDPOINT_URL"))
    value = client.get_secret_value(SecretId=ref.location).get("SecretString")
    if value is None or ref.field is None:
        return value
    try:
        document = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(
            f"aws secret '{ref.location}' is not JSON, so it has no field '{ref.field}'"
        ) from None
    field_value = document.get(ref.field)
    return None if field_value is None else str(field_value)


_BACKENDS = {"env": _from_env, "vault": _from_vault, "aws": _from_aws}


def resolve_secret(ref: str, *, purpose: str) -> str:
    """The secret's value, registered for redaction; ``purpose`` names who needs it in errors.

    Raises ``MissingSecretError`` (e.g. "ANTHROPIC_API_KEY not set for system qa-claude") when
    the secret is absent. Backend errors are re-raised as ``MissingSecretError`` with the
    backend's message redacted, never with the value.
    """
    parsed = SecretRef.parse(ref)
    try:
        value = _BACKENDS[parsed.backend](parsed)
    except Exception as exc:  # a backend failure must still name what to fix
        raise MissingSecretError(
            f"{parsed.describe()} could not be read for {purpose}: {type(exc).__name__}: {exc}"
        ) from None
    if not value:
        raise MissingSecretError(f"{parsed.describe()} not set for {purpose}")
    register_secret(value)
    return value
