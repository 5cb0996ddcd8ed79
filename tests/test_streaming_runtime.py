"""The stream function's runtime (a Lambda function URL in RESPONSE_STREAM mode), run as Lambda runs
it: the exec wrapper from the deployment zip starts the runtime loop, which takes invocations from
a Runtime API (emulated here over real HTTP) and streams each response while the app produces it.
Behind it: the real app, a real Redis, moto (provider keys) and the fake provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from chalice import Chalice

from infra.redis_server import stop_process
from localstack.bootstrap import bootstrap
from localstack.endpoint import Endpoint
from localstack.fake_provider import ROUTING_POLICY as POLICY
from localstack.fake_provider import provider_env, running_fake_provider, set_fake_state
from shared.api.function_url import NoRoute, Routes, buffered, rest_event
from shared.api.streaming import StreamingResponse
from shared.auth import TokenStore
from shared.config import Settings
from shared.proxy.sse import SSEParser
from tests.support.api import ensure_bucket
from tests.support.lambda_runtime_api import RuntimeApiEmulator, runtime_api
from tests.support.workers import worker_env

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "functions" / "vendor" / "pressline-streaming-runtime"
VENV_BIN = Path(sys.executable).parent
CHUNKS = 20
INTERVAL_S = 0.02


def url_event(
    method: str, path: str, token: str | None = None, body: Any = None, query: str = ""
) -> dict[str, Any]:
    """A function URL event (payload format 2.0), as Lambda delivers it."""
    headers = {"content-type": "application/json", "host": "abc.lambda-url.us-east-1.on.aws"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return {
        "version": "2.0",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "http": {"method": method, "path": path, "sourceIp": "203.0.113.9"},
            "requestId": "r1",
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


@pytest.fixture(scope="module")
def runtime(
    redis_server: str, aws_endpoint: Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeApiEmulator]:
    scratch = tmp_path_factory.mktemp("runtime")
    policy = scratch / "routing.json"
    policy.write_text(json.dumps(POLICY))
    settings = Settings(broker_url=redis_server, aws_endpoint_url=aws_endpoint.url)
    ensure_bucket(settings)
    bootstrap(settings)
    with running_fake_provider() as fake, runtime_api() as api:
        set_fake_state(fake, scenario={"openai": f"chunks={CHUNKS};interval_ms={INTERVAL_S * 1000:g}"})
        env = worker_env(
            redis_server,
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # python3 = the venv's, as in the zip
            AWS_LAMBDA_RUNTIME_API=api.address,
            LAMBDA_TASK_ROOT=str(ROOT / "functions"),
            **provider_env(fake),
            PRESSLINE_ROUTING_POLICY=str(policy),
        )
        with (scratch / "runtime.log").open("ab") as log:
            proc = subprocess.Popen(
                [str(WRAPPER), "/var/runtime/bootstrap"], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            yield api
        finally:
            stop_process(proc)


@pytest.fixture
def token(redis_url: str) -> str:
    return TokenStore(redis.Redis.from_url(redis_url), "pressline").mint("acme", "editor", name="runtime")[0]


def test_a_completion_streams_event_by_event_through_the_runtime(
    runtime: RuntimeApiEmulator, token: str
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    outcome = runtime.invoke(url_event("POST", "/v1/chat/completions", token, body))
    assert outcome.error is None
    assert outcome.headers["lambda-runtime-function-response-mode"] == "streaming"
    assert outcome.headers["content-type"] == "application/vnd.awslambda.http-integration-response"
    prelude = outcome.prelude
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["Content-Type"] == "text/event-stream"
    assert prelude["headers"]["x-pressline-provider"] == "openai"
    events = SSEParser().feed(outcome.body)
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert any(c.get("usage") for c in chunks)
    words = [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c.get("choices") and c["choices"][0]["delta"].get("content")
    ]
    assert len(words) == CHUNKS
    # Streamed, not buffered: each event reached the Runtime API in its own chunk, as the fake
    # produced them INTERVAL_S apart, so the content arrived over ~(CHUNKS - 1) intervals.
    assert len(outcome.chunks) >= len(events) + 1  # the prelude, then one chunk per event
    content = [t for t, data in outcome.chunks if b'"content"' in data]
    assert content[-1] - content[0] >= 0.7 * (CHUNKS - 1) * INTERVAL_S


def test_a_json_route_answers_with_a_prelude_and_the_body(runtime: RuntimeApiEmulator, token: str) -> None:
    outcome = runtime.invoke(url_event("GET", "/v1/models", token))
    assert outcome.prelude["statusCode"] == 200
    assert outcome.prelude["headers"]["Content-Type"] == "application/json"
    assert {m["id"] for m in json.loads(outcome.body)["data"]} >= {"gpt-4o-mini"}


def test_errors_keep_the_api_error_shape(runtime: RuntimeApiEmulator, token: str) -> None:
    missing = runtime.invoke(url_event("GET", "/v1/nowhere", token))
    assert missing.prelude["statusCode"] == 404
    assert json.loads(missing.body)["error"]["code"] == "not_found"
    unauthenticated = runtime.invoke(url_event("GET", "/v1/models"))
    assert unauthenticated.prelude["statusCode"] == 401
    assert json.loads(unauthenticated.body)["error"]["code"]


def test_the_lambda_trace_header_continues_the_x_ray_trace(runtime: RuntimeApiEmulator, token: str) -> None:
    root = "1-5759e988-bd862e3fe1be46a994272793"
    outcome = runtime.invoke(
        url_event("GET", "/v1/models", token), trace_id=f"Root={root};Parent=53995c3f42cd8ad8;Sampled=1"
    )
    assert outcome.prelude["headers"]["X-Trace-Id"] == root[2:].replace("-", "")


# -- the pieces, in process ---------------------------------------------------------------------


def test_routes_match_literals_before_captures() -> None:
    routes = Routes(["/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/stats", "/"])
    assert routes.match("/v1/jobs/stats").route == "/v1/jobs/stats"
    match = routes.match("/v1/jobs/abc/")
    assert (match.route, match.captured) == ("/v1/jobs/{job_id}", {"job_id": "abc"})
    assert routes.match("/").route == "/"
    with pytest.raises(NoRoute):
        routes.match("/v1/jobs//")
    with pytest.raises(NoRoute):
        routes.match("/v2/jobs")


def test_rest_event_carries_what_chalice_reads() -> None:
    event = rest_event(
        url_event("GET", "/v1/jobs/j1", "t", query="a=1&a=2&b="), Routes(["/v1/jobs/{job_id}"])
    )
    assert event["requestContext"]["resourcePath"] == "/v1/jobs/{job_id}"
    assert event["pathParameters"] == {"job_id": "j1"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["headers"]["authorization"] == "Bearer t"


def test_buffered_fallback_joins_a_streamed_body() -> None:
    app = Chalice("t")

    @app.route("/s")
    def s() -> StreamingResponse:
        return StreamingResponse(
            iter([b"data: 1\n\n", b"data: 2\n\n"]), headers={"Content-Type": "text/event-stream"}
        )

    answer = buffered(app, url_event("GET", "/s"), None)
    assert answer["statusCode"] == 200 and answer["body"] == "data: 1\n\ndata: 2\n\n"
    assert answer["headers"]["Content-Type"] == "text/event-stream"
    assert buffered(app, url_event("GET", "/nope"), None)["statusCode"] == 404
