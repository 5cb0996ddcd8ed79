"""Idempotency-Key with Stripe's semantics, against a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from shared.config import Settings
from shared.request_idempotency import (
    InFlight,
    InvalidIdempotencyKeyError,
    Mismatch,
    Outcome,
    Proceed,
    Replay,
    RequestIdempotency,
    fingerprint,
)

FP = fingerprint("POST", "/v1/jobs", {"workflow": "summarise", "input": {"url": "https://x"}})
OTHER_FP = fingerprint("POST", "/v1/jobs", {"workflow": "translate"})
RESPONSE = (202, {"Content-Type": "application/json", "Location": "/v1/jobs/j1"}, b'{"job_id":"j1"}')


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def idem(client: redis.Redis) -> RequestIdempotency:
    return RequestIdempotency(client, "test", ttl_s=24 * 3600, lock_s=60)


def test_first_request_proceeds_then_replays(idem: RequestIdempotency) -> None:
    assert idem.begin("acme", "k1", FP) == Proceed()
    assert idem.complete("acme", "k1", FP, *RESPONSE) is True
    replay = idem.begin("acme", "k1", FP)
    assert replay == Replay(*RESPONSE)
    assert idem.begin("acme", "k1", FP) == replay  # every time


def test_same_key_different_request_is_a_mismatch(idem: RequestIdempotency) -> None:
    assert isinstance(idem.begin("acme", "k1", FP), Proceed)
    assert idem.begin("acme", "k1", OTHER_FP) == Mismatch()  # while in flight
    idem.complete("acme", "k1", FP, *RESPONSE)
    assert idem.begin("acme", "k1", OTHER_FP) == Mismatch()  # and once done


def test_duplicate_while_in_flight(idem: RequestIdempotency) -> None:
    assert isinstance(idem.begin("acme", "k1", FP), Proceed)
    assert idem.begin("acme", "k1", FP) == InFlight()


def test_keys_are_scoped_per_tenant(idem: RequestIdempotency) -> None:
    assert isinstance(idem.begin("acme", "k1", FP), Proceed)
    idem.complete("acme", "k1", FP, *RESPONSE)
    assert isinstance(idem.begin("globex", "k1", FP), Proceed)
    assert isinstance(idem.begin("globex", "k1", OTHER_FP), Mismatch)


def test_tenant_and_key_cannot_be_confused(idem: RequestIdempotency) -> None:
    assert idem.key("a.b", "c") != idem.key("a", "b.c")


def test_release_lets_the_client_retry(idem: RequestIdempotency) -> None:
    assert isinstance(idem.begin("acme", "k1", FP), Proceed)
    assert idem.release("acme", "k1") is True
    assert isinstance(idem.begin("acme", "k1", OTHER_FP), Proceed)  # a fresh start, any body


def test_release_never_drops_a_stored_response(idem: RequestIdempotency) -> None:
    idem.begin("acme", "k1", FP)
    idem.complete("acme", "k1", FP, *RESPONSE)
    assert idem.release("acme", "k1") is False
    assert isinstance(idem.begin("acme", "k1", FP), Replay)


def test_complete_refuses_a_key_held_for_another_request(idem: RequestIdempotency) -> None:
    idem.begin("acme", "k1", FP)
    assert idem.complete("acme", "k1", OTHER_FP, 202, {}, b"other") is False
    assert idem.complete("acme", "k1", FP, *RESPONSE) is True
    assert idem.complete("acme", "k1", FP, 500, {}, b"late") is False  # the first response stays
    assert idem.begin("acme", "k1", FP) == Replay(*RESPONSE)


def test_in_flight_lock_expires(client: redis.Redis) -> None:
    idem = RequestIdempotency(client, "test", lock_s=0.3)
    assert isinstance(idem.begin("acme", "k1", FP), Proceed)
    assert isinstance(idem.begin("acme", "k1", FP), InFlight)
    time.sleep(0.5)  # the handler "crashed"
    assert isinstance(idem.begin("acme", "k1", FP), Proceed)


def test_ttls(idem: RequestIdempotency, client: redis.Redis) -> None:
    idem.begin("acme", "k1", FP)
    assert 0 < client.pttl(idem.key("acme", "k1")) <= 60_000
    idem.complete("acme", "k1", FP, *RESPONSE)
    assert 24 * 3600 - 5 <= client.ttl(idem.key("acme", "k1")) <= 24 * 3600


def test_binary_and_empty_bodies_round_trip(idem: RequestIdempotency) -> None:
    for key, body in (("bin", bytes(range(256))), ("empty", b"")):
        idem.begin("acme", key, FP)
        idem.complete("acme", key, FP, 201, {}, body)
        assert idem.begin("acme", key, FP) == Replay(201, {}, body)


def test_fingerprint_is_canonical() -> None:
    assert fingerprint("post", "/v1/jobs", {"b": 1, "a": [1, 2]}) == fingerprint(
        "POST", "/v1/jobs", {"a": [1, 2], "b": 1}
    )
    assert fingerprint("POST", "/v1/jobs", {"a": 1}) != fingerprint("POST", "/v1/jobs", {"a": 2})
    assert fingerprint("POST", "/v1/jobs", {}) != fingerprint("PUT", "/v1/jobs", {})
    assert fingerprint("POST", "/v1/jobs", {}) != fingerprint("POST", "/v1/job", {})
    assert fingerprint("POST", "/v1/jobs", b'{"a": 1}') != fingerprint("POST", "/v1/jobs", b'{"a":1}')
    assert fingerprint("POST", "/a", b"b/c") != fingerprint("POST", "/ab", b"/c")


@pytest.mark.parametrize("bad", ["", "x" * 256, "café", "tab\there", "nl\n"])
def test_invalid_keys(idem: RequestIdempotency, bad: str) -> None:
    with pytest.raises(InvalidIdempotencyKeyError):
        idem.begin("acme", bad, FP)


def test_a_255_character_key_is_fine(idem: RequestIdempotency) -> None:
    assert isinstance(idem.begin("acme", "k" * 255, FP), Proceed)


def race(n: int, attempt: Callable[[], Outcome]) -> list[Outcome]:
    barrier = threading.Barrier(n)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        outcome = attempt()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_50_concurrent_begins_have_exactly_one_proceed(idem: RequestIdempotency) -> None:
    outcomes = race(50, lambda: idem.begin("acme", "race", FP))
    assert len(outcomes) == 50
    assert sum(isinstance(o, Proceed) for o in outcomes) == 1
    assert all(isinstance(o, Proceed | InFlight) for o in outcomes)


def test_50_concurrent_requests_with_the_winner_completing(idem: RequestIdempotency) -> None:
    """Like a route: the one that proceeds completes at once; the rest see InFlight or Replay."""

    def handle() -> Outcome:
        outcome = idem.begin("acme", "race", FP)
        if isinstance(outcome, Proceed):
            assert idem.complete("acme", "race", FP, *RESPONSE)
        return outcome

    outcomes = race(50, handle)
    assert sum(isinstance(o, Proceed) for o in outcomes) == 1
    assert all(isinstance(o, Proceed | InFlight | Replay) for o in outcomes)
    assert all(o == Replay(*RESPONSE) for o in outcomes if isinstance(o, Replay))
    assert idem.begin("acme", "race", FP) == Replay(*RESPONSE)


def test_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.request_idempotency_ttl_s, settings.request_idempotency_lock_s) == (86400, 60)
    custom = Settings.from_env({"PRESSLINE_REQUEST_IDEMPOTENCY_LOCK_S": "5"})
    assert custom.request_idempotency_lock_s == 5
