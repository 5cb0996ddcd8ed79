"""The egress guard (shared.egress): which addresses a site's WordPress URL and the outbound webhook
endpoints may reach, checked at registration/startup and again on every connection.

The address policy is tested on its own (every refused class, IPv6 and its IPv4-embedding forms,
odd spellings resolved by ``getaddrinfo``, the allow-list by host, port and CIDR). Then real local
HTTP servers on loopback that are *not* allow-listed show that the WordPress client, the outbound
sender and the webhooks worker refuse them before sending a byte (the servers count zero requests,
so no Application Password and no signed body left), that a name rebinding to loopback between
registration and connection is refused, and that a redirect to a refused address is not followed.
The ``python -m shared.sites register`` CLI and a worker's startup are run as real processes.
No traffic leaves loopback: public addresses only ever appear in resolvers and fake backends.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from infra.redis_server import free_port
from localstack.bootstrap import new_webhook_secret
from localstack.endpoint import Endpoint
from shared.aws import aws_client
from shared.config import ConfigError, Settings
from shared.egress import (
    AllowRule,
    EgressPolicy,
    EgressRefused,
    GuardedBackend,
    format_allow_list,
    guarded_client,
    parse_allow_list,
    refusal_reason,
)
from shared.errors import PermanentError
from shared.outbound import QUEUE, checked_endpoints, deliver, new_event, publish_event
from shared.pipeline.publish import publish_article
from shared.sites import Site, SiteRegistry
from shared.streams import RedisStreamsBroker
from shared.wordpress import (
    AddressRefused,
    SiteCredentials,
    WordPressClient,
    WordPressError,
    store_credentials,
)
from tests.support.workers import ROOT, start_workers, stop_workers, worker_children, worker_env

NS = "egresstest"
APP_PASSWORD = "abcd EFGH ijkl MNOP qrst UVWX"
SECRET = new_webhook_secret()
#: Documentation/benchmark-free public addresses, used only by fake resolvers (never connected to).
PUBLIC_V4 = "93.184.216.34"


# -- the address policy ----------------------------------------------------------------------------------

REFUSED = {
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "::1": "loopback",
    "169.254.169.254": "link-local (instance metadata)",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "febf:ffff::1": "link-local",  # the top of fe80::/10
    "10.0.0.5": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fd00:ec2::254": "private (instance metadata)",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "reserved",
    "100.64.0.1": "non-global",  # shared address space (carrier-grade NAT)
    "fec0::1": "site-local",
    "::ffff:127.0.0.1": "loopback in IPv4-mapped form",
    "::ffff:10.0.0.5": "private in IPv4-mapped form",
    "::ffff:169.254.169.254": "link-local (instance metadata) in IPv4-mapped form",
    "64:ff9b::7f00:1": "loopback in NAT64 form",
    "2002:a00:1::": "private in 6to4 form",
    "2002:7f00:1::": "loopback in 6to4 form",
}

PUBLIC = ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "reason"), REFUSED.items())
def test_every_non_public_class_is_refused_with_its_reason(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None
    assert EgressPolicy(resolver=lambda host, port: [address]).check_url("https://blog.example/") == [
        ipaddress.ip_address(address)
    ]


@pytest.mark.parametrize(
    ("url", "address", "reason"),
    [
        ("http://2130706433/", "127.0.0.1", "loopback"),  # decimal
        ("http://017700000001/", "127.0.0.1", "loopback"),  # octal
        ("http://0x7f.1/", "127.0.0.1", "loopback"),  # hex, two parts
        ("http://127.1:8080/", "127.0.0.1", "loopback"),
        ("http://0/", "0.0.0.0", "unspecified"),
        ("http://0xa9fea9fe/latest/meta-data/", "169.254.169.254", "link-local (instance metadata)"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local (instance metadata)"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "loopback in IPv4-mapped form"),
        ("http://[::1]:6379/", "::1", "loopback"),
        ("http://10.0.0.5/", "10.0.0.5", "private"),
        ("https://LocalHost/", "127.0.0.1", "loopback"),  # /etc/hosts
    ],
)
def test_odd_spellings_are_judged_by_the_address_getaddrinfo_gives(
    url: str, address: str, reason: str
) -> None:
    """The system resolver (numeric forms and /etc/hosts only: no DNS query leaves this machine)."""
    with pytest.raises(EgressRefused) as refused:
        EgressPolicy().check_url(url)
    assert refused.value.address == address and refused.value.reason == reason
    assert reason in str(refused.value)


def test_a_name_with_any_refused_address_is_refused() -> None:
    policy = EgressPolicy(resolver=lambda host, port: [PUBLIC_V4, "10.0.0.5"])
    with pytest.raises(EgressRefused, match="private") as refused:
        policy.check_url("https://mixed.example/")
    assert refused.value.host == "mixed.example" and refused.value.address == "10.0.0.5"


def test_allow_list_entries_parse_and_print_back() -> None:
    raw = "127.0.0.1:8088, localhost,[::1]:6379,10.0.0.0/8:443,fd00::/8,Wp.Internal.:80,[fd00::/8]:8443,::1"
    rules = parse_allow_list(raw)
    assert rules == (
        AllowRule(network=ipaddress.ip_network("127.0.0.1/32"), port=8088),
        AllowRule(name="localhost"),
        AllowRule(network=ipaddress.ip_network("::1/128"), port=6379),
        AllowRule(network=ipaddress.ip_network("10.0.0.0/8"), port=443),
        AllowRule(network=ipaddress.ip_network("fd00::/8")),
        AllowRule(name="wp.internal", port=80),
        AllowRule(network=ipaddress.ip_network("fd00::/8"), port=8443),
        AllowRule(network=ipaddress.ip_network("::1/128")),
    )
    assert parse_allow_list(format_allow_list(rules)) == rules
    assert parse_allow_list("") == () and parse_allow_list(None) == () and parse_allow_list(" , ") == ()


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("10.0.0.1/8", "not an address or network"),  # host bits set: say what you mean
        ("localhost:0", "port"),
        ("localhost:65536", "port"),
        ("localhost:http", "port"),
        ("[::1", r"want \[address\]"),
        ("[::1]6379", r"want \[address\]"),
        ("0x7f.1", "not a host name"),  # an address in an odd spelling is refused, not taken as a name
        ("2130706433", "not a host name"),
        ("bad_name", "not a host name"),
        ("-x.example", "not a host name"),
    ],
)
def test_bad_allow_list_entries_are_refused(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        AllowRule.parse(entry)
    with pytest.raises(ConfigError, match=r"PRESSLINE_EGRESS_ALLOW: entry 2"):
        Settings.from_env({"PRESSLINE_EGRESS_ALLOW": f"localhost,{entry}"})


def resolving(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A resolver from a table (unknown names do not resolve)."""

    def resolve(host: str, port: int) -> list[str]:
        if host.rstrip(".").lower() in table:  # as DNS would: case-blind, root dot optional
            return table[host.rstrip(".").lower()]
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: unknown")

    return resolve


def test_the_allow_list_by_host_by_port_by_address_and_by_cidr() -> None:
    dns = resolving(
        {
            "wp.local": ["127.0.0.1", "::1"],
            "other.local": ["127.0.0.1"],
            "10.1.2.3": ["10.1.2.3"],
            "192.168.0.9": ["192.168.0.9"],
            "mapped.local": ["::ffff:127.0.0.1"],
            "fd.local": ["fd00::7"],
            "2130706433": ["127.0.0.1"],
        }
    )

    def allowed(allow: str, url: str) -> bool:
        try:
            EgressPolicy(parse_allow_list(allow), resolver=dns).check_url(url)
        except EgressRefused:
            return False
        return True

    # a name: whatever it resolves to, any port; not another name resolving to the same address
    assert allowed("wp.local", "http://wp.local:8088/") and allowed("wp.local", "https://WP.LOCAL./")
    assert not allowed("wp.local", "http://other.local:8088/")
    # a name and a port: that port only
    assert allowed("wp.local:8088", "http://wp.local:8088/")
    assert not allowed("wp.local:8088", "http://wp.local:6379/")
    assert not allowed("wp.local:8088", "http://wp.local/")
    # an address: any name and spelling that resolves to it, every address of the name must match
    assert allowed("127.0.0.1:8088", "http://other.local:8088/")
    assert allowed("127.0.0.1:8088", "http://2130706433:8088/")
    assert allowed("127.0.0.1", "http://mapped.local:1/")  # ::ffff:127.0.0.1 is 127.0.0.1
    assert not allowed("127.0.0.1:8088", "http://other.local:6379/")
    assert not allowed("127.0.0.1:8088", "http://wp.local:8088/")  # its ::1 is not allowed
    assert allowed("127.0.0.1:8088,[::1]:8088", "http://wp.local:8088/")
    # a network, with and without a port
    assert allowed("10.0.0.0/8", "http://10.1.2.3:9/") and not allowed("10.0.0.0/8", "http://192.168.0.9/")
    assert allowed("10.0.0.0/8:443", "https://10.1.2.3/")
    assert not allowed("10.0.0.0/8:443", "http://10.1.2.3/")
    assert allowed("fd00::/8", "http://fd.local/") and not allowed("fc00::/8", "http://fd.local/")
    assert allowed("[fd00::/8]:80", "http://fd.local/") and not allowed("[fd00::/8]:81", "http://fd.local/")
    # nothing allowed by default
    assert not allowed("", "http://other.local/")


def test_settings_read_the_allow_list_and_refuse_outbound_address_literals() -> None:
    assert Settings().egress_allow == () and Settings.from_env({}).egress_allow == ()
    settings = Settings.from_env({"PRESSLINE_EGRESS_ALLOW": "127.0.0.1:9000,hooks.internal"})
    assert format_allow_list(settings.egress_allow) == "127.0.0.1:9000,hooks.internal"
    for url in (
        "http://127.0.0.1:9001/hook?token=hush",  # the allowed address, another port
        "http://2130706433:9002/hook?token=hush",  # the allowed address in decimal, another port
        "http://[::ffff:169.254.169.254]/hook?token=hush",
        "http://10.0.0.5/hook?token=hush",
    ):
        with pytest.raises(ConfigError, match=r"PRESSLINE_OUTBOUND_WEBHOOK_URLS: entry 2: .*refused") as bad:
            Settings.from_env(
                {
                    "PRESSLINE_EGRESS_ALLOW": "127.0.0.1:9000",
                    "PRESSLINE_OUTBOUND_WEBHOOK_URLS": f"https://hooks.example/in,{url}",
                }
            )
        assert "hush" not in str(bad.value)
    ok = Settings.from_env(
        {
            "PRESSLINE_EGRESS_ALLOW": "127.0.0.1:9000",
            "PRESSLINE_OUTBOUND_WEBHOOK_URLS": "http://127.0.0.1:9000/hook,https://hooks.example/in",
        }
    )
    assert ok.outbound_webhook_urls == ("http://127.0.0.1:9000/hook", "https://hooks.example/in")


def test_outbound_names_are_resolved_and_checked_at_startup() -> None:
    """A name passes reading the settings (no DNS there) and is checked where deliveries start."""
    port = free_port()
    settings = Settings.from_env({"PRESSLINE_OUTBOUND_WEBHOOK_URLS": f"http://localhost:{port}/hook?t=hush"})
    refusal = r"entry 1: localhost \(127\.0\.0\.1\) port \d+: refused, loopback"
    with pytest.raises(ConfigError, match=refusal) as e:
        checked_endpoints(settings)
    assert "hush" not in str(e.value)
    allowed = Settings.from_env(
        {
            "PRESSLINE_OUTBOUND_WEBHOOK_URLS": f"http://localhost:{port}/hook",
            "PRESSLINE_EGRESS_ALLOW": f"localhost:{port}",
        }
    )
    assert checked_endpoints(allowed) == (f"http://localhost:{port}/hook",)
    # a name that does not resolve now is kept: each delivery checks it when connecting
    unresolved = EgressPolicy(resolver=resolving({}))
    assert checked_endpoints(settings, unresolved) == settings.outbound_webhook_urls


# -- real servers on loopback ----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    """A WordPress-shaped HTTP server that records every request it gets.

    ``redirect_to``: answer every request with a 302 there instead.
    """

    host: str
    port: int = 0
    redirect_to: str | None = None
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)


@contextlib.contextmanager
def serve(host: str = "127.0.0.1", redirect_to: str | None = None) -> Iterator[Server]:
    state = Server(host, redirect_to=redirect_to)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            with state.lock:
                state.seen.append(
                    Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                )
            if state.redirect_to is not None:
                status, body, extra = 302, b"", {"Location": state.redirect_to}
            elif self.command == "GET":
                status, body, extra = 200, b"[]", {}
            elif self.path.startswith("/wp-json/"):
                post = {"id": 7, "status": "draft", "link": f"{state.url}/?p=7"}
                status, body, extra = 201, json.dumps(post).encode(), {}
            else:
                status, body, extra = 204, b"", {}
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def target() -> Iterator[Server]:
    """A server on 127.0.0.1 that no allow-list in these tests names (unless a test says so)."""
    with serve() as server:
        yield server


def wp_client(
    redis_url: str, base_url: str, http: httpx.Client, *, site: str | None = None
) -> WordPressClient:
    return WordPressClient(
        site or f"s{uuid.uuid4().hex[:8]}",
        SiteCredentials(base_url, "bot", APP_PASSWORD),
        http=http,
        redis=redis.Redis.from_url(redis_url),
        namespace=NS,
        timeout_s=5.0,
        attempts=2,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        rate_per_s=0,
        registry=CollectorRegistry(),
    )


def assert_no_secret(error: BaseException) -> None:
    text = f"{error} {error!r}"
    token = base64.b64encode(f"bot:{APP_PASSWORD}".encode()).decode()
    assert APP_PASSWORD not in text and token not in text and SECRET not in text


def test_the_wordpress_client_refuses_a_loopback_site_and_sends_nothing(
    redis_url: str, target: Server
) -> None:
    client = wp_client(redis_url, target.url, guarded_client(EgressPolicy()))
    with pytest.raises(AddressRefused) as refused:
        client.upsert_post(external_ref=f"job-{uuid.uuid4().hex}", title="T", content_html="<p>x</p>")
    error = refused.value
    assert not error.retryable and error.kind == "address_refused" and error.reason == "loopback"
    assert "the site's URL resolves to a refused address (loopback)" in str(error)
    assert_no_secret(error)
    with pytest.raises(AddressRefused):
        client.find_by_ref("job-1")
    assert target.requests() == []  # not one request: the Application Password never left
    # the same client and server once the allow-list names the address and port
    allowed = wp_client(redis_url, target.url, guarded_client(EgressPolicy([f"127.0.0.1:{target.port}"])))
    post = allowed.upsert_post(external_ref=f"job-{uuid.uuid4().hex}", title="T", content_html="<p>x</p>")
    assert post.id == 7
    seen = target.requests()
    assert [(r.method, r.path.split("?")[0]) for r in seen] == [
        ("GET", "/wp-json/wp/v2/posts"),
        ("POST", "/wp-json/wp/v2/posts"),
    ]
    assert seen[0].headers["authorization"].startswith("Basic ")


def test_a_site_whose_secret_points_at_loopback_fails_the_publish_for_good(
    redis_url: str, aws_endpoint: Endpoint, target: Server
) -> None:
    """The production path: ``for_site`` reads the URL from the credentials secret (which
    registration never sees) and checks it on connecting; publish turns it into a PermanentError."""
    settings = Settings(broker_url=redis_url, aws_endpoint_url=aws_endpoint.url, namespace=NS)
    client = redis.Redis.from_url(redis_url)
    site = f"s{uuid.uuid4().hex[:8]}"
    secret_id = f"pressline-test/{site}/wordpress"
    store_credentials(
        aws_client("secretsmanager", settings), secret_id, SiteCredentials(target.url, "bot", APP_PASSWORD)
    )
    SiteRegistry(client, NS).register(Site(site, "acme", False, None, secret_id))
    writer = WordPressClient.for_site(site, settings, client)
    article = {"title": "T", "html": "<p>x</p>"}
    with pytest.raises(PermanentError) as failed:
        publish_article(writer, article, job_id=f"job-{uuid.uuid4().hex}", status="draft", trace_id=None)
    assert str(failed.value) == "the site's URL resolves to a refused address (loopback)"
    assert_no_secret(failed.value)
    assert target.requests() == []
    allowed = Settings(
        broker_url=redis_url,
        aws_endpoint_url=aws_endpoint.url,
        namespace=NS,
        egress_allow=parse_allow_list(f"127.0.0.1:{target.port}"),
    )
    published = publish_article(
        WordPressClient.for_site(site, allowed, client),
        article,
        job_id=f"job-{uuid.uuid4().hex}",
        status="draft",
        trace_id=None,
    )
    assert published.post_id == 7 and len(target.requests()) == 2


def test_the_outbound_sender_refuses_a_loopback_endpoint_and_sends_nothing(target: Server) -> None:
    event = new_event("test.ping", {"n": 1})
    url = f"{target.url}/hook?token=hush"
    # deliver()'s own client (the default policy), and a guarded client as the worker passes one
    for client in (None, guarded_client(EgressPolicy())):
        with pytest.raises(PermanentError, match="resolves to a refused address \\(loopback\\)") as refused:
            deliver(url, event, "msg_1", SECRET, timeout=5, client=client)
        assert "hush" not in str(refused.value)
        assert_no_secret(refused.value)
    assert target.requests() == []
    allowed = EgressPolicy([f"127.0.0.1:{target.port}"])
    assert deliver(url, event, "msg_1", SECRET, timeout=5, egress=allowed) == 204
    assert len(target.requests()) == 1


@pytest.fixture
def producer(redis_url: str) -> Iterator[RedisStreamsBroker]:
    broker = RedisStreamsBroker(url=redis_url, namespace="pressline")
    yield broker
    broker.close()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_webhooks_worker_dead_letters_a_refused_endpoint_without_sending(
    redis_url: str, producer: RedisStreamsBroker, target: Server, aws_endpoint: Endpoint, tmp_path: Path
) -> None:
    """A real worker process with the default policy (nothing allowed)."""
    main = start_workers(
        redis_url,
        module="workers.app",
        queues=("webhooks",),
        threads=2,
        log=tmp_path / "workers.log",
        dramatiq_prom_port=str(free_port()),
        dramatiq_prom_db=str(tmp_path / "prom"),
        PRESSLINE_EGRESS_ALLOW="",
        PRESSLINE_OUTBOUND_WEBHOOK_SECRET=SECRET,
    )
    try:
        worker_children(main, 1)
        msg_id = publish_event(
            producer, "run.completed", {"job_id": "j1"}, urls=[f"{target.url}/hook?t=hush"]
        )
        wait_for(lambda: producer.admin.stats(QUEUE).dead == 1, 30, "the dead letter")
    finally:
        stop_workers(main)
    (dead,) = producer.admin.dead_letters(QUEUE)
    assert dead.attempts == 1 and dead.message["args"][2] == msg_id  # permanent: not retried
    assert "PermanentError" in dead.error and "resolves to a refused address (loopback)" in dead.error
    assert "hush" not in dead.error
    assert target.requests() == []


def test_a_worker_with_a_refused_outbound_endpoint_does_not_start(
    redis_url: str, aws_endpoint: Endpoint, tmp_path: Path
) -> None:
    """A name (``localhost``) passes reading the settings; the worker resolves it at startup."""
    log = tmp_path / "workers.log"
    main = start_workers(
        redis_url,
        module="workers.app",
        queues=("webhooks",),
        threads=1,
        log=log,
        dramatiq_prom_port=str(free_port()),
        dramatiq_prom_db=str(tmp_path / "prom"),
        PRESSLINE_EGRESS_ALLOW="",
        PRESSLINE_OUTBOUND_WEBHOOK_URLS=f"http://localhost:{free_port()}/hook?token=hush",
    )
    try:
        code = main.wait(60)
    finally:
        stop_workers(main)
    text = log.read_text(errors="replace")
    assert code != 0
    assert "ConfigError: PRESSLINE_OUTBOUND_WEBHOOK_URLS: entry 1: localhost (127.0.0.1)" in text
    assert "refused, loopback" in text and "hush" not in text


# -- DNS rebinding: checked on the address actually connected to -------------------------------------


class Rebinding:
    """``rebind.test``: a public address on the first lookup (registration), then ``then``."""

    def __init__(self, then: Sequence[str]) -> None:
        self.then = list(then)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return [PUBLIC_V4] if len(self.lookups) == 1 else self.then


def test_a_name_rebinding_to_loopback_after_registration_is_refused_on_connecting(
    redis_url: str, target: Server
) -> None:
    dns = Rebinding(then=["127.0.0.1"])
    policy = EgressPolicy(resolver=dns)
    client = redis.Redis.from_url(redis_url)
    base_url = f"http://rebind.test:{target.port}"
    SiteRegistry(client, NS, policy).register(Site("rebound", "acme", False, base_url))  # public then
    record = SiteRegistry(client, NS).get("rebound")
    assert record is not None and record.base_url == base_url
    writer = wp_client(redis_url, base_url, guarded_client(policy))
    with pytest.raises(AddressRefused, match="refused address \\(loopback\\)"):
        writer.upsert_post(external_ref=f"job-{uuid.uuid4().hex}", title="T", content_html="<p>x</p>")
    assert dns.lookups == ["rebind.test", "rebind.test"]  # looked up again for the connection
    assert target.requests() == []


def test_the_connection_goes_to_the_checked_address_with_the_names_host_header(
    target: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rebind.test`` exists only in the policy's resolver, and nothing else may resolve it: the
    request arrives only because the connection went to the address the policy checked."""
    system_lookups: list[Any] = []
    real = socket.getaddrinfo

    def watched(host: Any, *args: Any, **kwargs: Any) -> Any:
        system_lookups.append(host)
        if host == "rebind.test":
            raise AssertionError("the name was resolved again, outside the check")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", watched)
    dns = Rebinding(then=["127.0.0.1"])
    dns.lookups.append("(registration)")  # straight to the second answer
    policy = EgressPolicy([f"127.0.0.1:{target.port}"], resolver=dns)
    with guarded_client(policy) as http:
        answer = http.get(f"http://rebind.test:{target.port}/wp-json/wp/v2/posts")
    assert answer.status_code == 200
    (seen,) = target.requests()
    assert seen.headers["host"] == f"rebind.test:{target.port}"  # the name, not the address
    assert "rebind.test" not in system_lookups and "127.0.0.1" in system_lookups


class _Stop(Exception):
    pass


class _RecordingStream(httpcore.NetworkStream):
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        raise _Stop

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.log.append(("write", buffer))
        raise _Stop

    def close(self) -> None:
        pass

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        self.log.append(("sni", server_hostname))
        raise _Stop

    def get_extra_info(self, info: str) -> Any:
        return None


class _RecordingBackend(httpcore.NetworkBackend):
    """Makes no connection: records where it was asked to connect, and the TLS server name."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        self.log.append(("connect", (host, port)))
        return _RecordingStream(self.log)


def test_tls_keeps_the_original_name_for_sni_while_connecting_to_the_checked_address() -> None:
    backend = _RecordingBackend()
    policy = EgressPolicy(resolver=resolving({"blog.example": [PUBLIC_V4]}))
    with (
        httpcore.ConnectionPool(network_backend=GuardedBackend(policy, backend)) as pool,
        pytest.raises(_Stop),
    ):
        pool.request("GET", "https://blog.example/wp-json/")
    assert backend.log == [("connect", (PUBLIC_V4, 443)), ("sni", "blog.example")]
    # and a refused address is never handed to the backend at all
    refused = EgressPolicy(resolver=resolving({"blog.example": ["10.0.0.5"]}))
    with (
        httpcore.ConnectionPool(network_backend=GuardedBackend(refused, backend)) as pool,
        pytest.raises(EgressRefused),
    ):
        pool.request("GET", "https://blog.example/wp-json/")
    assert len(backend.log) == 2


def test_unix_sockets_are_never_an_egress() -> None:
    with pytest.raises(EgressRefused, match="Unix socket"):
        GuardedBackend(EgressPolicy(["localhost"])).connect_unix_socket("/run/redis.sock")


# -- redirects ---------------------------------------------------------------------------------------


def test_a_redirect_to_a_refused_address_is_not_followed(redis_url: str, target: Server) -> None:
    """An allowed server answers 302 to ``target`` (same address, another port: not allowed)."""
    with serve(redirect_to=f"{target.url}/wp-json/wp/v2/posts") as hop:
        policy = EgressPolicy([f"127.0.0.1:{hop.port}"])
        writer = wp_client(redis_url, hop.url, guarded_client(policy))
        with pytest.raises(WordPressError) as answered:
            writer.find_by_ref("job-1")
        assert answered.value.status == 302 and not answered.value.retryable
        event = new_event("test.ping", {})
        with pytest.raises(PermanentError, match="answered 302"):
            deliver(f"{hop.url}/hook", event, "msg_1", SECRET, timeout=5, client=guarded_client(policy))
        # a caller that does ask for redirects still has the hop checked on connecting
        with guarded_client(policy) as http, pytest.raises(EgressRefused, match="loopback"):
            http.get(f"{hop.url}/x", follow_redirects=True)
        assert len(hop.requests()) == 3
    assert target.requests() == []


# -- registration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("http://169.254.169.254/latest", "link-local (instance metadata)"),
        ("http://10.0.0.5", "private"),
        ("http://[::1]:6379", "loopback"),
        ("http://2130706433:8088", "loopback"),
        ("http://[::ffff:127.0.0.1]", "loopback in IPv4-mapped form"),
    ],
)
def test_registration_refuses_a_base_url_that_resolves_to_a_refused_address(
    redis_url: str, base_url: str, reason: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    registry = SiteRegistry(client, NS)
    with pytest.raises(ValueError, match="base_url resolves to a refused address") as refused:
        registry.register(Site("evil", "acme", False, base_url))
    assert reason in str(refused.value) and "PRESSLINE_EGRESS_ALLOW" in str(refused.value)
    assert registry.get("evil") is None


def test_registration_with_an_allow_list_and_of_names(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    allowed = SiteRegistry(client, NS, EgressPolicy(["127.0.0.1:8088"]))
    allowed.register(Site("local", "acme", False, "http://127.0.0.1:8088"))
    assert (site := allowed.get("local")) is not None and site.base_url == "http://127.0.0.1:8088"
    with pytest.raises(ValueError, match="refused"):
        allowed.register(Site("local2", "acme", False, "http://127.0.0.1:6379"))
    public = SiteRegistry(client, NS, EgressPolicy(resolver=resolving({"blog.example": [PUBLIC_V4]})))
    public.register(Site("blog", "acme", False, "https://blog.example"))
    assert public.get("blog") is not None
    with pytest.raises(ValueError, match="does not resolve"):
        public.register(Site("typo", "acme", False, "https://blgo.example"))
    assert public.get("typo") is None
    public.register(Site("no-url", "acme", True))  # nothing to check: the secret's URL is checked on use


def run_cli(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.sites", *args],
        cwd=ROOT,
        env=worker_env(redis_url, PRESSLINE_NAMESPACE=NS, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_register_cli_refuses_a_refused_base_url_with_a_clear_message(redis_url: str) -> None:
    registry = SiteRegistry(redis.Redis.from_url(redis_url), NS)
    for base_url, reason in (
        ("http://169.254.169.254/latest/meta-data", "link-local (instance metadata)"),
        ("http://127.0.0.1:8088", "loopback"),
        ("http://0x7f.1:6379", "loopback"),
    ):
        done = run_cli(
            redis_url, "register", "--site", "evil", "--tenant", "acme", "--base-url", base_url,
            PRESSLINE_EGRESS_ALLOW="",
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(
            "error: site evil not registered: base_url resolves to a refused address"
        )
        assert reason in done.stderr and "Traceback" not in done.stderr
        assert registry.get("evil") is None
    done = run_cli(
        redis_url, "register", "--site", "local", "--tenant", "acme", "--base-url", "http://127.0.0.1:8088",
        PRESSLINE_EGRESS_ALLOW="127.0.0.1:8088",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (site := registry.get("local")) is not None and site.base_url == "http://127.0.0.1:8088"
