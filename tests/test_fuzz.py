"""Property-based fuzzing of every parser hostile input reaches: the bounded JSON reader, every route
over HTTP against the real local server (``python -m functions.serve``, the fake provider behind the
proxy), the SSE parser and the Standard Webhooks verifier.

The properties: no 5xx, nothing raised out of a route or a parser but its own error, every error
answer in the one shape (``{"error": {"code", "message", "trace_id"}}``, the trace id also in
``X-Trace-Id``), and no answer holds a token, a secret or a stack trace. Budgets and the seed come
from the Hypothesis profile in tests/conftest.py (fixed in CI).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from localstack.bootstrap import bootstrap
from localstack.endpoint import Endpoint
from localstack.fake_provider import ROUTING_POLICY, provider_env, running_fake_provider
from shared.api.errors import ApiError
from shared.api.json_reader import MAX_DEPTH, read_json
from shared.auth import TokenStore
from shared.config import Settings
from shared.proxy.sse import SSEComment, SSEEvent, SSEParser, encode_event
from shared.webhooks import REASONS, WebhookVerificationError, sign, verify
from tests.support.api import ensure_bucket, new_whsec, put_site_secret, register_site, streaming_server
from tests.support.raw_http import RawResponse, check_error, check_no_leak, exchange, request_bytes

SITE = "fuzz-site"
ALIASES = sorted(cast(dict[str, Any], ROUTING_POLICY["routes"]))
SITE_SECRET = new_whsec()
JSON_CT = b"application/json"

# -- strategies -------------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: Strings that look like structure to a careless scanner: brackets, quotes, escapes.
tricky_strings = st.text(alphabet='[]{}"\\,:ab \n', max_size=12)


@st.composite
def nested(draw: st.DrawFn) -> tuple[bytes, int]:
    """Valid JSON ``depth`` containers deep, strings full of brackets beside each level."""
    depth = draw(st.integers(1, 3 * MAX_DEPTH))
    opens: list[str] = []
    closes: list[str] = []
    for _ in range(depth):
        decoy = json.dumps(draw(tricky_strings))
        if draw(st.booleans()):
            opens.append(f"[{decoy},")
            closes.append("]")
        else:
            opens.append(f'{{"k":{decoy},"v":')
            closes.append("}")
    return ("".join(opens) + "0" + "".join(reversed(closes))).encode(), depth


def deep_junk(n: int) -> bytes:
    return b"[" * n


hostile_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    nested().map(lambda pair: pair[0]),
    st.integers(MAX_DEPTH, 20_000).map(deep_junk),
    st.sampled_from(
        [b'{"a":1,"a":2}', b"NaN", b"[1e999]", b'"\\ud800"', b"\xef\xbb\xbf{}", b"\xff\xfe", b""]
    ),
)


def route_body(route: str) -> st.SearchStrategy[Any]:
    """Bodies close to what each route accepts, every field fuzzed: they get past the JSON reader."""
    anything = json_values
    if route == "jobs":
        return st.fixed_dictionaries(
            {"input": st.fixed_dictionaries({"title": st.text() | anything, "source": st.text() | anything})},
            optional={
                "metadata": st.dictionaries(
                    st.text(max_size=80), st.text(max_size=300) | anything, max_size=25
                ),
                "publish": anything,
                "site": st.text(max_size=70) | anything,
                "workflow": anything,
            },
        )
    if route == "prompts":
        return st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,70}", fullmatch=True) | anything},
            optional={"text": st.text() | anything, "note": anything, "version": anything},
        )
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | anything},
        optional={"content": st.text(max_size=40) | anything, "tool_calls": anything, "name": anything},
    )
    body: dict[str, st.SearchStrategy[Any]] = {
        "model": st.sampled_from(ALIASES) | st.text(max_size=20),
        "messages": st.lists(message, min_size=1, max_size=3) | anything,
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "stream": st.booleans() | anything,
        "system": anything,
        "tools": anything,
        "tool_choice": anything,
        "temperature": anything,
        "stream_options": anything,
    }
    tokens = st.integers(-5, 64) | anything
    if route == "messages":
        body["max_tokens"] = tokens
    else:
        optional["max_tokens"] = tokens
    return st.fixed_dictionaries(body, optional=optional)


#: Header values as bytes on the wire: anything but a line break (which the server sees as a line).
header_values = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header_names = st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)
fake_tokens = st.from_regex(r"(pl_)?[A-Za-z0-9_.-]{12,60}", fullmatch=True).map(str.encode)


@st.composite
def hostile_headers(draw: st.DrawFn, token: bytes) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """Headers for one request, and the token sent in them (None: no token of interest)."""
    headers: list[tuple[bytes, bytes]] = []
    sent: bytes | None = None
    choice = draw(st.sampled_from(["valid", "fake", "raw", "none", "api-key"]))
    if choice == "valid":
        sent = token
        headers.append((b"Authorization", b"Bearer " + token))
    elif choice == "fake":
        sent = draw(fake_tokens)
        headers.append((b"Authorization", b"Bearer " + sent))
    elif choice == "raw":
        headers.append((b"Authorization", draw(header_values)))
    elif choice == "api-key":
        sent = draw(fake_tokens | st.just(token))
        headers.append((b"x-api-key", sent))
    ctype = draw(st.sampled_from([JSON_CT, b"application/json; charset=utf-8", b"text/plain", None]))
    if ctype is not None:
        headers.append((b"Content-Type", ctype))
    headers += draw(st.lists(st.tuples(header_names, header_values), max_size=3))
    if draw(st.booleans()):  # a second Authorization or Content-Type, or a hostile traceparent
        name = draw(st.sampled_from([b"authorization", b"Authorization", b"traceparent", b"content-type"]))
        headers.append((name, draw(header_values)))
    return headers, sent


paths = st.sampled_from(
    [b"/v1/jobs", b"/v1/prompts", b"/v1/chat/completions", b"/v1/messages", b"/v1/models", b"/v1/jobs/j1"]
) | st.from_regex(rb"/[A-Za-z0-9._~%/{}-]{0,40}", fullmatch=True)
methods = st.sampled_from([b"POST", b"POST", b"POST", b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])


# -- the server ------------------------------------------------------------------------------------


class Target:
    """The server under test: its URL, log, a valid token and the secrets no answer may hold."""

    def __init__(self, url: str, log: Path, token: bytes) -> None:
        self.url = url
        self.log = log
        self.token = token
        self.log_offset = log.stat().st_size
        self.secrets = [SITE_SECRET.encode(), SITE_SECRET.removeprefix("whsec_").encode()]

    def send(
        self, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> RawResponse:
        return exchange(self.url, request_bytes(method, path, headers, body), method=method.decode())

    def check(self, response: RawResponse, sent: bytes | None) -> None:
        """The properties every answer has, whatever was sent."""
        assert response.status < 500, (response.status, response.body[:500])
        secrets = [*self.secrets, *([sent] if sent else [])]
        if response.status >= 400:
            check_error(response, secrets)
        else:
            check_no_leak(response, secrets)
        with self.log.open("rb") as log:  # nothing the server logged since the last check is a traceback
            log.seek(self.log_offset)
            new = log.read()
        self.log_offset += len(new)
        assert b"Traceback" not in new, new[-3000:]


@pytest.fixture(scope="module")
def target(
    redis_server: str, aws_endpoint: Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    scratch = tmp_path_factory.mktemp("fuzz")
    settings = Settings(broker_url=redis_server, aws_endpoint_url=aws_endpoint.url)
    ensure_bucket(settings)
    bootstrap(settings)  # provider keys in Secrets Manager
    put_site_secret(settings, SITE, SITE_SECRET)
    r = redis.Redis.from_url(redis_server)
    register_site(r, settings, SITE, "fuzz")
    token = TokenStore(r, settings.namespace).mint("fuzz", "editor", name="fuzz")[0].encode()
    policy = scratch / "routing.json"
    policy.write_text(json.dumps(ROUTING_POLICY))
    with running_fake_provider(in_thread=True) as fake:
        env = {
            **provider_env(fake),
            "PRESSLINE_ROUTING_POLICY": str(policy),
            "PRESSLINE_SERVE_WORKERS": "1",
            "PRESSLINE_API_RATE_LIMIT": "100000/s:100000",
            "PRESSLINE_PROXY_ATTEMPTS": "1",
        }
        log = scratch / "serve.log"
        with streaming_server(redis_server, log, **env) as url:
            yield Target(url, log, token)


HTTP = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the JSON reader ---------------------------------------------------------------------------------


@settings(max_examples=400)
@given(hostile_bodies)
def test_the_reader_answers_any_bytes_with_a_value_or_a_400(body: bytes) -> None:
    try:
        read_json(body, None, max_bytes=1 << 20)
    except ApiError as e:
        assert (e.status, e.code) == (400, "invalid_json") and e.message


@settings(max_examples=200)
@given(json_values)
def test_the_reader_reads_what_json_dumps_writes(value: Any) -> None:
    assert read_json(json.dumps(value).encode(), "application/json", max_bytes=1 << 20) == value


@settings(max_examples=200)
@given(nested())
def test_the_reader_refuses_nesting_past_the_limit_and_only_then(case: tuple[bytes, int]) -> None:
    body, depth = case
    try:
        read_json(body, None, max_bytes=1 << 20)
    except ApiError as e:
        assert depth > MAX_DEPTH and "nested deeper" in e.message, (depth, e.message)
    else:
        assert depth <= MAX_DEPTH


@settings(max_examples=100)
@given(st.dictionaries(st.text(max_size=10), json_values, min_size=1, max_size=5), st.data())
def test_the_reader_refuses_a_repeated_key_wherever_it_is(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    text = json.dumps(obj)
    repeated = text[:-1] + f", {json.dumps(key)}: 0}}"
    wrapped = data.draw(st.sampled_from(["{}", '{{"outer": [{}]}}', "[1, {}]"])).format(repeated)
    with pytest.raises(ApiError) as refused:
        read_json(wrapped.encode(), None, max_bytes=1 << 20)
    assert refused.value.status == 400 and "duplicate key" in refused.value.message


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=64))
def test_the_reader_refuses_a_body_over_its_size_before_parsing_it(body: bytes) -> None:
    with pytest.raises(ApiError) as refused:
        read_json(body, None, max_bytes=len(body) - 1)
    assert refused.value.status == 413


# -- every route over HTTP ----------------------------------------------------------------------------


@HTTP
@given(st.data())
def test_any_bytes_at_any_json_route(target: Target, data: st.DataObject) -> None:
    path = data.draw(
        st.sampled_from([b"/v1/jobs", b"/v1/prompts", b"/v1/chat/completions", b"/v1/messages"])
        | st.from_regex(rb"/v1/prompts/[a-z0-9._-]{1,70}/versions", fullmatch=True)
    )
    headers, sent = data.draw(hostile_headers(target.token))
    body = data.draw(hostile_bodies)
    target.check(target.send(b"POST", path, headers, body), sent)


@HTTP
@given(st.data())
def test_near_valid_bodies_at_each_route(target: Target, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(["jobs", "prompts", "versions", "chat", "messages"]))
    path = {
        "jobs": b"/v1/jobs",
        "prompts": b"/v1/prompts",
        "versions": b"/v1/prompts/fuzzed/versions",
        "chat": b"/v1/chat/completions",
        "messages": b"/v1/messages",
    }[route]
    body = data.draw(route_body({"versions": "prompts"}.get(route, route)))
    headers = [(b"Authorization", b"Bearer " + target.token), (b"Content-Type", JSON_CT)]
    target.check(target.send(b"POST", path, headers, json.dumps(body).encode()), target.token)


@HTTP
@given(st.data())
def test_any_request_at_any_path(target: Target, data: st.DataObject) -> None:
    headers, sent = data.draw(hostile_headers(target.token))
    response = target.send(data.draw(methods), data.draw(paths), headers, data.draw(hostile_bodies))
    target.check(response, sent)


@HTTP
@given(st.data())
def test_webhooks_signed_or_not(target: Target, data: st.DataObject) -> None:
    site = data.draw(st.just(SITE) | st.from_regex(r"[A-Za-z0-9_-]{1,70}", fullmatch=True))
    body = data.draw(
        hostile_bodies
        | st.fixed_dictionaries(
            {"type": st.just("post.generate_requested") | st.text(max_size=20), "data": json_values}
        ).map(lambda v: json.dumps(v).encode())
    )
    msg_id = "msg_" + data.draw(st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True))
    stamp = int(time.time()) + data.draw(st.sampled_from([0, 0, -10_000, 10_000]))
    secret = data.draw(st.sampled_from([SITE_SECRET, new_whsec()]))
    headers = [
        (b"Content-Type", JSON_CT),
        (b"webhook-id", msg_id.encode()),
        (b"webhook-timestamp", data.draw(st.just(str(stamp).encode()) | header_values)),
        (
            b"webhook-signature",
            data.draw(st.just(sign(secret, msg_id, stamp, body).encode()) | header_values),
        ),
    ]
    response = target.send(b"POST", b"/v1/webhooks/wordpress/" + site.encode(), headers, body)
    target.check(response, None)
    if secret != SITE_SECRET:  # signed with any other secret: never accepted
        assert response.status in (400, 401, 404, 409, 413, 422), response.status


# -- the SSE parser ----------------------------------------------------------------------------------

sse_lines = st.lists(
    st.sampled_from(
        [
            b"data: x",
            b"data:",
            b'data: {"a": 1}',
            b"event: e",
            b"id: 7",
            b"id: \x00",
            b"retry: 5",
            b"retry: x",
            b": keep-alive",
            b"",
            b"\xef\xbb\xbf",
            b"\xff\xfe",
            b"field",
            b"data: [DONE]",
        ]
    )
    | st.binary(max_size=12),
    max_size=12,
)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


def events(parser: SSEParser[SSEEvent | SSEComment], chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.close()


@settings(max_examples=300)
@given(sse_lines, st.lists(line_ends, min_size=1, max_size=12), st.data())
def test_sse_parsing_is_the_same_however_the_bytes_are_split(
    lines: list[bytes], ends: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = events(SSEParser(comments=True), [stream])
    assert events(SSEParser(comments=True), chunks) == whole
    for item in whole:
        assert isinstance(item, SSEEvent | SSEComment)


@settings(max_examples=300)
@given(
    st.text() | json_values,
    st.none() | st.text().filter(lambda s: "\n" not in s and "\r" not in s),
    st.none() | st.text().filter(lambda s: not {"\n", "\r", "\x00"} & set(s)),
)
def test_an_encoded_event_parses_back_to_itself(data: Any, event: str | None, id_: str | None) -> None:
    (parsed,) = SSEParser().feed(encode_event(data, event, id=id_))
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    assert parsed.data == text.replace("\r\n", "\n").replace("\r", "\n")
    assert (parsed.event, parsed.id) == (event, id_)


# -- the Standard Webhooks verifier ------------------------------------------------------------------

any_headers = st.dictionaries(
    st.sampled_from(
        ["webhook-id", "Webhook-Id", "webhook-timestamp", "WEBHOOK-TIMESTAMP", "webhook-signature"]
    )
    | st.text(max_size=10),
    st.text(max_size=80) | st.text(alphabet=st.characters(max_codepoint=255), max_size=80),
    max_size=6,
)
secrets_ = st.builds(
    lambda key: "whsec_" + base64.b64encode(key).decode(), st.binary(min_size=16, max_size=40)
)


@settings(max_examples=300)
@given(any_headers, st.binary(max_size=200), st.integers(0, 2**40), secrets_)
def test_verify_raises_only_its_own_error_on_anything(
    headers: dict[str, str], body: bytes, now: int, secret: str
) -> None:
    try:
        verify([secret], headers, body, now=now)
    except WebhookVerificationError as e:
        assert e.reason in REASONS and secret not in str(e)
    else:  # random headers never carry this fresh secret's signature
        pytest.fail("verified without a signature made with the secret")


@settings(max_examples=300)
@given(
    st.text(st.characters(categories=["L", "N", "P", "S"], exclude_characters="."), min_size=1, max_size=40),
    st.binary(max_size=200),
    secrets_,
    secrets_,
    st.lists(
        st.binary(min_size=32, max_size=32).map(lambda b: "v1," + base64.b64encode(b).decode()), max_size=3
    ),
)
def test_verify_never_accepts_without_the_right_secret(
    msg_id: str, body: bytes, secret: str, other: str, decoys: list[str]
) -> None:
    assume(secret != other)
    now = 1_700_000_000
    good = sign(secret, msg_id, now, body)
    forged = sign(other, msg_id, now, body)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": " ".join([forged, *decoys]),
    }
    with pytest.raises(WebhookVerificationError) as refused:
        verify([secret], headers, body, now=now)
    assert refused.value.reason == "bad_signature"
    headers["webhook-signature"] = " ".join([*decoys, good])
    verify([other, secret], headers, body, now=now)  # the right one among several: accepted
    with pytest.raises(WebhookVerificationError):
        verify([secret], headers, body + b"x", now=now)  # one byte more: refused
