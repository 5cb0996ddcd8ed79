"""Standard Webhooks verification: the published vectors and negative cases, replay, secret rotation.

Vectors and negative cases are those of the standard-webhooks/standard-webhooks test suites
(Python, JavaScript, Go, Ruby, Java; the second vector from the Rust suite), copied here.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
import redis
from botocore.client import BaseClient
from botocore.config import Config

from infra.redis_server import free_port
from localstack.endpoint import Endpoint
from shared.aws import aws_client
from shared.config import ConfigError, Settings
from shared.webhooks import (
    ReplayGuard,
    SecretsUnavailableError,
    WebhookSecrets,
    WebhookVerificationError,
    sign,
    verify,
)

VECTORS = [
    pytest.param(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        id="reference-suites",
    ),
    pytest.param(
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        1649367553,
        b'{"email":"test@example.com","username":"test_user"}',
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        id="rust-suite",
    ),
]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
VALID = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="


def headers(signature: str = VALID, msg_id: str = MSG_ID, ts: object = TS) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def reason_of(secrets: list[str], hdrs: dict[str, str], body: bytes = BODY, now: float = TS) -> str:
    with pytest.raises(WebhookVerificationError) as caught:
        verify(secrets, hdrs, body, now=now)
    return caught.value.reason


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


# --- sign / verify -------------------------------------------------------------------------------


@pytest.mark.parametrize(("secret", "msg_id", "ts", "body", "expected"), VECTORS)
def test_published_vectors_sign_and_verify(
    secret: str, msg_id: str, ts: int, body: bytes, expected: str
) -> None:
    assert sign(secret, msg_id, ts, body) == expected
    verify([secret], headers(expected, msg_id, ts), body, now=ts)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    hdrs = headers()
    del hdrs[missing]
    assert reason_of([SECRET], hdrs) == "missing_headers"
    hdrs[missing] = ""
    assert reason_of([SECRET], hdrs) == "missing_headers"


@pytest.mark.parametrize("ts", ["hello", "-1614265330", "1614265330.5", "1e9", "+1614265330"])
def test_non_numeric_timestamp(ts: str) -> None:
    assert reason_of([SECRET], headers(ts=ts)) == "bad_timestamp"


def test_wrong_signature_last_char_changed() -> None:
    assert reason_of([SECRET], headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=")) == "bad_signature"


def test_timestamp_outside_tolerance_both_ways() -> None:
    for now, reason in ((TS + 301, "timestamp_too_old"), (TS - 301, "timestamp_too_new")):
        assert reason_of([SECRET], headers(), now=now) == reason
    verify([SECRET], headers(), BODY, now=TS + 300)  # the bounds themselves are inside
    verify([SECRET], headers(), BODY, now=TS - 300)
    with pytest.raises(WebhookVerificationError, match="timestamp_too_old"):
        verify([SECRET], headers(), BODY, now=TS + 11, tolerance_s=10)


def test_multi_signature_header_with_only_the_third_valid() -> None:
    header = f"v1,{OTHER} v2,{OTHER} {VALID} v1,{OTHER}"
    verify([SECRET], headers(header), BODY, now=TS)
    assert reason_of([SECRET], headers(f"v1,{OTHER} v2,{OTHER} v1,{OTHER}")) == "bad_signature"


def test_unknown_versions_are_skipped() -> None:
    valid_b64 = VALID.removeprefix("v1,")
    assert reason_of([SECRET], headers(f"v1a,{valid_b64} v2,{valid_b64}")) == "bad_signature"
    verify([SECRET], headers(f"v1a,{OTHER} {VALID}"), BODY, now=TS)


# The suites' secrets needing 0, 1 and 2 "=" of base64 padding.
PADDINGS = [
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr",
]


@pytest.mark.parametrize("raw", PADDINGS)
@pytest.mark.parametrize("prefix", ["", "whsec_"])
def test_secrets_needing_0_1_2_padding(raw: str, prefix: str) -> None:
    secret = prefix + raw
    signature = sign(secret, MSG_ID, TS, BODY)
    verify([secret], headers(signature), BODY, now=TS)
    # The prefix is optional: both spellings are the same key.
    verify([raw if prefix else "whsec_" + raw], headers(signature), BODY, now=TS)


def test_unpadded_and_unprefixed_secret_is_the_same_key_as_the_published_one() -> None:
    assert sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", MSG_ID, TS, BODY) == VALID


@pytest.mark.parametrize("signature", ["v1,", "v1", VALID[:8], "v1,g0hM9SsE", VALID + "A", "", " "])
def test_partial_signatures_fail(signature: str) -> None:
    hdrs = headers(signature)
    expected = "missing_headers" if not signature else "bad_signature"
    assert reason_of([SECRET], hdrs) == expected


def test_tampered_body_fails() -> None:
    assert reason_of([SECRET], headers(), body=b'{"test": 2432232315}') == "bad_signature"
    assert reason_of([SECRET], headers(), body=b'{"test":2432232314}') == "bad_signature"  # re-serialised


def test_tampered_id_or_timestamp_fails() -> None:
    assert reason_of([SECRET], headers(msg_id="msg_other")) == "bad_signature"
    assert reason_of([SECRET], headers(ts=TS + 1)) == "bad_signature"


def test_wrong_secret_fails_and_any_of_several_secrets_passes() -> None:
    assert reason_of([new_secret()], headers()) == "bad_signature"
    verify([new_secret(), SECRET, new_secret()], headers(), BODY, now=TS)


def test_no_secret() -> None:
    assert reason_of([], headers()) == "no_secret"


def test_header_names_are_case_insensitive() -> None:
    hdrs = {"Webhook-Id": MSG_ID, "WEBHOOK-TIMESTAMP": str(TS), "Webhook-Signature": VALID}
    verify([SECRET], hdrs, BODY, now=TS)


def test_non_ascii_signature_is_rejected_not_crashing() -> None:
    assert reason_of([SECRET], headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1Oé=")) == "bad_signature"


def test_errors_never_carry_secrets() -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        verify([SECRET], headers(), b"tampered", now=TS)
    assert str(caught.value) == "bad_signature"
    assert caught.value.args == ("bad_signature",)
    bad = "whsec_not*base64!"
    with pytest.raises(ValueError) as config_error:
        verify([bad], headers(), BODY, now=TS)
    assert "not*base64" not in str(config_error.value)


def test_sign_refuses_a_dot_in_the_id() -> None:
    with pytest.raises(ValueError):
        sign(SECRET, "msg.1", TS, BODY)


# --- replay guard --------------------------------------------------------------------------------


def test_replay_guard_accepts_an_id_once_per_scope(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    guard = ReplayGuard(client, "test")
    assert guard.first_seen(MSG_ID, "site-a") is True
    assert guard.first_seen(MSG_ID, "site-a") is False
    assert guard.first_seen(MSG_ID, "site-b") is True  # ids are per sender
    assert 590 <= int(client.ttl(guard.key(MSG_ID, "site-a"))) <= 600  # 2 x the 300 s tolerance
    guard.forget(MSG_ID, "site-a")
    assert guard.first_seen(MSG_ID, "site-a") is True


def test_replay_guard_under_concurrency(redis_url: str) -> None:
    guard = ReplayGuard(redis.Redis.from_url(redis_url), "test", ttl_s=60)
    results: list[bool] = []
    barrier = threading.Barrier(20)

    def attempt() -> None:
        barrier.wait()
        results.append(guard.first_seen("msg_race"))

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 19 + [True]


# --- secrets from Secrets Manager ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sm(aws_endpoint: Endpoint) -> Iterator[BaseClient]:
    client = aws_client("secretsmanager", Settings(aws_endpoint_url=aws_endpoint.url))
    created: list[str] = []
    client.meta.events.register(
        "provide-client-params.secrets-manager.CreateSecret",
        lambda params, **_: created.append(params["Name"]),
    )
    yield client
    for name in created:
        client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def count_gets(client: BaseClient) -> list[str]:
    calls: list[str] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        calls.append(params.get("VersionStage", "AWSCURRENT"))

    client.meta.events.register("provide-client-params.secrets-manager.GetSecretValue", hook)
    return calls


@pytest.fixture
def prefix() -> str:
    return f"pressline-test/{uuid.uuid4().hex[:12]}"


def provider(sm: BaseClient, prefix: str, **options: Any) -> WebhookSecrets:
    return WebhookSecrets(sm, name_pattern=f"{prefix}/sites/{{site}}/webhook", **options)


def signed(secret: str, msg_id: str = "msg_1", body: bytes = b'{"event":"post.updated"}') -> dict[str, str]:
    return headers(sign(secret, msg_id, TS, body), msg_id, TS)


def test_rotation_accepts_current_and_previous_but_not_older(sm: BaseClient, prefix: str) -> None:
    oldest, previous, current = new_secret(), new_secret(), new_secret()
    name = f"{prefix}/sites/blog/webhook"
    sm.create_secret(Name=name, SecretString=oldest)
    sm.put_secret_value(SecretId=name, SecretString=previous)
    sm.put_secret_value(SecretId=name, SecretString=current)

    secrets = provider(sm, prefix).for_site("blog")

    assert secrets == (current, previous)
    body = b'{"event":"post.updated"}'
    verify(secrets, signed(current), body, now=TS)
    verify(secrets, signed(previous), body, now=TS)
    with pytest.raises(WebhookVerificationError, match="bad_signature"):
        verify(secrets, signed(oldest), body, now=TS)


def test_a_secret_never_rotated_has_one_version(sm: BaseClient, prefix: str) -> None:
    only = new_secret()
    sm.create_secret(Name=f"{prefix}/sites/blog/webhook", SecretString=only)
    assert provider(sm, prefix).for_site("blog") == (only,)


def test_cached_within_ttl_and_refetched_after(sm: BaseClient, prefix: str) -> None:
    first, second = new_secret(), new_secret()
    name = f"{prefix}/sites/blog/webhook"
    sm.create_secret(Name=name, SecretString=first)
    clock = FakeClock()
    secrets = provider(sm, prefix, ttl_s=60, clock=clock)
    calls = count_gets(sm)

    assert secrets.for_site("blog") == (first,)
    fetched = len(calls)
    assert fetched == 2  # AWSCURRENT, then AWSPREVIOUS (absent)
    sm.put_secret_value(SecretId=name, SecretString=second)
    clock.now += 59
    for _ in range(5):
        assert secrets.for_site("blog") == (first,)
    assert len(calls) == fetched  # no Secrets Manager call within the TTL

    clock.now += 2
    assert secrets.for_site("blog") == (second, first)
    assert len(calls) == 2 * fetched

    sm.put_secret_value(SecretId=name, SecretString=new_secret())
    secrets.invalidate("blog")
    assert secrets.for_site("blog")[1] == second


def test_concurrent_cold_lookups_fetch_once(sm: BaseClient, prefix: str) -> None:
    sm.create_secret(Name=f"{prefix}/sites/blog/webhook", SecretString=new_secret())
    secrets = provider(sm, prefix)
    calls = count_gets(sm)
    barrier = threading.Barrier(16)
    results: list[tuple[str, ...]] = []

    def lookup() -> None:
        barrier.wait()
        results.append(secrets.for_site("blog"))

    threads = [threading.Thread(target=lookup) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 16
    assert len(calls) == 2


def test_a_shared_secret_applies_only_when_given_and_never_over_a_sites_own(
    sm: BaseClient, prefix: str
) -> None:
    default = new_secret()
    sm.create_secret(Name=f"{prefix}/default", SecretString=default)
    own = new_secret()
    sm.create_secret(Name=f"{prefix}/sites/shop/webhook", SecretString=own)

    assert provider(sm, prefix).for_site("blog") == ()  # no shared secret unless one is given
    shared = provider(sm, prefix, default_name=f"{prefix}/default")
    assert shared.for_site("blog") == (default,)
    assert shared.for_site("shop") == (own,)  # a site's own secret replaces the shared one
    override = new_secret()
    assert provider(sm, prefix, override=override).for_site("blog") == (override,)
    assert provider(sm, prefix, override=override).for_site("shop") == (own,)


def test_no_secret_anywhere_and_bad_site_names(sm: BaseClient, prefix: str) -> None:
    secrets = provider(sm, prefix, default_name=f"{prefix}/default")
    assert secrets.for_site("blog") == ()
    with pytest.raises(WebhookVerificationError, match="no_secret"):
        verify(secrets.for_site("blog"), signed(new_secret()), b'{"event":"post.updated"}', now=TS)
    sm.create_secret(Name=f"{prefix}/default", SecretString=new_secret())
    calls = count_gets(sm)
    for bad in ("", "../default", "a/b", "x" * 65, "blog\n"):
        assert secrets.for_site(bad) == ()
    assert calls == []


def test_from_settings(sm: BaseClient, prefix: str) -> None:
    settings = Settings(
        webhook_site_secret_pattern=f"{prefix}/s/{{site}}",
        webhook_secret_name=f"{prefix}/global",
        webhook_secret_cache_ttl_s=5,
        webhook_rotation_grace_s=7,
    )
    secrets = WebhookSecrets.from_settings(settings, sm)
    assert secrets.name_pattern == f"{prefix}/s/{{site}}"
    assert (secrets.ttl_s, secrets.default_grace_s) == (5, 7)
    assert secrets.default_name is None  # the shared secret: only in the development mode
    value = new_secret()
    sm.create_secret(Name=f"{prefix}/s/blog", SecretString=value)
    assert secrets.for_site("blog") == (value,)
    assert value not in repr(secrets)
    # (this test's own name pattern: another test's site "shop" may exist under the default one)
    overridden = WebhookSecrets.from_settings(replace(settings, hmac_webhook_secret=value), sm)
    assert value not in repr(overridden)
    assert overridden.for_site("shop") == ()  # HMAC_WEBHOOK_SECRET alone changes nothing
    dev = WebhookSecrets.from_settings(replace(settings, webhook_shared_secret_dev=True), sm)
    assert dev.default_name == f"{prefix}/global"


def test_outage_keeps_the_cached_value_and_fails_clearly_without_one(
    sm: BaseClient, prefix: str, aws_endpoint: Endpoint
) -> None:
    value = new_secret()
    sm.create_secret(Name=f"{prefix}/sites/blog/webhook", SecretString=value)
    clock = FakeClock()
    secrets = provider(sm, prefix, clock=clock)
    assert secrets.for_site("blog") == (value,)

    dead = boto3.client(
        "secretsmanager",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
    )
    secrets.client = dead
    clock.now += 3600
    assert secrets.for_site("blog") == (value,)

    with pytest.raises(SecretsUnavailableError) as caught:
        provider(dead, prefix).for_site("blog")
    assert value not in str(caught.value)


def test_settings() -> None:
    settings = Settings.from_env({})
    assert settings.webhook_site_secret_pattern == "pressline/sites/{site}/webhook"
    assert (settings.webhook_secret_cache_ttl_s, settings.webhook_tolerance_s) == (60.0, 300)
    assert (settings.webhook_shared_secret_dev, settings.webhook_rotation_grace_s) == (False, 86400)
    dev = Settings.from_env(
        {"PRESSLINE_WEBHOOK_SHARED_SECRET_DEV": "1", "PRESSLINE_WEBHOOK_ROTATION_GRACE_S": "60"}
    )
    assert (dev.webhook_shared_secret_dev, dev.webhook_rotation_grace_s) == (True, 60)
    with pytest.raises(ConfigError, match="SHARED_SECRET_DEV"):
        Settings.from_env({"PRESSLINE_WEBHOOK_SHARED_SECRET_DEV": "maybe"})
    custom = Settings.from_env(
        {"PRESSLINE_WEBHOOK_SITE_SECRET_PATTERN": "wp/{site}", "PRESSLINE_WEBHOOK_TOLERANCE_S": "120"}
    )
    assert (custom.webhook_site_secret_pattern, custom.webhook_tolerance_s) == ("wp/{site}", 120)
    with pytest.raises(ConfigError, match="site"):
        Settings.from_env({"PRESSLINE_WEBHOOK_SITE_SECRET_PATTERN": "wp/fixed"})
