"""The providers' breakers: pybreaker's state machine, its state read in one round trip, on a real Redis."""

from __future__ import annotations

import time

import redis

from shared.proxy.breakers import Breakers


def breakers(redis_url: str, reset_timeout_s: float = 2.0) -> tuple[Breakers, redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    return Breakers(client, "test", fail_max=3, reset_timeout_s=reset_timeout_s), client


def commands_while(client: redis.Redis, action: object) -> int:
    """How many commands Redis processed while ``action()`` ran (INFO's counter; INFO itself counts one)."""
    before = int(client.info("stats")["total_commands_processed"])
    action()  # type: ignore[operator]
    return int(client.info("stats")["total_commands_processed"]) - before - 1


def test_a_check_is_one_round_trip_and_a_clean_success_writes_nothing(redis_url: str) -> None:
    b, client = breakers(redis_url)
    first = b.check("openai")
    assert first.allows and first.clean and first.state == "closed"
    assert commands_while(client, lambda: b.check("openai")) == 1
    assert commands_while(client, lambda: b.success("openai", first)) == 0


def test_failures_open_the_breaker_for_every_process_and_a_trial_follows_the_timeout(redis_url: str) -> None:
    b, _ = breakers(redis_url)
    other, _ = breakers(redis_url)  # another process's view of the same breaker
    b.failure("groq")
    seen = b.check("groq")
    assert seen.allows and not seen.clean and seen.failures == 1
    b.success("groq", seen)  # a success after a failure resets the count
    assert other.check("groq").failures == 0
    for _ in range(3):
        b.failure("groq")
    assert other.check("groq").state == "open" and not other.check("groq").allows
    time.sleep(2.05)  # pybreaker keeps the opening time in whole seconds
    trial = other.check("groq")
    assert trial.allows  # one trial after reset_timeout_s
    other.success("groq", trial)
    assert b.check("groq").clean
