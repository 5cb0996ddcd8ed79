"""Real servers for the suite: a Redis on a free port and the AWS endpoint on port 4566."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from infra.redis_server import free_port, start_redis, stop_process
from localstack.endpoint import Endpoint, ensure_endpoint
from tests.support.wordpress import wordpress  # noqa: F401 - the session's local WordPress

ROOT = Path(__file__).resolve().parent.parent

# Property-based tests (tests/test_fuzz.py): no deadline (a loaded machine must not fail them); in CI
# the same examples every run (derandomized, nothing stored), locally new ones kept in .hypothesis/.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=60)
hypothesis_settings.register_profile("dev", deadline=None, max_examples=60)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server started for this test session; yields its URL."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"), durable=False)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied before the test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[Endpoint]:
    """The local AWS endpoint on 4566 (moto's server unless a LocalStack already runs there).

    ``PRESSLINE_TEST_AWS_PORT`` moves it, so two suites on one machine do not share (and stop) one.
    """
    endpoint = ensure_endpoint(port=int(os.environ.get("PRESSLINE_TEST_AWS_PORT", "4566")))
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ENDPOINT_URL"] = endpoint.url
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if endpoint.process is not None:
            stop_process(endpoint.process)
