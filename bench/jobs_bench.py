"""What one Pressline job costs on the real stack: Redis commands, S3 requests, worker CPU, against
the baseline commit and a floor, in one run.

Run ``make bench-jobs`` (``ARGS="--jobs 300"`` for a quick one; ``--help`` for the knobs). For each
side, one after the other, never at once, the bench starts on free ports in a temporary dir: its
own ``redis-server`` (no persistence), moto's server behind a counting HTTP proxy (the workers'
``AWS_ENDPOINT_URL``), the fake LLM provider (``localstack/fake_provider.py``), the fake WordPress
(``localstack/fake_wordpress.py``, site ``bench-site`` of tenant ``bench``, its Application
Password in Secrets Manager), and one Dramatiq worker tree per stage queue with the concurrency
of ``PRESSLINE_QUEUE_CONCURRENCY`` (``infer`` under ``dramatiq-gevent``), as ``make run`` does.
The sides:

* current: this checkout;
* baseline: ``--baseline REF`` checked out with ``git worktree add --detach`` under
  ``.data/bench-baseline/<sha>`` (reused); its workers, the submitter and the setup run from there
  (cwd and ``PYTHONPATH``), with the same virtualenv and the same fakes;
* floor: the same four stages' work on Dramatiq's stock ``RedisBroker`` with Dramatiq's default
  middleware only, chained with ``dramatiq.pipeline`` (``bench/jobs_floor.py``).

What each number means:

* jobs/s: phase "max". A separate process (``bench/jobs_driver.py submit``, the tree's own
  ``shared.workflow.submit_workflow``, the API's producer broker) submits ``--jobs`` jobs from 4
  threads as fast as it can; jobs/s = N / (first submit -> the last job record's ``finished_at_ms``).
  For the floor, -> the moment no queue holds an un-acked message. Before it, ``--warmup-jobs``
  jobs run unmeasured, so every process has built its clients and connections.
* Redis cmds/job: ``INFO commandstats`` calls (commands run inside Lua scripts included, ``INFO``
  itself excluded) from just before the first submit to the moment every job was seen final,
  minus the submitter's polling commands (counted on its client), / N. The submission's own
  commands (the API's share) are in, and shown on their own line too.
* Redis CPU ms/job: ``INFO cpu`` used_cpu_user + used_cpu_sys over the same window, / N.
* S3 and Secrets Manager requests/job: counted by the proxy in front of moto, by service and
  method (S3) or operation (JSON APIs), / N.
* worker CPU ms/job: user + system CPU of every process of a queue's worker tree (Dramatiq's
  main, its worker processes, the metrics fork), from /proc through psutil, sampled every 0.25 s
  and at both ends of the window; the last value seen of each pid is kept, so a fork that exits
  counts up to its last sample.
* actors' own CPU ms/job: the calls each actor makes (``workers/actors.py``), made in one thread
  of a calibration process (``jobs_driver.py calibrate``) against the same stack for
  ``--calibration-docs`` documents, timed with ``time.thread_time()``; the current tree's numbers
  are used for every side (the stage code is the same). Runtime overhead = worker CPU - actors'
  own CPU: the broker, the middleware, Dramatiq and the process around the stage code.
* other processes' CPU ms/job: moto, the counting proxy, the fake LLM, the fake WordPress, the
  submitter (which makes the API's calls). Not part of Pressline's bill, shown so nothing hides.
* latency p50/p95/p99: phase "latency", at half of the side's max jobs/s on a fixed schedule
  (open loop), ``--latency-jobs`` jobs or ``--latency-seconds`` worth, whichever is fewer: the job
  record's ``created_at_ms`` (at submission) -> ``finished_at_ms``. The JSON also has scheduled
  time -> finish, which counts a late submission against the stack.
* $/million jobs: at the list prices in ``PRICES`` (printed with the table): S3 requests,
  Secrets Manager calls, worker CPU as the per-vCPU share of an on-demand instance's hourly
  price at 100% utilisation (no headroom), Redis CPU as a whole cache node's hourly price per
  core-hour (Redis runs commands on one core; one primary, no replica).
* cores for 1,000 jobs/s: CPU s/job x 1000, for the workers and for Redis (the S3 endpoint is
  AWS's and not counted).
* other load: CPU the machine spent outside every process the bench tracks, as a share of all
  CPUs; the numbers are only trustworthy when it is near 0%.

The table goes to stdout, progress to stderr, everything to ``bench/results/jobs-<ts>.json``.
Every process the bench starts is stopped at the end, on Ctrl-C and on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
DRIVER = ROOT / "bench" / "jobs_driver.py"
DEFAULT_BASELINE = "b85bc10f1f2f2610a9c3d0a99e0afb2855d82dcd"
SITE = "bench-site"
TENANT = "bench"
WP_LOGIN = "pressline-bench"
WP_PASSWORD = "benc h000 fake pass word 0000"
QUEUES = ("ingest", "infer", "post-process", "publish")
STAGE_OF = {"ingest": "ingest", "infer": "infer", "post-process": "post_process", "publish": "publish"}
OTHERS = ("moto", "s3-proxy", "fake-llm", "fake-wordpress", "submitter")
PROXY_STATS_PATH = "/__jobs_bench__/counts"
MARK = "@@ "
SAMPLE_S = 0.25

#: AWS list prices, us-east-1, on-demand (what the $ rows use; stated in the output and the JSON).
PRICES: dict[str, Any] = {
    "s3_put_class_usd_per_1000": 0.005,  # S3 Standard PUT, COPY, POST, LIST
    "s3_get_class_usd_per_1000": 0.0004,  # S3 Standard GET, SELECT and all other requests (HEAD)
    "secretsmanager_usd_per_10000_calls": 0.05,
    "worker_instance": "m7g.large (2 vCPU, Graviton3), EC2 Linux on-demand",
    "worker_instance_usd_per_hour": 0.0816,
    "worker_instance_vcpus": 2,
    "redis_node": "cache.m7g.large, ElastiCache on-demand (one primary)",
    "redis_node_usd_per_hour": 0.158,
    "conversion": (
        "worker $ = worker CPU-s / 3600 x (instance $/h / vCPUs), at 100% utilisation; "
        "Redis $ = Redis CPU-s / 3600 x node $/h (Redis runs commands on one core)"
    ),
}


def log(text: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(text, file=sys.stderr, flush=True)


# -- the counting proxy in front of moto -----------------------------------------------------------

_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
_CREDENTIAL = re.compile(r"Credential=[^/,]+/\d+/[^/,]+/([^/,]+)/aws4_request")


def request_kind(method: str, headers: Any) -> str:
    """``s3 PUT``, ``secretsmanager GetSecretValue``: the service from the SigV4 credential scope,
    then the JSON API's operation (``X-Amz-Target``) or the HTTP method."""
    found = _CREDENTIAL.search(headers.get("Authorization", ""))
    service = found.group(1) if found else "unsigned"
    target = headers.get("X-Amz-Target")
    return f"{service} {target.rsplit('.', 1)[-1]}" if target else f"{service} {method}"


class CountingProxy(ThreadingHTTPServer):
    """Forwards every request to ``upstream`` over keep-alive connections and counts it by kind."""

    daemon_threads = True
    request_queue_size = 256  # every worker thread may connect at once

    def __init__(self, address: tuple[str, int], upstream: str) -> None:
        super().__init__(address, _ProxyHandler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: CountingProxy
    _conn: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def finish(self) -> None:
        if self._conn is not None:
            self._conn.close()
        super().finish()

    def do_GET(self) -> None:
        if self.path == PROXY_STATS_PATH:
            with self.server.lock:
                data = json.dumps(dict(self.server.counts)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length else None

    def _relay(
        self, method: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):
            conn = self._conn or http.client.HTTPConnection(*self.server.upstream, timeout=60)
            self._conn = conn
            try:
                conn.request(method, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    conn.close()
                    self._conn = None
                return response.status, response.reason, response.getheaders(), data
            except (http.client.HTTPException, OSError):
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _forward(self) -> None:
        method = self.command
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        with self.server.lock:
            self.server.counts[request_kind(method, self.headers)] += 1
        try:
            status, reason, answer_headers, data = self._relay(method, body, headers)
        except (http.client.HTTPException, OSError) as error:
            data = f"upstream failed: {error}".encode()
            self.send_response(502)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response_only(status, reason)
        for name, value in answer_headers:
            if name.lower() not in _HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if method == "HEAD":
            length = next((v for k, v in answer_headers if k.lower() == "content-length"), None)
            if length is not None:
                self.send_header("Content-Length", length)
        elif status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD" and data:
            self.wfile.write(data)


def serve_proxy(port: int, upstream: str) -> None:
    """The proxy's process: ``python -m bench.jobs_bench --serve-s3-proxy PORT UPSTREAM``."""
    server = CountingProxy(("127.0.0.1", port), upstream)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"s3 proxy listening on http://127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _get_json(url: str) -> Any:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# -- CPU of process trees --------------------------------------------------------------------------


class CpuSampler:
    """User + system CPU seconds per group of process trees, read from /proc (psutil) every
    ``SAMPLE_S`` in a thread and on demand; each pid's last value is kept after it exits."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.roots: dict[str, list[int]] = {}
        self.last: dict[str, dict[int, float]] = {}
        self._procs: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def add(self, group: str, pid: int) -> None:
        with self._lock:
            self.roots.setdefault(group, []).append(pid)
            self.last.setdefault(group, {})

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def _process(self, pid: int) -> Any:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = self._psutil.Process(pid)
        return proc

    def sample(self) -> dict[str, float]:
        """Read every tracked process now; CPU seconds per group (dead pids at their last value)."""
        psutil = self._psutil
        with self._lock:
            for group, roots in self.roots.items():
                for root in roots:
                    try:
                        main = self._process(root)
                        tree = [main, *main.children(recursive=True)]
                    except psutil.Error:
                        continue
                    for proc in tree:
                        try:
                            times = self._process(proc.pid).cpu_times()
                        except psutil.Error:
                            continue
                        self.last[group][proc.pid] = times.user + times.system
            return {group: sum(values.values()) for group, values in self.last.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def machine_busy_s() -> float:
    import psutil

    times = psutil.cpu_times()  # idle, waiting for I/O, or taken by the hypervisor: not busy here
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "steal", 0.0))


def self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


# -- one side's stack ------------------------------------------------------------------------------


@dataclass
class Side:
    name: str  # floor | baseline | current
    tree: Path
    ref: str

    @property
    def floor(self) -> bool:
        return self.name == "floor"


@dataclass
class Snapshot:
    calls: dict[str, int]
    redis_cpu_s: float
    groups: dict[str, float]
    aws: dict[str, int]
    wordpress: dict[str, Any]
    machine_busy_s: float
    bench_cpu_s: float
    at: float


@dataclass
class Stack:
    side: Side
    scratch: Path
    redis_url: str
    redis: Any
    env: dict[str, str]
    proxy_url: str
    wordpress_url: str
    sampler: CpuSampler
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        stats = self.redis.info("commandstats")
        cpu = self.redis.info("cpu")
        return Snapshot(
            calls={name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()},
            redis_cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            groups=self.sampler.sample(),
            aws=dict(_get_json(self.proxy_url + PROXY_STATS_PATH)),
            wordpress=dict(_get_json(self.wordpress_url + "/_fake/stats")),
            machine_busy_s=machine_busy_s(),
            bench_cpu_s=self_cpu_s(),
            at=time.monotonic(),
        )

    def check_workers(self) -> None:
        for queue_name, proc in self.workers.items():
            if proc.poll() is not None:
                tail = self.logs[queue_name].read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{self.side.name}: {queue_name} workers exited {proc.returncode}:\n{tail}"
                )


def _start_proxy(port: int, upstream: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.jobs_bench", "--serve-s3-proxy", str(port), upstream],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"the S3 counting proxy did not start: {line!r}")
    return proc


def _fake_provider_pid(port: int) -> int | None:
    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            if "localstack.fake_provider" in command and f"--port {port}" in command:
                return int(child.pid)
    return None


def _tree_env(side: Side, env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": str(side.tree), "PYTHONUNBUFFERED": "1"}


def _driver_command(side: Side, *args: str) -> list[str]:
    if side.floor and args[0] == "submit":
        return [sys.executable, "-m", "bench.jobs_floor", *args]
    return [sys.executable, "-P", str(DRIVER), *args]


def run_driver(side: Side, env: dict[str, str], *args: str, timeout_s: float = 600) -> dict[str, Any]:
    """One short driver role (setup, calibrate) in the side's tree; its last protocol line."""
    tree = ROOT if side.floor else side.tree
    done = subprocess.run(
        _driver_command(side, *args), cwd=tree, env=_tree_env(replace(side, tree=tree), env),
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    lines = [line[len(MARK) :] for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"driver {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "shared" in result and not Path(result["shared"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"driver {args[0]} imported {result['shared']}, not the tree's {tree}")
    return result


@contextlib.contextmanager
def start_stack(side: Side, scratch: Path) -> Iterator[Stack]:
    """Everything one side needs, on free ports; stopped in reverse order when the block ends."""
    import redis

    from infra.devstack import worker_command, worker_env
    from infra.pipeline_stack import _stop_tree, _wait_ready
    from infra.redis_server import free_port, start_redis, stop_process
    from localstack.endpoint import Endpoint, ensure_endpoint
    from localstack.fake_provider import ROUTING_POLICY, provider_env, running_fake_provider
    from localstack.fake_wordpress import start_fake_wordpress
    from shared.config import Settings
    from shared.egress import AllowRule, parse_allow_list

    scratch.mkdir(parents=True, exist_ok=True)
    sampler = CpuSampler()
    with contextlib.ExitStack() as stack:
        stack.callback(sampler.close)
        redis_port = free_port()
        redis_proc = start_redis(redis_port, scratch / "redis", durable=False)
        stack.callback(stop_process, redis_proc)
        sampler.add("redis", redis_proc.pid)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        endpoint = ensure_endpoint(port=free_port())
        if endpoint.process is not None:
            stack.callback(stop_process, endpoint.process)
            sampler.add("moto", endpoint.process.pid)
        proxy_port = free_port()
        proxy = _start_proxy(proxy_port, endpoint.url)
        stack.callback(stop_process, proxy)
        sampler.add("s3-proxy", proxy.pid)
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        fake_llm = stack.enter_context(running_fake_provider())
        llm_pid = _fake_provider_pid(int(urlsplit(fake_llm).port or 0))
        if llm_pid is not None:
            sampler.add("fake-llm", llm_pid)
        wp_port = free_port()
        wordpress = start_fake_wordpress(wp_port, f"{WP_LOGIN}:{WP_PASSWORD}:author")
        stack.callback(stop_process, wordpress)
        sampler.add("fake-wordpress", wordpress.pid)
        wordpress_url = f"http://127.0.0.1:{wp_port}"

        base = Settings.from_env()
        egress = (
            *parse_allow_list(os.environ.get("PRESSLINE_EGRESS_ALLOW")),
            AllowRule.parse(f"127.0.0.1:{wp_port}"),
        )
        settings = replace(base, broker_url=redis_url, aws_endpoint_url=proxy_url, egress_allow=egress)
        policy = scratch / "routing.json"
        policy.write_text(json.dumps(ROUTING_POLICY))
        env = worker_env(settings, Endpoint(proxy_url, "moto", None), 0, scratch / "prom")
        env.update(
            provider_env(fake_llm),
            PRESSLINE_ROUTING_POLICY=str(policy),
            PRESSLINE_API_RATE_LIMIT="100000/s:100000",
            PRESSLINE_WORDPRESS_RATE_PER_S="0",  # the site's rate limit off: the path's own cost
            BENCH_REDIS_URL=redis_url,
        )
        setup = run_driver(
            side, env, "setup", "--site", SITE, "--tenant", TENANT, "--base-url", wordpress_url,
            "--login", WP_LOGIN, "--password", WP_PASSWORD, timeout_s=120,
        )  # fmt: skip
        log(f"  {side.name}: redis {redis_url}, moto {endpoint.url} behind {proxy_url}, fake LLM {fake_llm}, "
            f"fake WordPress {wordpress_url} (secret {setup['secret']})")  # fmt: skip
        client = redis.Redis.from_url(redis_url)
        client.ping()
        result = Stack(side, scratch, redis_url, client, env, proxy_url, wordpress_url, sampler)
        tree = ROOT if side.floor else side.tree
        for queue_name in QUEUES:
            shape = settings.concurrency[queue_name]
            if side.floor:
                binary = BIN / ("dramatiq-gevent" if shape.gevent else "dramatiq")
                command = [str(binary), "bench.jobs_floor", "-Q", queue_name,
                           "-p", str(shape.processes), "-t", str(shape.threads)]  # fmt: skip
            else:
                command = worker_command(queue_name, shape, settings)
            prom_db = scratch / f"prom-{queue_name}"
            prom_db.mkdir(exist_ok=True)
            tree_env = {
                **_tree_env(replace(side, tree=tree), env),
                "dramatiq_prom_port": str(free_port()),
                "dramatiq_prom_db": str(prom_db),
            }
            path = scratch / f"workers-{queue_name}.log"
            with path.open("ab") as out:
                proc = subprocess.Popen(
                    command, cwd=tree, env=tree_env, stdout=out, stderr=out, start_new_session=True
                )
            stack.callback(_stop_tree, proc)
            result.workers[queue_name] = proc
            result.logs[queue_name] = path
            sampler.add(f"workers:{queue_name}", proc.pid)
        for queue_name, proc in result.workers.items():
            _wait_ready(result.logs[queue_name], settings.concurrency[queue_name].processes, proc, 120.0)
        shapes = ", ".join(
            f"{q} {settings.concurrency[q].processes}x{settings.concurrency[q].threads}"
            + (" gevent" if settings.concurrency[q].gevent else "")
            for q in QUEUES
        )
        log(f"  {side.name}: workers ready from {tree} ({shapes})")
        yield result


# -- phases ----------------------------------------------------------------------------------------


class Driver:
    """A running submitter, spoken to one JSON line at a time."""

    def __init__(self, stack: Stack, args: list[str]) -> None:
        side = stack.side
        tree = ROOT if side.floor else side.tree
        self.proc = subprocess.Popen(
            _driver_command(side, *args), cwd=tree, env=_tree_env(replace(side, tree=tree), stack.env),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.stack = stack
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(line[len(MARK) :])
        self.lines.put(None)

    def expect(self, event: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.stack.check_workers()
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"the submitter exited ({self.proc.wait()}) before '{event}'")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == event:
                return message
        raise TimeoutError(f"no '{event}' from the submitter within {timeout_s:.0f}s")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Wait for its exit (it ends after ``records``); kill it when it is stuck or not done."""
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def delta_of(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_phase(
    stack: Stack, *, jobs: int, rate: float, prefix: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Submit ``jobs`` jobs (as fast as possible, or at ``rate``/s), wait until all are final, and
    account for everything that happened in between."""
    command = ["submit", "--jobs", str(jobs), "--prefix", prefix, "--site", SITE, "--tenant", TENANT,
               "--threads", str(args.threads), "--timeout", str(args.timeout)]  # fmt: skip
    if rate > 0:
        command += ["--rate", f"{rate:.3f}"]
    driver = Driver(stack, command)
    try:
        driver.expect("ready", 120)
        stack.sampler.add("submitter", driver.proc.pid)
        before = stack.snapshot()
        driver.send("go")
        done = driver.expect("done", args.timeout + 120)
        after = stack.snapshot()
        driver.send("records")
        records: dict[str, Any] = driver.expect("records", 300)["records"]
    finally:
        driver.close()
    if done["timed_out"]:
        log(f"    WARNING: not every job was final within {args.timeout:.0f}s")
    poll = Counter(done["poll_commands"])
    calls = Counter(delta_of(before.calls, after.calls))
    calls.pop("info", None)
    calls.subtract(poll)
    calls = Counter({k: v for k, v in calls.items() if v})
    finished = [r["finished_at_ms"] for r in records.values() if r.get("finished_at_ms")]
    states = Counter(str(r["state"]) for r in records.values())
    if stack.side.floor:
        end_ms = done["final_seen_ms"]
    else:
        end_ms = max(finished) if len(finished) == len(records) and finished else done["final_seen_ms"]
    elapsed_s = (end_ms - done["began_ms"]) / 1000
    groups = delta_of(before.groups, after.groups)
    window_s = after.at - before.at
    ours = sum(groups.values()) + after.bench_cpu_s - before.bench_cpu_s  # Redis is the group "redis"
    foreign = max(0.0, after.machine_busy_s - before.machine_busy_s - ours)
    wordpress = delta_of(before.wordpress.get("requests", {}), after.wordpress.get("requests", {}))
    errors = Counter(str(r.get("last_error")) for r in records.values() if r.get("state") == "failed")
    return {
        "jobs": jobs,
        "rate": rate,
        "submitted": done["submitted"],
        "submit_errors": done["submit_errors"],
        "timed_out": done["timed_out"],
        "states": dict(states),
        "failed_errors": dict(errors.most_common(5)),
        "posts_created": after.wordpress["posts"] - before.wordpress["posts"],
        "elapsed_s": elapsed_s,
        "submit_s": (done["submitted_ms"] - done["began_ms"]) / 1000,
        "jobs_per_s": jobs / elapsed_s if elapsed_s > 0 else float("nan"),
        "redis_calls": dict(calls.most_common()),
        "redis_calls_total": sum(calls.values()),
        "poll_commands": dict(poll),
        "submit_commands": done["submit_commands"],
        "redis_cpu_s": after.redis_cpu_s - before.redis_cpu_s,
        "cpu_s": groups,
        "aws_requests": delta_of(before.aws, after.aws),
        "wordpress_requests": wordpress,
        "window_s": window_s,
        "other_load": foreign / (window_s * (os.cpu_count() or 1)) if window_s > 0 else 0.0,
        "records": records,
    }


def latency_summary(phase: dict[str, Any]) -> dict[str, Any]:
    records = [
        r for r in phase["records"].values() if r.get("finished_at_ms") and r.get("state") == "succeeded"
    ]
    e2e = [r["finished_at_ms"] - r["created_at_ms"] for r in records]
    sched = [r["finished_at_ms"] - r["scheduled_ms"] for r in records if r.get("scheduled_ms")]
    return {
        "rate": phase["rate"],
        "jobs": phase["jobs"],
        "succeeded": len(records),
        "p50_ms": pct(e2e, 0.50),
        "p95_ms": pct(e2e, 0.95),
        "p99_ms": pct(e2e, 0.99),
        "max_ms": max(e2e) if e2e else float("nan"),
        "from_schedule_p50_ms": pct(sched, 0.50),
        "from_schedule_p95_ms": pct(sched, 0.95),
        "from_schedule_p99_ms": pct(sched, 0.99),
    }


def run_side(side: Side, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    log(f"== {side.name} ({side.ref}, {side.tree})")
    began = time.monotonic()
    result: dict[str, Any] = {"side": side.name, "ref": side.ref, "tree": str(side.tree)}
    with start_stack(side, scratch / side.name) as stack:
        if args.warmup_jobs:  # every process builds its clients on its first messages: not measured
            log(f"  {side.name}: warm-up, {args.warmup_jobs} jobs")
            warm = run_phase(stack, jobs=args.warmup_jobs, rate=0.0, prefix=f"{side.name}-warm", args=args)
            result["warmup"] = {k: warm[k] for k in ("jobs", "states", "posts_created", "elapsed_s")}
        log(f"  {side.name}: phase max, {args.jobs} jobs")
        phase = run_phase(stack, jobs=args.jobs, rate=0.0, prefix=f"{side.name}-max", args=args)
        log(f"  {side.name}: {phase['jobs_per_s']:.1f} jobs/s, states {phase['states'] or 'n/a'}, "
            f"{phase['posts_created']} posts, {phase['redis_calls_total'] / args.jobs:.1f} Redis cmds/job, "
            f"other load {phase['other_load']:.0%}")  # fmt: skip
        if not side.floor:
            phase_records = phase.pop("records")
            result["max_records_sample"] = dict(list(phase_records.items())[:5])
        else:
            phase.pop("records")
        result["max"] = phase
        if not side.floor and not args.skip_latency and phase["jobs_per_s"] > 0:
            rate = phase["jobs_per_s"] / 2
            count = max(20, min(args.latency_jobs, math.ceil(rate * args.latency_seconds)))
            log(f"  {side.name}: phase latency, {count} jobs at {rate:.1f}/s (open loop)")
            lat = run_phase(stack, jobs=count, rate=rate, prefix=f"{side.name}-lat", args=args)
            summary = latency_summary(lat)
            lat.pop("records")
            result["latency"] = {**summary, "phase": lat}
            log(f"  {side.name}: p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, "
                f"p99 {summary['p99_ms']:.0f} ms")  # fmt: skip
        if not side.floor:
            log(f"  {side.name}: calibration, {args.calibration_docs} documents")
            try:
                result["calibration"] = run_driver(
                    side, stack.env, "calibrate", "--docs", str(args.calibration_docs),
                    "--site", SITE, "--tenant", TENANT,
                )  # fmt: skip
            except Exception as error:  # reported; another side's calibration may stand in
                log(f"  {side.name}: calibration failed: {error}")
                result["calibration_error"] = str(error)[-2000:]
        result["worker_log_errors"] = {
            q: sum(
                1
                for line in p.read_text(errors="replace").splitlines()
                if "Traceback" in line or "ERROR" in line
            )
            for q, p in stack.logs.items()
        }
    result["elapsed_s"] = time.monotonic() - began
    return result


# -- derived numbers, table ------------------------------------------------------------------------


def derive(result: dict[str, Any], calibration: dict[str, Any] | None, jobs: int) -> dict[str, Any]:
    """Per-job figures of one side."""
    phase = result["max"]
    n = jobs
    cpu = phase["cpu_s"]
    workers = {q: cpu.get(f"workers:{q}", 0.0) * 1000 / n for q in QUEUES}
    worker_total = sum(workers.values())
    actors = {q: calibration["cpu_ms"][STAGE_OF[q]] for q in QUEUES} if calibration else None
    actor_total = sum(actors.values()) if actors else None
    aws = phase["aws_requests"]
    s3_put = sum(v for k, v in aws.items() if k in ("s3 PUT", "s3 POST")) / n
    s3_get = sum(v for k, v in aws.items() if k in ("s3 GET", "s3 HEAD")) / n
    s3_other = sum(v for k, v in aws.items() if k.startswith("s3 ")) / n - s3_put - s3_get
    secrets = sum(v for k, v in aws.items() if k.startswith("secretsmanager ")) / n
    redis_cpu_ms = phase["redis_cpu_s"] * 1000 / n
    usd_vcpu_h = PRICES["worker_instance_usd_per_hour"] / PRICES["worker_instance_vcpus"]
    dollars = {
        "s3": (s3_put * PRICES["s3_put_class_usd_per_1000"] + s3_get * PRICES["s3_get_class_usd_per_1000"])
        * 1000,
        "secretsmanager": secrets * PRICES["secretsmanager_usd_per_10000_calls"] * 100,
        "workers": worker_total / 1000 * 1e6 / 3600 * usd_vcpu_h,
        "redis": redis_cpu_ms / 1000 * 1e6 / 3600 * PRICES["redis_node_usd_per_hour"],
    }
    dollars["total"] = sum(dollars.values())
    submit_cmds = sum(phase["submit_commands"].values()) / n
    latency = result.get("latency") or {}
    return {
        "jobs_per_s": phase["jobs_per_s"],
        "succeeded": phase["posts_created"]
        if result["side"] == "floor"
        else phase["states"].get("succeeded", 0),
        "posts_created": phase["posts_created"],
        "redis_cmds": phase["redis_calls_total"] / n,
        "redis_cmds_submit": submit_cmds,
        "redis_cmds_actors": calibration.get("redis_calls_per_doc") if calibration else None,
        "redis_cpu_ms": redis_cpu_ms,
        "s3_put": s3_put,
        "s3_get": s3_get,
        "s3_other": s3_other,
        "secretsmanager": secrets,
        "wordpress_requests": sum(phase["wordpress_requests"].values()) / n,
        "worker_cpu_ms": workers,
        "worker_cpu_ms_total": worker_total,
        "actor_cpu_ms": actors,
        "actor_cpu_ms_total": actor_total,
        "overhead_ms": {q: workers[q] - actors[q] for q in QUEUES} if actors else None,
        "overhead_ms_total": worker_total - actor_total if actor_total is not None else None,
        "other_cpu_ms": {g: cpu.get(g, 0.0) * 1000 / n for g in OTHERS},
        "other_cpu_ms_total": sum(cpu.get(g, 0.0) for g in OTHERS) * 1000 / n,
        "latency_ms": {k: latency.get(f"{k}_ms") for k in ("p50", "p95", "p99")},
        "usd_per_million_jobs": dollars,
        "worker_cores_at_1000": worker_total / 1000 * 1000,
        "redis_cores_at_1000": redis_cpu_ms / 1000 * 1000,
        "other_load": phase["other_load"],
        "other_load_latency": latency["phase"]["other_load"] * 100 if latency else None,
        "top_redis_commands": {k: v / n for k, v in list(phase["redis_calls"].items())[:10]},
    }


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def table(derived: dict[str, dict[str, Any]], jobs: int) -> str:
    sides = [s for s in ("floor", "baseline", "current") if s in derived]
    rows: list[tuple[str, Any, int]] = [
        ("jobs/s (max)", lambda d: d["jobs_per_s"], 1),
        ("jobs succeeded (of N)", lambda d: d["succeeded"], 0),
        ("WordPress posts created", lambda d: d["posts_created"], 0),
        ("Redis cmds/job", lambda d: d["redis_cmds"], 1),
        ("  actors' own (calibration)", lambda d: d["redis_cmds_actors"], 1),
        ("  submission's, sent (API)", lambda d: d["redis_cmds_submit"], 1),
        ("Redis CPU ms/job", lambda d: d["redis_cpu_ms"], 3),
        ("S3 PUT/job", lambda d: d["s3_put"], 2),
        ("S3 GET+HEAD/job", lambda d: d["s3_get"], 2),
        ("Secrets Manager calls/job", lambda d: d["secretsmanager"], 3),
        ("WordPress requests/job", lambda d: d["wordpress_requests"], 2),
        *[(f"worker CPU ms/job {q}", (lambda d, q=q: d["worker_cpu_ms"][q]), 2) for q in QUEUES],
        ("worker CPU ms/job total", lambda d: d["worker_cpu_ms_total"], 2),
        ("actors' own CPU ms/job", lambda d: d["actor_cpu_ms_total"], 2),
        *[(f"  overhead ms/job {q}", (lambda d, q=q: (d["overhead_ms"] or {}).get(q)), 2) for q in QUEUES],
        ("runtime overhead ms/job", lambda d: d["overhead_ms_total"], 2),
        *[(f"  {g} CPU ms/job", (lambda d, g=g: d["other_cpu_ms"][g]), 2) for g in OTHERS],
        ("other processes CPU ms/job", lambda d: d["other_cpu_ms_total"], 2),
        ("latency p50 ms (half load)", lambda d: d["latency_ms"]["p50"], 0),
        ("latency p95 ms (half load)", lambda d: d["latency_ms"]["p95"], 0),
        ("latency p99 ms (half load)", lambda d: d["latency_ms"]["p99"], 0),
        ("$/M jobs S3", lambda d: d["usd_per_million_jobs"]["s3"], 2),
        ("$/M jobs Secrets Manager", lambda d: d["usd_per_million_jobs"]["secretsmanager"], 2),
        ("$/M jobs worker CPU", lambda d: d["usd_per_million_jobs"]["workers"], 2),
        ("$/M jobs Redis CPU", lambda d: d["usd_per_million_jobs"]["redis"], 2),
        ("$/M jobs total", lambda d: d["usd_per_million_jobs"]["total"], 2),
        ("worker cores @1000 jobs/s", lambda d: d["worker_cores_at_1000"], 1),
        ("Redis cores @1000 jobs/s", lambda d: d["redis_cores_at_1000"], 2),
        ("other load on the machine, max", lambda d: d["other_load"] * 100, 0),
        ("other load on the machine, latency", lambda d: d["other_load_latency"], 0),
    ]
    header = ["metric (per job unless said)", *sides]
    if "baseline" in derived and "current" in derived:
        header.append("current/baseline")
    lines: list[list[str]] = []
    for label, get, digits in rows:
        values = [get(derived[s]) for s in sides]
        cells = [_fmt(v, digits) for v in values]
        if len(header) > len(sides) + 1:
            b, c = get(derived["baseline"]), get(derived["current"])
            cells.append(
                f"{c / b:.2f}" if isinstance(b, int | float) and isinstance(c, int | float) and b else ""
            )
        lines.append([label + (" %" if label.startswith("other load") else ""), *cells])
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = [f"Per-job cost of the job path, N = {jobs} jobs per side"]
    for row in [header, *lines]:
        out.append(
            "  ".join(
                cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
            )
        )
    return "\n".join(out)


def top_commands(derived: dict[str, dict[str, Any]]) -> str:
    out = []
    for side in ("floor", "baseline", "current"):
        if side not in derived:
            continue
        out.append(f"\nTop 10 Redis commands per job, {side}:")
        for name, value in derived[side]["top_redis_commands"].items():
            out.append(f"  {name:24} {value:7.2f}")
    return "\n".join(out)


def prices_text() -> str:
    p = PRICES
    return (
        "\nPrices (AWS list, us-east-1, on-demand): S3 PUT/COPY/POST/LIST "
        f"${p['s3_put_class_usd_per_1000']}/1000, GET/HEAD ${p['s3_get_class_usd_per_1000']}/1000; Secrets "
        f"Manager ${p['secretsmanager_usd_per_10000_calls']}/10,000 calls; workers {p['worker_instance']} "
        f"${p['worker_instance_usd_per_hour']}/h for {p['worker_instance_vcpus']} vCPU; "
        f"Redis {p['redis_node']} ${p['redis_node_usd_per_hour']}/h.\n  {p['conversion']}."
    )


# -- the baseline's worktree -----------------------------------------------------------------------


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def baseline_tree(ref: str) -> tuple[Path, str]:
    """``ref`` checked out (detached) in ``.data/bench-baseline/<sha>``, made once and reused."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = ROOT / ".data" / "bench-baseline" / sha
    if path.exists():
        if (path / ".git").exists() and _git("rev-parse", "HEAD", cwd=path) == sha:
            return path, sha
        raise RuntimeError(
            f"{path} exists but is not a worktree at {sha}; remove it (and `git worktree prune`)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _git("worktree", "prune")
    _git("worktree", "add", "--detach", str(path), sha)
    return path, sha


# -- main ------------------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> dict[str, Any]:
    sides: list[Side] = []
    if not args.no_floor:
        sides.append(Side("floor", ROOT, "stock RedisBroker"))
    results: dict[str, Any] = {}
    if not args.no_baseline:
        try:
            path, sha = baseline_tree(args.baseline)
            sides.append(Side("baseline", path, sha))
        except RuntimeError as error:
            log(f"== baseline: no worktree for {args.baseline!r}: {error}")
            results["baseline"] = {"side": "baseline", "ref": args.baseline, "error": str(error)}
    head = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    sides.append(Side("current", ROOT, head + (" + uncommitted changes" if dirty else "")))
    scratch = Path(tempfile.mkdtemp(prefix="pressline-jobs-bench-"))
    failed = False
    try:
        for side in sides:
            try:
                results[side.name] = run_side(side, args, scratch)
            except Exception as error:
                failed = True
                log(f"== {side.name} FAILED: {type(error).__name__}: {error}")
                log(f"   its logs are kept in {scratch / side.name}")
                results[side.name] = {
                    "side": side.name,
                    "ref": side.ref,
                    "error": f"{type(error).__name__}: {error}",
                }
    finally:
        if not failed and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-s3-proxy"]:
        serve_proxy(int(argv[1]), argv[2])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.jobs_bench",
        description="The job path's cost per job (Redis commands, S3 requests, CPU) on the real stack: "
        "floor (stock RedisBroker), baseline and current, one after the other.",
        epilog="The module docstring says what each number means.",
    )
    parser.add_argument(
        "--jobs", type=int, default=2000, help="jobs per side in the max phase (default 2000)"
    )
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help=f"the baseline's git ref (default {DEFAULT_BASELINE[:12]})",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline side")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor side (stock RedisBroker)")
    parser.add_argument("--skip-latency", action="store_true", help="skip the latency phase at half load")
    parser.add_argument(
        "--latency-jobs", type=int, default=1000, help="at most this many jobs in the latency phase"
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=30.0, help="at most this long a latency phase (default 30)"
    )
    parser.add_argument(
        "--calibration-docs",
        type=int,
        default=200,
        help="documents of the actors' CPU calibration (default 200)",
    )
    parser.add_argument(
        "--warmup-jobs", type=int, default=20, help="unmeasured jobs before the max phase (default 20)"
    )
    parser.add_argument("--threads", type=int, default=4, help="submitter threads (default 4)")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for a phase's jobs, s")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir (logs) even on success")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    began = time.monotonic()
    try:
        results = run(args)
    except KeyboardInterrupt:
        log("interrupted; every process the bench started has been stopped")
        return 130
    calibration = (results.get("current") or {}).get("calibration") or (results.get("baseline") or {}).get(
        "calibration"
    )
    if calibration is None:
        log("no calibration succeeded: actors' own CPU and runtime overhead are n/a")
    # Each side's actors are measured in its own tree (they differ: the baseline's ingest PUTs the
    # input to S3 itself); the floor runs the current tree's stage code.
    derived = {
        name: derive(r, r.get("calibration") or calibration, args.jobs)
        for name, r in results.items()
        if "max" in r
    }
    if derived:
        print(table(derived, args.jobs))
        print(top_commands(derived))
        print(prices_text())
    for name, r in results.items():
        if "error" in r:
            print(f"\n{name} FAILED: {r['error']}")
    if calibration:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in calibration["cpu_ms"].items())
        print(
            f"\nactors' own CPU ms/job (calibration, {calibration['docs']} documents, thread CPU): {stages}"
        )
    print(f"\nbench took {time.monotonic() - began:.0f}s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"jobs-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "redis_server": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "settings": vars(args),
        "prices": PRICES,
        "calibration_used": calibration,
    }
    path.write_text(json.dumps({"meta": meta, "derived": derived, "sides": results}, indent=2, default=str))
    print(f"JSON: {path.relative_to(ROOT)}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
