"""The API's cost: the webhook handler in-process, and requests/s through a real ``chalice local``.

Run ``make bench-api`` (or ``.venv/bin/python -m bench.api_bench --help``). The bench starts its
own ``redis-server`` on a free port and its own moto server on a free port
(``localstack.endpoint.ensure_endpoint``), and stops both at the end. ``--aws-port 4566`` uses the
emulator already on that port instead. The shared one on 4566 may belong to a test session that
stops it halfway through the bench. The endpoint holds the site's webhook secret (Secrets Manager).

(a) Webhook handler, in-process, one thread, N signed ``post.generate_requested`` webhooks, each
    with a fresh id and signed before its timer starts:

    * ``service``: ``Services.webhooks.receive(site, headers, body)``, the function the route
      calls. This covers HMAC verify (constant time, over the raw body), the site lookup, the rate
      limit check, the replay guard (``SET NX`` with a TTL) and the enqueue (job record and
      ``XADD``). The site secret comes from the in-process cache (TTL 60 s), which is warmed first.
    * ``chalice test client``: the same request through ``chalice.test.Client(functions.app.app)``.
      That adds Chalice's routing, the HTTP middleware (an OpenTelemetry span with the no-op
      exporter, the error shape, the trace headers) and building the Response. It is still
      in-process: no socket, no HTTP parsing.
    * ``verify only``: ``shared.webhooks.verify`` alone, the pure CPU part, for scale.

(b) HTTP through ``chalice local`` (``--no-autoreload``), a dev server: Python's
    ``ThreadingHTTPServer``, one thread per connection, one process, with the GIL. Clients use
    httpx with keep-alive, one connection per client. ``POST /v1/jobs`` (editor token, no
    Idempotency-Key) and ``GET /v1/jobs/{id}`` (a job created beforehand), each sequentially
    (1 client) and with ``--clients`` concurrent clients (threads in this process). The clients
    share the machine's 2 cores with the server and Redis, so these figures bound the dev server
    on this box. They are not a Lambda or API Gateway figure. "server CPU ms/req" is the
    ``chalice local`` process's CPU time divided by the requests.

The per-tenant API rate limit is lifted for the bench (``PRESSLINE_API_RATE_LIMIT``). The limiter
still runs on every request; it just never refuses. "other load" is the share of the machine's CPU
used by processes outside the bench during each measurement. Near 0 % means the numbers are clean.
The table goes to stdout, everything else to stderr, and the full samples to
``bench/results/api-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import chalice
import httpx
import psutil
import redis

from infra.local_api import local_api
from infra.redis_server import free_port, start_redis, stop_process
from localstack.endpoint import Endpoint, ensure_endpoint
from shared.api.services import Services
from shared.auth import TokenStore
from shared.aws import LOCAL_CREDENTIALS, aws_client
from shared.config import RateLimit, Settings
from shared.sites import Site, SiteRegistry
from shared.webhooks import sign, verify

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
#: functions/.chalice/config.json sets PRESSLINE_NAMESPACE for chalice local; the Redis is the bench's own.
NAMESPACE = "pressline"
SITE = "bench-site"
TENANT = "bench"
UNLIMITED = "1000000/s:1000000"
JOB = {"input": {"title": "Bench", "source": "One. Two. Three."}, "site": SITE}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- measurement helpers ------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class CpuWatch:
    """CPU seconds of the machine, of the bench's own processes, and of extra pids, between two points."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]

    def _now(self) -> tuple[float, float, list[float], float]:
        machine = psutil.cpu_times()
        me = psutil.Process().cpu_times()
        extra = []
        for proc in self.procs:
            try:
                t = proc.cpu_times()
                extra.append(t.user + t.system)
            except psutil.NoSuchProcess:
                extra.append(0.0)
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return busy, me.user + me.system, extra, time.perf_counter()

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, Any]]:
        out: dict[str, Any] = {}
        b_busy, b_me, b_extra, b_at = self._now()
        yield out
        a_busy, a_me, a_extra, a_at = self._now()
        extra = [a - b for a, b in zip(a_extra, b_extra, strict=True)]
        ours = (a_me - b_me) + sum(extra)
        wall = a_at - b_at
        out["extra_cpu_s"] = extra
        out["other_load"] = max(0.0, (a_busy - b_busy) - ours) / (wall * (os.cpu_count() or 1))


def summarise(
    name: str, latencies_s: list[float], wall_s: float, errors: int, **extra: Any
) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies_s]
    return {
        "name": name,
        "n": len(ms),
        "per_s": len(ms) / wall_s if wall_s else float("nan"),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
        "errors": errors,
        "wall_s": wall_s,
        **extra,
    }


# -- set-up ---------------------------------------------------------------------------------------


def bench_settings(redis_url: str, endpoint: Endpoint) -> Settings:
    return dataclasses.replace(
        Settings.from_env({}),
        broker_url=redis_url,
        broker_is_external=True,
        namespace=NAMESPACE,
        aws_endpoint_url=endpoint.url,
        api_rate_limit=RateLimit(limit=1_000_000, period_s=1.0, burst=1_000_000),
    )


def prepare(settings: Settings, client: redis.Redis) -> str:
    """Site secret in Secrets Manager, the site registered, the payload bucket; returns the secret."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    sm = aws_client("secretsmanager", settings)
    name = settings.webhook_site_secret_pattern.format(site=SITE)
    try:
        sm.create_secret(Name=name, SecretString=secret)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=name, SecretString=secret)
    s3 = aws_client("s3", settings)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=settings.payload_bucket)
    SiteRegistry(client, settings.namespace).register(Site(site=SITE, tenant=TENANT))
    return secret


def signed_webhook(secret: str, i: int) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "type": "post.generate_requested",
            "data": {"title": f"Post {i}", "source": "One. Two. Three.", "post_id": i},
        }
    ).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    ts = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }
    return headers, body


def env_for_app(settings: Settings, endpoint: Endpoint) -> dict[str, str]:
    """What the app (chalice local, or functions.app in-process) reads at start-up."""
    return {
        "DRAMATIQ_BROKER_URL": settings.broker_url,
        "PRESSLINE_NAMESPACE": settings.namespace,
        "PRESSLINE_API_RATE_LIMIT": UNLIMITED,
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS[0],
        "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS[1],
        "AWS_DEFAULT_REGION": settings.aws_region,
        "PRESSLINE_LOG_LEVEL": "WARNING",
    }


# -- (a) the webhook handler in-process ---------------------------------------------------------


def run_inprocess(
    name: str,
    n: int,
    warmup: int,
    secret: str,
    call: Callable[[dict[str, str], bytes], int],
    cpu: CpuWatch,
) -> dict[str, Any]:
    for i in range(warmup):
        headers, body = signed_webhook(secret, -1 - i)
        call(headers, body)
    latencies: list[float] = []
    errors = 0
    wall = 0.0
    with cpu.measure() as usage:
        for i in range(n):
            headers, body = signed_webhook(secret, i)  # signing is the sender's cost: not timed
            t0 = time.perf_counter()
            status = call(headers, body)
            dt = time.perf_counter() - t0
            wall += dt
            latencies.append(dt)
            errors += status != 202
    return summarise(name, latencies, wall, errors, other_load=usage["other_load"])


def bench_webhooks(
    settings: Settings, endpoint: Endpoint, secret: str, n: int, warmup: int, cpu: CpuWatch
) -> list[dict[str, Any]]:
    rows = []
    services = Services.from_settings(settings)

    def service(headers: dict[str, str], body: bytes) -> int:
        return services.webhooks.receive(SITE, headers, body).status

    log(f"(a) service: {n} webhooks through Services.webhooks.receive")
    rows.append(run_inprocess("webhook: service call", n, warmup, secret, service, cpu))

    # The app builds its Services from os.environ on its first request: this is the bench's own process.
    os.environ.update(env_for_app(settings, endpoint))
    from chalice.test import Client

    from functions.app import app

    failures: list[str] = []
    with Client(app) as client:

        def through_app(headers: dict[str, str], body: bytes) -> int:
            response = client.http.post(f"/v1/webhooks/wordpress/{SITE}", headers=headers, body=body)
            if response.status_code != 202 and not failures:
                failures.append(f"{response.status_code} {response.body[:300]!r}")
            return response.status_code

        log(f"(a) chalice test client: {n} webhooks through functions.app")
        rows.append(run_inprocess("webhook: chalice test client", n, warmup, secret, through_app, cpu))
    if failures:
        log(f"chalice test client: first non-202 answer: {failures[0]}")

    secrets = (secret,)

    def verify_only(headers: dict[str, str], body: bytes) -> int:
        verify(secrets, headers, body, now=time.time(), tolerance_s=settings.webhook_tolerance_s)
        return 202

    rows.append(run_inprocess("webhook: verify only (HMAC)", n, warmup, secret, verify_only, cpu))
    return rows


# -- (b) HTTP through chalice local -------------------------------------------------------------


@contextlib.contextmanager
def chalice_local(settings: Settings, endpoint: Endpoint, log_path: Path) -> Iterator[tuple[str, int]]:
    env = {**os.environ, **env_for_app(settings, endpoint), "PYTHONPATH": str(ROOT)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # spans are made but not exported, as in part (a)
    with local_api(env, log_path, module=None) as api:
        yield api.url, api.process.pid


def load(
    url: str,
    clients: int,
    total: int,
    request: Callable[[httpx.Client, int], httpx.Response],
    expect: int,
    keep_alive: bool = True,
) -> tuple[list[float], float, int]:
    """``total`` requests split over ``clients`` threads, each with its own client (and, with
    ``keep_alive``, one persistent connection; otherwise a new TCP connection per request)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    limits = httpx.Limits() if keep_alive else httpx.Limits(max_keepalive_connections=0)

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30.0, limits=limits) as client:
            request(client, -1)  # open the connection outside the measured window
            start.wait()
            for i in range(k, total, clients):
                t0 = time.perf_counter()
                response = request(client, i)
                latencies[k].append(time.perf_counter() - t0)
                errors[k] += response.status_code != expect

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return [x for chunk in latencies for x in chunk], wall, sum(errors)


def bench_http(
    settings: Settings, endpoint: Endpoint, client: redis.Redis, args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    editor, _ = TokenStore(client, settings.namespace).mint(TENANT, "editor", name="api-bench")
    auth = {"Authorization": f"Bearer {editor}"}
    rows = []
    with chalice_local(settings, endpoint, tmp / "chalice-local.log") as (url, pid):
        first = httpx.post(f"{url}/v1/jobs", json=JOB, headers=auth, timeout=10)
        if first.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs answered {first.status_code}: {first.text}")
        job_id = first.json()["job_id"]
        cpu = CpuWatch([pid])

        def post(c: httpx.Client, i: int) -> httpx.Response:
            return c.post("/v1/jobs", json=JOB, headers=auth)

        def get(c: httpx.Client, i: int) -> httpx.Response:
            return c.get(f"/v1/jobs/{job_id}", headers=auth)

        scenarios = [
            (name, request, expect, clients, total, keep_alive)
            for keep_alive in (True, False)
            for clients, total in ((1, args.http_n), (args.clients, args.http_n * 2))
            for name, request, expect in (("POST /v1/jobs", post, 202), ("GET /v1/jobs/{id}", get, 200))
        ]
        for name, request, expect, clients, total, keep_alive in scenarios:
            connection = "keep-alive" if keep_alive else "new conn"
            label = f"http: {name}, {clients} client{'s' if clients > 1 else ''}, {connection}"
            log(f"(b) {label}: {total} requests")
            with cpu.measure() as usage:
                latencies, wall, errors = load(url, clients, total, request, expect, keep_alive)
            rows.append(
                summarise(
                    label,
                    latencies,
                    wall,
                    errors,
                    clients=clients,
                    keep_alive=keep_alive,
                    server_cpu_ms_per_req=usage["extra_cpu_s"][0] * 1000 / total,
                    other_load=usage["other_load"],
                )
            )
    return rows


# -- report -------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'measurement':<50} {'n':>6} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'errors':>6} {'srv CPU ms/req':>14} {'other load':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cpu = f"{r['server_cpu_ms_per_req']:.2f}" if "server_cpu_ms_per_req" in r else "-"
        lines.append(
            f"{r['name']:<50} {r['n']:>6} {r['per_s']:>9,.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['max_ms']:>8.2f} {r['errors']:>6} {cpu:>14} {r['other_load']:>9.0%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--webhooks", type=int, default=2_000, help="webhooks per in-process run")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls before each in-process run")
    parser.add_argument(
        "--http-n", type=int, default=500, help="requests per sequential HTTP run (x2 concurrent)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument(
        "--aws-port",
        type=int,
        default=0,
        help="use the emulator on this port (default: start a private moto)",
    )
    parser.add_argument("--skip-http", action="store_true", help="only the in-process part")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="api-bench-"))
    port = free_port()
    redis_proc = start_redis(port, tmp / "redis", durable=False)
    # A moto server of the bench's own by default: the one on 4566 may belong to a test session,
    # which stops (or resets) it whenever it finishes, halfway through a measurement.
    endpoint = ensure_endpoint(port=args.aws_port or free_port())
    started_here = ", started by the bench" if endpoint.process else ""
    log(f"redis on {port}, AWS endpoint {endpoint.url} ({endpoint.kind}{started_here})")
    try:
        settings = bench_settings(f"redis://127.0.0.1:{port}/0", endpoint)
        client = redis.Redis.from_url(settings.broker_url)
        secret = prepare(settings, client)
        cpu = CpuWatch([redis_proc.pid, *([endpoint.process.pid] if endpoint.process else [])])
        rows = bench_webhooks(settings, endpoint, secret, args.webhooks, args.warmup, cpu)
        if not args.skip_http:
            rows += bench_http(settings, endpoint, client, args, tmp)
    finally:
        stop_process(redis_proc)
        if endpoint.process is not None:
            stop_process(endpoint.process)

    elapsed = time.perf_counter() - started
    print(table(rows))
    print(f"\nbench took {elapsed:.0f}s; chalice local is a dev server (ThreadingHTTPServer), not Lambda")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"api-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "python": platform.python_version(),
        "chalice": chalice.__version__,
        "redis_py": redis.__version__,
        "cpus": os.cpu_count(),
        "endpoint": {"url": endpoint.url, "kind": endpoint.kind},
        "settings": vars(args),
        "elapsed_s": elapsed,
    }
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(f"JSON: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
