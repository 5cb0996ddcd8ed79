"""Create what Pressline expects on the local AWS endpoint; safe to run any number of times.

* the S3 payload bucket (claim-check payloads and job archives);
* the shared webhook HMAC secret, in Standard Webhooks form ``whsec_<base64 of 32 bytes>``, or the
  value of ``HMAC_WEBHOOK_SECRET`` when that local override is set. It is read only in the
  single-tenant development mode (``PRESSLINE_WEBHOOK_SHARED_SECRET_DEV=1``); otherwise each site
  has a secret of its own, made by ``python -m shared.sites register`` (or, for ``make run``'s
  WordPress, by ``infra.wordpress.register_site``), and this one is accepted for no site;
* the outbound webhook signing secret (Pressline's own events to back-office endpoints), the same
  way: generated when absent, or ``PRESSLINE_OUTBOUND_WEBHOOK_SECRET`` when that override is set;
* one secret per LLM provider key, with values that are obviously fake.

Nothing that exists is overwritten, except a webhook secret when its override differs from it.
The report lines name resources and what happened to them; they never contain a secret value.

Run it with ``python -m localstack.bootstrap``.
"""

from __future__ import annotations

import base64
import secrets
import sys
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from shared.aws import aws_client
from shared.config import Settings

PROVIDERS: tuple[str, ...] = ("openai", "anthropic", "groq")


def fake_provider_key(provider: str) -> str:
    """A value no provider would accept, so a leaked local key is harmless and easy to spot."""
    return f"sk-local-fake-{provider}"


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks signing secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def ensure_bucket(s3: BaseClient, name: str, region: str) -> str:
    try:
        s3.head_bucket(Bucket=name)
        return f"s3 bucket {name}: already present"
    except ClientError as error:
        if _error_code(error) not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    # us-east-1 is the one region that rejects an explicit LocationConstraint.
    options: dict[str, Any] = {}
    if region != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(Bucket=name, **options)
    return f"s3 bucket {name}: created"


def _current_value(sm: BaseClient, name: str) -> str | None:
    """The secret's value, or None when it does not exist. A secret pending deletion is restored."""
    try:
        return str(sm.get_secret_value(SecretId=name)["SecretString"])
    except ClientError as error:
        code = _error_code(error)
        if code == "ResourceNotFoundException":
            return None
        if code != "InvalidRequestException":  # "marked for deletion"
            raise
    sm.restore_secret(SecretId=name)
    return str(sm.get_secret_value(SecretId=name)["SecretString"])


def ensure_secret(sm: BaseClient, name: str, value: str, *, replace: bool = False, origin: str = "") -> str:
    """Create secret ``name`` holding ``value`` if absent; with ``replace``, also update a differing one."""
    current = _current_value(sm, name)
    suffix = f" ({origin})" if origin else ""
    if current is None:
        sm.create_secret(Name=name, SecretString=value)
        return f"secret {name}: created{suffix}"
    if replace and current != value:
        sm.put_secret_value(SecretId=name, SecretString=value)
        return f"secret {name}: updated{suffix}"
    return f"secret {name}: already present"


def saved_secrets(settings: Settings) -> dict[str, str]:
    """Every secret on the emulator and its current value: what :func:`restore_secrets` puts back
    after the emulator restarted with nothing (moto keeps its state in memory only)."""
    sm = aws_client("secretsmanager", settings)
    names = [
        str(entry["Name"])
        for page in sm.get_paginator("list_secrets").paginate()
        for entry in page.get("SecretList", [])
    ]
    return {name: value for name in names if (value := _current_value(sm, name)) is not None}


def restore_secrets(settings: Settings, saved: dict[str, str]) -> list[str]:
    """Create each saved secret that is missing (names only in the report, never values)."""
    sm = aws_client("secretsmanager", settings)
    return [ensure_secret(sm, name, value, origin="restored") for name, value in sorted(saved.items())]


def bootstrap(settings: Settings) -> list[str]:
    """Bring the endpoint at ``settings.aws_endpoint_url`` to Pressline's expected state."""
    if settings.aws_endpoint_url is None:
        raise RuntimeError(
            "refusing to bootstrap real AWS: AWS_ENDPOINT_URL is empty (set it to the emulator)"
        )
    s3 = aws_client("s3", settings)
    sm = aws_client("secretsmanager", settings)
    lines = [ensure_bucket(s3, settings.payload_bucket, settings.aws_region)]
    if settings.hmac_webhook_secret:
        lines.append(
            ensure_secret(
                sm,
                settings.webhook_secret_name,
                settings.hmac_webhook_secret,
                replace=True,
                origin="from HMAC_WEBHOOK_SECRET",
            )
        )
    else:
        # Generated only when absent: an existing secret keeps its value, so signatures stay valid.
        lines.append(
            ensure_secret(sm, settings.webhook_secret_name, new_webhook_secret(), origin="generated")
        )
    if settings.outbound_webhook_secret:
        lines.append(
            ensure_secret(
                sm,
                settings.outbound_webhook_secret_name,
                settings.outbound_webhook_secret,
                replace=True,
                origin="from PRESSLINE_OUTBOUND_WEBHOOK_SECRET",
            )
        )
    else:
        lines.append(
            ensure_secret(sm, settings.outbound_webhook_secret_name, new_webhook_secret(), origin="generated")
        )
    for provider in PROVIDERS:
        name = f"{settings.provider_secret_prefix}{provider}"
        lines.append(ensure_secret(sm, name, fake_provider_key(provider), origin="fake local key"))
    return lines


def main() -> int:
    settings = Settings.from_env()
    print(f"bootstrapping {settings.aws_endpoint_url}")
    for line in bootstrap(settings):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
