"""A WordPress post reference's lock is a lease that dies with its holder (issue 15, point 4)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import redis

from shared.wordpress.lock import RefLock, RefLocked
from tests.conftest import ROOT

HOLDER = """
import sys, time, redis
from shared.wordpress.lock import RefLock
locks = RefLock(redis.Redis.from_url(sys.argv[1]), "lease")
with locks.hold("site", "job-1", lease_s=2.0, wait_s=1.0):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_dead_holders_reference_frees_within_its_lease(redis_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        client = redis.Redis.from_url(redis_url)
        locks = RefLock(client, "lease")
        key = locks.key("site", "job-1")
        time.sleep(2.5)  # past one lease: it is being renewed, so the holder still has it
        assert client.exists(key)
        with pytest.raises(RefLocked) as busy, locks.hold("site", "job-1", lease_s=2.0, wait_s=0.0):
            pass
        assert 0 < busy.value.retry_after_s <= 2.0  # the job is retried when the lease ends, not in 149 s
        holder.kill()
        holder.wait(10)
        assert 0 < client.pttl(key) <= 2000  # nothing renews it now: it lapses within the lease
        got = threading.Event()

        def take() -> None:
            with locks.hold("site", "job-1", lease_s=2.0, wait_s=30.0):
                got.set()

        taker = threading.Thread(target=take)
        taker.start()
        taker.join(35)
        assert got.is_set()
    finally:
        holder.kill()
        holder.wait(10)


def test_a_live_holder_keeps_its_reference_past_the_lease(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    locks = RefLock(client, "lease")
    with locks.hold("site", "job-2", lease_s=2.0, wait_s=0.0):
        time.sleep(4.5)  # more than twice the lease, renewed every 0.67 s meanwhile
        with pytest.raises(RefLocked), locks.hold("site", "job-2", lease_s=2.0, wait_s=0.0):
            pass
    assert not client.exists(locks.key("site", "job-2"))  # released at the end of the block
