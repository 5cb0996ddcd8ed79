"""Hostile input (issue 14, points 3, 4 and 7) over HTTP against the real local server
(``python -m functions.serve``, as ``make run`` serves): one test per defect an attacker found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from chalice.test import Client

from functions import app as functions_app
from localstack.endpoint import Endpoint
from shared.api.json_reader import MAX_DEPTH
from shared.auth import TokenStore
from shared.config import Settings
from tests.support.api import ensure_bucket, streaming_server
from tests.support.raw_http import check_error, exchange, raw_connection, request_bytes

#: The four routes whose bodies an attacker nested 2,000 deep.
JSON_ROUTES = [b"/v1/jobs", b"/v1/prompts", b"/v1/chat/completions", b"/v1/messages"]


@pytest.fixture(scope="module")
def server(
    redis_server: str, aws_endpoint: Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The server's URL and its log (stdout and stderr)."""
    ensure_bucket(Settings(broker_url=redis_server, aws_endpoint_url=aws_endpoint.url))
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    env = {"PRESSLINE_SERVE_WORKERS": "1", "PRESSLINE_API_RATE_LIMIT": "1000/s:1000"}
    with streaming_server(redis_server, log, **env) as url:
        yield url, log


@pytest.fixture(scope="module")
def api(server: tuple[str, Path]) -> str:
    return server[0]


@pytest.fixture(scope="module")
def token(redis_server: str) -> bytes:
    """An editor's token: jobs, prompts and the proxy; bodies are parsed only after authentication."""
    tokens = TokenStore(redis.Redis.from_url(redis_server), "pressline")
    return tokens.mint("hostile", "editor", name="hostile-test")[0].encode()


def post(api: str, path: bytes, token: bytes, body: bytes) -> tuple[int, dict[str, object]]:
    headers = [(b"Authorization", b"Bearer " + token), (b"Content-Type", b"application/json")]
    response = exchange(api, request_bytes(b"POST", path, headers, body), method="POST")
    return response.status, check_error(response, [token]) if response.status >= 400 else {}


# -- point 3: nesting ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", JSON_ROUTES, ids=lambda p: p.decode())
def test_deeply_nested_json_is_a_400_not_a_500(api: str, token: bytes, path: bytes) -> None:
    status, error = post(api, path, token, b"[" * 8192)  # the attacker's 8 KB
    assert status == 400, error
    assert error["code"] == "invalid_json" and f"deeper than {MAX_DEPTH}" in str(error["message"])
    nested = b'{"a":' * 2000 + b"1" + b"}" * 2000  # valid JSON, deep objects
    status, error = post(api, path, token, nested)
    assert (status, error["code"]) == (400, "invalid_json")


def test_nesting_up_to_the_limit_is_parsed(api: str, token: bytes) -> None:
    """The limit is a limit, not a refusal of nested JSON: 64 levels reach the schema (422)."""
    at_limit = b'{"input":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    status, error = post(api, b"/v1/jobs", token, at_limit)
    assert (status, error["code"]) == (422, "invalid_body"), error
    past = b'{"input":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    status, error = post(api, b"/v1/jobs", token, past)
    assert (status, error["code"]) == (400, "invalid_json"), error


# -- point 7: duplicate keys and metadata ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (b"/v1/jobs", b'{"input": {"title": "A", "source": "B."}, "publish": false, "publish": true}'),
        (b"/v1/prompts", b'{"name": "dup", "text": "one", "text": "two"}'),
        (b"/v1/chat/completions", b'{"model": "a", "model": "b", "messages": [{"role": "user"}]}'),
        (b"/v1/messages", b'{"model": "a", "max_tokens": 5, "messages": [{"role": "user", "role": "x"}]}'),
    ],
    ids=["jobs", "prompts", "chat", "messages"],
)
def test_duplicate_keys_are_a_400(api: str, token: bytes, path: bytes, body: bytes) -> None:
    status, error = post(api, path, token, body)
    assert (status, error["code"]) == (400, "invalid_json"), error
    assert "duplicate key" in str(error["message"])


def test_an_overlong_metadata_key_is_refused(api: str, token: bytes) -> None:
    job = {"input": {"title": "A", "source": "B."}, "metadata": {"k" * 65: "v"}}
    status, error = post(api, b"/v1/jobs", token, json.dumps(job).encode())
    assert (status, error["code"]) == (422, "invalid_body"), error
    assert str(error["details"][0]["field"]).startswith("metadata.")  # type: ignore[index]
    job["metadata"] = {"k" * 64: "v"}
    assert post(api, b"/v1/jobs", token, json.dumps(job).encode())[0] == 202


def test_too_many_metadata_keys_or_an_overlong_value_are_refused(api: str, token: bytes) -> None:
    for metadata in ({f"k{i}": "v" for i in range(21)}, {"k": "v" * 257}):
        job = {"input": {"title": "A", "source": "B."}, "metadata": metadata}
        assert post(api, b"/v1/jobs", token, json.dumps(job).encode())[0] == 422


# -- point 4: the local server's own answers ------------------------------------------------------


def test_an_unknown_route_with_a_crafted_authorization_is_a_404_in_the_one_shape(api: str) -> None:
    crafted = b'Bearer pl_0123456789abcdef.secret-token-value", "injected": "yes'
    response = exchange(api, request_bytes(b"GET", b"/v2/nothing-here", [(b"Authorization", crafted)]))
    assert response.status == 404
    error = check_error(response, [b"secret-token-value", b"injected"])
    assert set(response.json()) == {"error"} and error["code"] == "not_found"


def test_a_non_ascii_authorization_is_refused_and_the_connection_still_answers(
    server: tuple[str, Path],
) -> None:
    api, log = server
    before = log.stat().st_size
    authorization = (b"Authorization", "Bearer t\u00f6k\u00e9n-\u00ff".encode("latin-1"))
    utf8 = (b"Authorization", "Bearer \u2603-snow".encode())
    with raw_connection(api) as connection:
        known = connection.exchange(request_bytes(b"GET", b"/v1/jobs/j1", [authorization]))
        assert known.status == 401 and check_error(known)["code"] == "unauthenticated"
        unknown = connection.exchange(request_bytes(b"GET", b"/nowhere", [utf8]))
        assert unknown.status == 404 and check_error(unknown)["code"] == "not_found"
        again = connection.exchange(request_bytes(b"GET", b"/v1/openapi.json"))  # the same connection
        assert again.status == 200 and "paths" in again.json()
    assert b"Traceback" not in log.read_bytes()[before:]


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (
            request_bytes(
                b"GET", b"/v1/jobs/j1", [(b"Authorization", b"Bearer a"), (b"authorization", b"b")]
            ),
            400,
        ),
        (request_bytes(b"GET", b"/v1/jobs/j1", [(b"X-Note", b"a\rAuthorization: Bearer sneaky")]), 400),
        (request_bytes(b"GET", b"/v1/jobs/j1", [(b"Authorization", b"Bearer\r\n sneaky")]), 400),
        (request_bytes(b"GET", b"/v1/jobs/j1", [(b"Authorization", b"Bearer \x00sneaky")]), 400),
        (request_bytes(b"GET", b"/v1/jobs/j1", [(b"X-Long", b"a" * 70_000)]), 431),
        (request_bytes(b"GET", b"/v1/jobs/j1", [(b"X-%d" % i, b"a" * 1000) for i in range(80)]), 431),
        (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n", 400),
        (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"GET /v1/jobs/j1 HTTP/1.1\r\nHost: x\r\nBad Header\xff: 1\r\n\r\n", 400),
        (b"NOT A REQUEST LINE AT ALL\r\n\r\n", 400),
        (b"BREW /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
    ids=[
        "duplicate-authorization",
        "bare-cr-injection",
        "folded-header",
        "nul-byte",
        "overlong-header",
        "overlong-headers",
        "bad-content-length",
        "huge-content-length",
        "chunked-body",
        "malformed-header-line",
        "bad-request-line",
        "unknown-method",
        "overlong-request-line",
    ],
)
def test_malformed_requests_get_the_one_shape_and_no_traceback(
    server: tuple[str, Path], request_: bytes, status: int
) -> None:
    api, log = server
    before = log.stat().st_size
    response = exchange(api, request_)
    assert response.status == status
    check_error(response, [b"sneaky"])  # nothing sent is echoed
    assert response.will_close  # the rest of what was sent is not read as a next request
    assert b"Traceback" not in log.read_bytes()[before:]
    assert exchange(api, request_bytes(b"GET", b"/v1/openapi.json")).status == 200  # still serving


# -- a 500 never says why ---------------------------------------------------------------------------


def test_a_failure_outside_any_route_is_a_500_in_the_one_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("redis://:hunter2@10.0.0.5 is down")

    monkeypatch.setattr(functions_app, "services", broken)
    with Client(functions_app.app) as client:
        response = client.http.get("/v1/jobs/j1", headers={"Authorization": "Bearer x"})
    assert response.status_code == 500
    body = json.loads(response.body)
    assert set(body) == {"error"} and body["error"]["code"] == "internal_error"
    assert body["error"]["trace_id"] == response.headers["X-Trace-Id"]
    assert b"hunter2" not in response.body and b"Traceback" not in response.body
