"""API tokens against a real Redis: minting, every 401 reason, role scopes, storage, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from shared.auth import (
    ROLE_SCOPES,
    AuthenticationError,
    PermissionDeniedError,
    Principal,
    Role,
    Scope,
    TokenStore,
    require,
    scopes_for,
)
from tests.support.workers import ROOT, worker_env


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(client: redis.Redis, clock: FakeClock) -> TokenStore:
    return TokenStore(client, "test", clock=clock)


def reason(store: TokenStore, plaintext: str | None) -> str:
    with pytest.raises(AuthenticationError) as caught:
        store.authenticate(plaintext)
    return caught.value.reason


def test_mint_and_authenticate(store: TokenStore) -> None:
    plaintext, info = store.mint("acme", "editor", name="ci", ttl_s=3600)
    assert plaintext.startswith(f"pl_{info.token_id}.")
    assert (info.tenant, info.role, info.name, info.revoked_at) == ("acme", Role.EDITOR, "ci", None)
    assert info.expires_at == info.created_at + 3600

    principal = store.authenticate(plaintext)

    assert principal == Principal("acme", info.token_id, Role.EDITOR, ROLE_SCOPES[Role.EDITOR])
    assert principal.has("jobs:write") and not principal.has("content:publish")


def test_tokens_are_unique(store: TokenStore) -> None:
    minted = {store.mint("acme", "reader")[0] for _ in range(50)}
    assert len(minted) == 50


def test_wrong_secret_is_unknown(store: TokenStore) -> None:
    plaintext, _ = store.mint("acme", "admin")
    token_id, secret = plaintext.split(".")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert reason(store, f"{token_id}.{flipped}") == "unknown"
    other_id = "pl_" + "0" * 16
    assert reason(store, f"{other_id}.{secret}") == "unknown"


def test_expired(store: TokenStore, clock: FakeClock, client: redis.Redis) -> None:
    plaintext, info = store.mint("acme", "reader", ttl_s=60)
    clock.now += 59
    store.authenticate(plaintext)
    clock.now += 1
    assert reason(store, plaintext) == "expired"
    # The record outlives the token (to say "expired", not "unknown") and then goes by itself.
    ttl = int(client.ttl(store.key(info.token_id)))
    assert 0 < ttl <= 30 * 24 * 3600 + 60


def test_revoked(store: TokenStore) -> None:
    plaintext, info = store.mint("acme", "publisher")
    assert store.revoke(info.token_id) is True
    assert store.revoke(info.token_id) is False
    assert store.revoke("0" * 16) is False
    assert reason(store, plaintext) == "revoked"
    revoked = store.info(info.token_id)
    assert revoked is not None and revoked.revoked_at is not None


def test_revoked_and_expired_is_told_only_to_the_secret_holder(store: TokenStore) -> None:
    plaintext, info = store.mint("acme", "reader")
    store.revoke(info.token_id)
    assert reason(store, plaintext[:-1] + ("x" if plaintext[-1] != "x" else "y")) == "unknown"


@pytest.mark.parametrize(
    "bad",
    [
        "pl_",
        "Bearer pl_0123456789abcdef.aaaa",
        "pl_0123456789abcdef",
        "pl_0123456789ABCDEF." + "a" * 43,
        "pl_0123456789abcdef." + "a" * 42,
        "pl_0123456789abcdef." + "a" * 44,
        "pl_0123456789abcdef." + "a" * 42 + "=",
        "xx_0123456789abcdef." + "a" * 43,
        " pl_0123456789abcdef." + "a" * 43,
        "pl_0123456789abcdef." + "a" * 42 + "é",
    ],
)
def test_malformed(store: TokenStore, bad: str) -> None:
    assert reason(store, bad) == "malformed"


def test_missing(store: TokenStore) -> None:
    assert reason(store, None) == "missing"
    assert reason(store, "") == "missing"


def test_error_messages_carry_no_token(store: TokenStore) -> None:
    plaintext, _ = store.mint("acme", "reader")
    with pytest.raises(AuthenticationError) as caught:
        store.authenticate(plaintext[:-1] + "!")
    assert str(caught.value) == "malformed"
    assert plaintext.split(".")[1][:-1] not in repr(caught.value)


def test_scopes_per_role() -> None:
    assert scopes_for("reader") == {"jobs:read", "prompts:read"}
    assert scopes_for("editor") == scopes_for("reader") | {
        "jobs:write",
        "content:draft",
        "proxy:invoke",
        "prompts:write",
    }
    assert scopes_for("publisher") == scopes_for("editor") | {"content:publish"}
    assert scopes_for("admin") == scopes_for("publisher") | {"tokens:admin"}
    with pytest.raises(ValueError):
        scopes_for("owner")


def test_publish_is_only_for_publisher_and_admin(store: TokenStore) -> None:
    allowed = {}
    for role in Role:
        principal = store.authenticate(store.mint("acme", role)[0])
        try:
            require(principal, Scope.CONTENT_PUBLISH)
            allowed[role.value] = True
        except PermissionDeniedError as denied:
            assert denied.scope == "content:publish"
            allowed[role.value] = False
    assert allowed == {"reader": False, "editor": False, "publisher": True, "admin": True}


def test_require(store: TokenStore) -> None:
    reader = store.authenticate(store.mint("acme", "reader")[0])
    require(reader, "jobs:read")
    with pytest.raises(PermissionDeniedError, match="jobs:write"):
        require(reader, "jobs:write")
    with pytest.raises(ValueError):
        require(reader, "jobs:reed")  # a typo in a route is a bug, not a 403


def test_mint_validates(store: TokenStore) -> None:
    for tenant in ("", "a.b", "a b", "x" * 65, "acme/other"):
        with pytest.raises(ValueError):
            store.mint(tenant, "reader")
    with pytest.raises(ValueError):
        store.mint("acme", "owner")
    with pytest.raises(ValueError):
        store.mint("acme", "reader", ttl_s=0)


def all_redis_bytes(client: redis.Redis) -> bytes:
    dump = []
    for key in client.scan_iter(count=1000):
        dump.append(key)
        kind = client.type(key)
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                dump += [field, value]
        elif kind == b"set":
            dump += list(client.smembers(key))
        elif kind == b"string":
            dump.append(client.get(key) or b"")
    return b"\n".join(dump)


def test_redis_holds_no_plaintext(store: TokenStore, client: redis.Redis) -> None:
    minted = [store.mint("acme", role, name="probe")[0] for role in Role]
    for plaintext in minted:
        store.authenticate(plaintext)
    dump = all_redis_bytes(client)
    assert dump  # the scan saw the records
    for plaintext in minted:
        secret = plaintext.split(".", 1)[1].encode()
        assert secret not in dump
        assert plaintext.encode() not in dump


def test_list_never_shows_secret_or_hash(store: TokenStore, clock: FakeClock) -> None:
    acme, acme_info = store.mint("acme", "editor", name="ci")
    clock.now += 1
    store.mint("globex", "reader")
    assert [info.token_id for info in store.list("acme")] == [acme_info.token_id]
    assert [info.tenant for info in store.list()] == ["acme", "globex"]
    text = repr(store.list())
    assert acme.split(".")[1] not in text
    assert "hash" not in text


def test_list_prunes_records_that_expired_away(store: TokenStore, client: redis.Redis) -> None:
    _, info = store.mint("acme", "reader")
    client.delete(store.key(info.token_id))
    assert store.list("acme") == []
    assert store.list() == []
    assert client.scard("test.auth.tenant.acme") == 0


def test_last_used_is_written_at_most_once_a_minute(
    store: TokenStore, clock: FakeClock, client: redis.Redis
) -> None:
    plaintext, info = store.mint("acme", "reader")
    client.config_resetstat()

    store.authenticate(plaintext)
    first = store.info(info.token_id)
    assert first is not None and first.last_used_at == clock.now
    for _ in range(10):
        clock.now += 5
        store.authenticate(plaintext)
    later = store.info(info.token_id)
    assert later is not None and later.last_used_at == first.last_used_at  # 50 s later: unchanged
    stats = client.info("commandstats")
    assert stats["cmdstat_hset"]["calls"] == 1  # one write for 11 requests (HSET runs inside the script)

    clock.now += 10
    store.authenticate(plaintext)
    latest = store.info(info.token_id)
    assert latest is not None and latest.last_used_at == clock.now


def test_a_deleted_record_is_unknown_and_stays_deleted(store: TokenStore, client: redis.Redis) -> None:
    plaintext, info = store.mint("acme", "reader")
    client.delete(store.key(info.token_id))
    assert reason(store, plaintext) == "unknown"
    assert store.revoke(info.token_id) is False
    assert not client.exists(store.key(info.token_id))


# --- CLI -----------------------------------------------------------------------------------------


def cli(redis_url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "shared.auth.cli", *args],
        cwd=ROOT,
        env=worker_env(redis_url, PRESSLINE_NAMESPACE="pressline"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode == 0) == ok, done.stderr
    return done


def test_cli_mint_list_revoke(redis_url: str) -> None:
    minted = cli(redis_url, "mint", "--tenant", "acme", "--role", "editor", "--name", "ci", "--ttl", "30d")
    plaintext = minted.stdout.strip()
    assert plaintext.startswith("pl_") and len(minted.stdout.splitlines()) == 1
    assert "only time" in minted.stderr and plaintext not in minted.stderr  # printed once
    token_id = plaintext.removeprefix("pl_").split(".")[0]

    store = TokenStore(redis.Redis.from_url(redis_url), "pressline")
    principal = store.authenticate(plaintext)
    assert (principal.tenant, principal.role) == ("acme", Role.EDITOR)

    cli(redis_url, "mint", "--tenant", "globex", "--role", "reader")
    listing = cli(redis_url, "list", "--tenant", "acme")
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [(r["token_id"], r["tenant"], r["role"], r["name"]) for r in rows] == [
        (token_id, "acme", "editor", "ci")
    ]
    assert rows[0]["expires_at"] - rows[0]["created_at"] == pytest.approx(30 * 86400)
    everything = cli(redis_url, "list")
    assert len(everything.stdout.splitlines()) == 2
    secret = plaintext.split(".")[1]
    assert secret not in listing.stdout + listing.stderr + everything.stdout + everything.stderr

    assert cli(redis_url, "revoke", token_id).stdout.strip() == f"revoked {token_id}"
    assert "already revoked" in cli(redis_url, "revoke", token_id).stderr
    assert "no such token" in cli(redis_url, "revoke", "0" * 16, ok=False).stderr
    with pytest.raises(AuthenticationError, match="revoked"):
        store.authenticate(plaintext)


def test_cli_rejects_bad_input(redis_url: str) -> None:
    assert "invalid choice" in cli(redis_url, "mint", "--tenant", "acme", "--role", "owner", ok=False).stderr
    assert (
        "bad duration"
        in cli(redis_url, "mint", "--tenant", "a", "--role", "reader", "--ttl", "x", ok=False).stderr
    )
    assert "bad tenant" in cli(redis_url, "mint", "--tenant", "a.b", "--role", "reader", ok=False).stderr
