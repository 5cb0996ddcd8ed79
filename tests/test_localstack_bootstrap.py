"""localstack.bootstrap against the real local endpoint (moto's server or a LocalStack on 4566)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from botocore.client import BaseClient

from localstack.bootstrap import PROVIDERS, bootstrap, fake_provider_key
from localstack.endpoint import Endpoint
from shared.aws import aws_client, uses_local_credentials
from shared.config import Settings
from tests.conftest import ROOT

# Every test uses its own bucket and secret names: the endpoint is shared with other tests and runs.
MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(aws_endpoint: Endpoint) -> MakeSettings:
    tag = uuid.uuid4().hex[:12]

    def make(**overrides: object) -> Settings:
        fields: dict[str, object] = {
            "aws_endpoint_url": aws_endpoint.url,
            "payload_bucket": f"pressline-test-{tag}",
            "webhook_secret_name": f"pressline-test/{tag}/webhook-hmac",
            "outbound_webhook_secret_name": f"pressline-test/{tag}/outbound-webhook",
            "provider_secret_prefix": f"pressline-test/{tag}/providers/",
        }
        fields.update(overrides)
        return Settings(**fields)  # type: ignore[arg-type]

    return make


def secret_value(sm: BaseClient, name: str) -> str:
    return str(sm.get_secret_value(SecretId=name)["SecretString"])


def all_secret_values(sm: BaseClient, settings: Settings) -> list[str]:
    names = [settings.webhook_secret_name, settings.outbound_webhook_secret_name]
    names += [f"{settings.provider_secret_prefix}{p}" for p in PROVIDERS]
    return [secret_value(sm, name) for name in names]


def test_creates_bucket_and_secrets(make_settings: MakeSettings) -> None:
    settings = make_settings()
    lines = bootstrap(settings)

    assert lines[0] == f"s3 bucket {settings.payload_bucket}: created"
    assert lines[1] == f"secret {settings.webhook_secret_name}: created (generated)"
    assert lines[2] == f"secret {settings.outbound_webhook_secret_name}: created (generated)"
    assert len(lines) == 3 + len(PROVIDERS)
    assert all(": created" in line for line in lines)

    s3 = aws_client("s3", settings)
    s3.put_object(Bucket=settings.payload_bucket, Key="probe", Body=b"ok")
    assert s3.get_object(Bucket=settings.payload_bucket, Key="probe")["Body"].read() == b"ok"

    sm = aws_client("secretsmanager", settings)
    for name in (settings.webhook_secret_name, settings.outbound_webhook_secret_name):
        webhook = secret_value(sm, name)
        assert webhook.startswith("whsec_")
        assert len(base64.b64decode(webhook.removeprefix("whsec_"), validate=True)) == 32
    assert secret_value(sm, settings.webhook_secret_name) != secret_value(
        sm, settings.outbound_webhook_secret_name
    )
    for provider in PROVIDERS:
        assert secret_value(sm, f"{settings.provider_secret_prefix}{provider}") == fake_provider_key(provider)
        assert "fake" in fake_provider_key(provider)


def test_second_run_is_idempotent(make_settings: MakeSettings) -> None:
    settings = make_settings()
    bootstrap(settings)
    sm = aws_client("secretsmanager", settings)
    before = all_secret_values(sm, settings)

    lines = bootstrap(settings)

    assert lines == [
        f"s3 bucket {settings.payload_bucket}: already present",
        f"secret {settings.webhook_secret_name}: already present",
        f"secret {settings.outbound_webhook_secret_name}: already present",
        *(f"secret {settings.provider_secret_prefix}{p}: already present" for p in PROVIDERS),
    ]
    assert all_secret_values(sm, settings) == before


def test_hmac_override_is_stored_and_replaces_only_when_different(make_settings: MakeSettings) -> None:
    first = make_settings(hmac_webhook_secret="whsec_" + base64.b64encode(b"a" * 32).decode())
    sm = aws_client("secretsmanager", first)

    assert bootstrap(first)[1] == f"secret {first.webhook_secret_name}: created (from HMAC_WEBHOOK_SECRET)"
    assert secret_value(sm, first.webhook_secret_name) == first.hmac_webhook_secret

    assert bootstrap(first)[1] == f"secret {first.webhook_secret_name}: already present"

    second = make_settings(hmac_webhook_secret="whsec_" + base64.b64encode(b"b" * 32).decode())
    assert bootstrap(second)[1] == f"secret {second.webhook_secret_name}: updated (from HMAC_WEBHOOK_SECRET)"
    assert secret_value(sm, second.webhook_secret_name) == second.hmac_webhook_secret

    # Without the override, the stored value is kept (not regenerated).
    assert bootstrap(make_settings())[1] == f"secret {second.webhook_secret_name}: already present"
    assert secret_value(sm, second.webhook_secret_name) == second.hmac_webhook_secret


def test_cli_never_prints_secret_values(make_settings: MakeSettings) -> None:
    """Runs the CLI with no AWS credentials at all, so shared.aws must supply the dummy ones."""
    settings = make_settings()
    override = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=str(settings.aws_endpoint_url),
        PRESSLINE_PAYLOAD_BUCKET=settings.payload_bucket,
        PRESSLINE_WEBHOOK_SECRET_NAME=settings.webhook_secret_name,
        PRESSLINE_OUTBOUND_WEBHOOK_SECRET_NAME=settings.outbound_webhook_secret_name,
        PRESSLINE_PROVIDER_SECRET_PREFIX=settings.provider_secret_prefix,
        HMAC_WEBHOOK_SECRET=override,
    )
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "localstack.bootstrap"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    assert f"secret {settings.webhook_secret_name}: created" in outputs[0]
    assert f"secret {settings.webhook_secret_name}: already present" in outputs[1]

    values = all_secret_values(aws_client("secretsmanager", settings), settings)
    assert override in values
    for output in outputs:
        for value in values:
            assert value not in output
            assert value.removeprefix("whsec_") not in output


@pytest.mark.parametrize(
    ("endpoint", "key_id", "expected"),
    [
        ("http://127.0.0.1:4566", None, True),
        ("http://localhost:4566", None, True),
        ("http://[::1]:4566", None, True),
        ("http://127.0.0.1:4566", "AKIAREAL", False),  # configured credentials win
        ("http://localstack:4566", None, False),  # another host: not ours to vouch for
        (None, None, False),  # real AWS
    ],
)
def test_dummy_credentials_only_for_a_local_endpoint_without_credentials(
    endpoint: str | None, key_id: str | None, expected: bool
) -> None:
    settings = Settings(aws_endpoint_url=endpoint, aws_access_key_id=key_id)
    assert uses_local_credentials(settings) is expected


def test_saved_secrets_come_back_after_the_emulator_lost_them(make_settings: MakeSettings) -> None:
    """What make run does when moto restarts empty (issue 15, point 5): every secret it had is put back."""
    from localstack.bootstrap import restore_secrets, saved_secrets

    settings = make_settings()
    sm = aws_client("secretsmanager", settings)
    name = f"{settings.provider_secret_prefix}site-x/webhook"
    sm.create_secret(Name=name, SecretString="whsec_c2l0ZS14")
    saved = saved_secrets(settings)
    assert saved[name] == "whsec_c2l0ZS14"
    sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)  # as a restarted moto: gone
    lines = restore_secrets(settings, saved)
    assert f"secret {name}: created (restored)" in lines
    assert not any("whsec_c2l0ZS14" in line for line in lines)  # names only, never values
    assert sm.get_secret_value(SecretId=name)["SecretString"] == "whsec_c2l0ZS14"
