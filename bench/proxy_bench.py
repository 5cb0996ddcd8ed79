"""The inference proxy's overhead: streams directly against the fake provider vs through the proxy.

Run ``make bench-proxy`` (or ``.venv/bin/python -m bench.proxy_bench --help``). The bench starts,
each on a free port and all stopped at the end: its own ``redis-server``, its own moto server
(provider keys in Secrets Manager), the fake provider (``localstack.fake_provider``, a subprocess) and
the proxy (``python -m functions.serve``: Chalice's local server with the streaming handler, a
subprocess, what ``make run`` serves).

Every stream is ``POST /v1/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``; the fake answers each with the role chunk at 100 ms, 50 content
chunks 10 ms apart, the finish chunk, a usage chunk and ``data: [DONE]`` (ideal total ~600 ms).

* Targets are interleaved so host noise hits both alike: sequential request *i* goes to direct and
  proxy in turn (the order alternates), and each concurrent batch of the one is followed by a batch
  of the other. Before measuring, each target gets a few untimed streams and one untimed
  50-wide batch that opens its connections; that batch is still reported ("cold").
* Client: one :class:`bench.lean_client.LeanClient` per target (asyncio streams, keep-alive
  connections kept open across phases; httpx's async client burnt more CPU than the proxy, on the
  cores the proxy shares with it), SSE parsed from the raw reads. TTFB = request start -> the
  first ``data:`` event with non-empty ``choices``; total = request start -> ``data: [DONE]``.
  The time of each read is the arrival time of the events in it; a content chunk "arrived
  separately" when it came more than 5 ms after the previous one. A buffering proxy gives ~1
  separate arrival per stream, not ~50.
* Proxy CPU: psutil (the server process and its children) around the proxy's own requests (each
  sequential request, each concurrent batch), divided by the streams. The fake's, Redis's and
  this process's CPU are measured the same way. RSS of the proxy (summed over its processes, an
  upper bound: they share pages): after start, after warm-up, the peak during its concurrent
  batches (sampled every 20 ms) and at the end.
* "other load": the share of the machine's CPU used by processes outside the bench during a
  phase. Near 0 % means the numbers are clean; all processes share the machine's cores.
* A short check with the official ``openai`` SDK (``AsyncOpenAI``) through the proxy and direct.
* Peers (``make bench-peers``): ``--litellm`` and ``--portkey`` add LiteLLM's proxy and Portkey's
  gateway as further targets, interleaved with the others against the same fake
  (``bench/peers.py``); their CPU, chunk separation and added TTFB are measured the same way.

The table goes to stdout, progress to stderr, every sample to ``bench/results/proxy-<ts>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import redis

from bench.lean_client import LeanClient, LeanResponse
from bench.peers import Peer, litellm_server, portkey_server
from infra.local_api import local_api
from infra.redis_server import free_port, start_redis, stop_process
from localstack.bootstrap import bootstrap
from localstack.endpoint import Endpoint, ensure_endpoint
from localstack.fake_provider import ROUTING_POLICY as POLICY
from localstack.fake_provider import provider_env, set_fake_state
from shared.auth import TokenStore
from shared.aws import LOCAL_CREDENTIALS
from shared.config import Settings
from shared.proxy.sse import SSEParser

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
NAMESPACE = "pressline"
TENANT = "bench"
MODEL = "gpt-4o-mini"
SCENARIO = "chunks=50;interval_ms=10;first_token_ms=100"
CHUNKS = 50  # content chunks per stream; --scenario changes it (its chunks=N)
SEPARATE_GAP_S = 0.005  # a content chunk more than 5 ms after the previous one came in its own read
RESERVED_PORTS = {4566, 6379, 6380}
PROMPT = "Write one line about Pressline please"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": PROMPT}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
#: The peer gateways a run can measure beside the proxy (``bench.peers``), in table order.
PEERS = ("litellm", "portkey")
#: Servers measured with their child processes (a pre-forked proxy, a peer's workers).
SERVERS = ("proxy", *PEERS)
#: Targets on this machine, from the issue ("Done when").
TARGET_SEQ_TTFB_MS = 10.0
TARGET_CONC_TTFB_MS = 30.0
TARGET_CPU_MS = 20.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def port() -> int:
    while True:
        p = free_port()
        if p not in RESERVED_PORTS:
            return p


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for an empty list."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- processes ------------------------------------------------------------------------------------


def cpu_s(proc: psutil.Process, children: bool = False) -> float:
    """CPU seconds of a process (and, with ``children``, of its live children: a /proc scan)."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [proc, *(proc.children(recursive=True) if children else [])]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Meter:
    """Accumulates CPU seconds of named processes over measurement windows."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.cpu: dict[str, float] = dict.fromkeys(procs, 0.0)
        self.wall = 0.0
        self.busy = 0.0
        self.windows = 0

    def snapshot(self) -> tuple[dict[str, float], float, float]:
        cpu = {k: cpu_s(p, children=k in SERVERS) for k, p in self.procs.items()}
        return cpu, machine_busy_s(), time.perf_counter()

    def add(self, before: tuple[dict[str, float], float, float]) -> None:
        after = self.snapshot()
        for k in self.procs:
            self.cpu[k] += after[0][k] - before[0][k]
        self.busy += after[1] - before[1]
        self.wall += after[2] - before[2]
        self.windows += 1

    def other_load(self) -> float:
        ours = sum(self.cpu.values())
        return max(0.0, self.busy - ours) / (self.wall * (os.cpu_count() or 1)) if self.wall else 0.0


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """RSS and threads of a process and its children, summed (a pre-forked server's processes
    share the pages they inherited, so the sum overstates its memory: an upper bound)."""
    rss = threads = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            rss += p.memory_info().rss
            threads += p.num_threads()
    return rss, threads


class RssSampler:
    """RSS and thread count of a process tree, sampled on a thread during each ``sampling()`` block.

    ``batches`` gets one ``(rss before, peak rss, peak threads)`` per block.
    """

    def __init__(self, proc: psutil.Process, every_s: float = 0.02) -> None:
        self.proc = proc
        self.every_s = every_s
        self.batches: list[tuple[int, int, int]] = []

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        base, threads = tree_rss(self.proc)
        peak = [base, threads]
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss, threads = tree_rss(self.proc)
                    peak[0] = max(peak[0], rss)
                    peak[1] = max(peak[1], threads)
                stop.wait(self.every_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.batches.append((base, peak[0], peak[1]))


@contextlib.contextmanager
def fake_provider(log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``localstack.fake_provider`` as a subprocess (its own GIL) on a free port."""
    p = port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localstack.fake_provider", "--port", str(p)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log_path.open("ab"),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            raise RuntimeError(f"fake provider did not start (exit {proc.poll()}): {line!r}")
        yield f"http://127.0.0.1:{p}", proc
    finally:
        stop_process(proc, timeout_s=5)


@contextlib.contextmanager
def proxy_server(
    env: dict[str, str], log_path: Path, module: str = "functions.serve"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m functions.serve`` on a free port, as ``make run`` serves the functions."""
    with local_api(env, log_path, module=module) as api:
        yield api.url, api.process


def proxy_env(redis_url: str, endpoint: Endpoint, fake: str, policy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # spans are made, not exported (no collector here)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        DRAMATIQ_BROKER_URL=redis_url,
        PRESSLINE_NAMESPACE=NAMESPACE,
        AWS_ENDPOINT_URL=endpoint.url,
        AWS_ACCESS_KEY_ID=LOCAL_CREDENTIALS[0],
        AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIALS[1],
        AWS_DEFAULT_REGION="us-east-1",
        **provider_env(fake),
        PRESSLINE_ROUTING_POLICY=str(policy),
        PRESSLINE_API_RATE_LIMIT="1000000/s:1000000",
    )
    return env


# -- one stream -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    target: str
    mode: str
    status: int = 0
    headers_ms: float = float("nan")
    ttfb_ms: float = float("nan")
    total_ms: float = float("nan")
    content_chunks: int = 0
    separate: int = 0  # content chunks that came > 5 ms after the previous one (the first counts)
    median_gap_ms: float = float("nan")
    max_gap_ms: float = float("nan")
    usage: bool = False
    done: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.usage and self.content_chunks == CHUNKS


def arrivals_summary(sample: Sample, arrivals: list[float]) -> None:
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    sample.content_chunks = len(arrivals)
    sample.separate = (1 if arrivals else 0) + sum(g > SEPARATE_GAP_S for g in gaps)
    if gaps:
        sample.median_gap_ms = statistics.median(gaps) * 1000
        sample.max_gap_ms = max(gaps) * 1000


async def one_stream(client: LeanClient, path: str, headers: dict[str, str], sample: Sample) -> Sample:
    arrivals: list[float] = []
    parser = SSEParser()
    t0 = time.perf_counter()
    try:
        async for piece in client.stream(path, BODY, headers):
            now = time.perf_counter()
            if isinstance(piece, LeanResponse):
                sample.status = piece.status_code
                sample.headers_ms = (now - t0) * 1000
                continue
            for event in parser.feed(piece):
                if event.data == "[DONE]":
                    sample.done = True
                    sample.total_ms = (now - t0) * 1000
                    continue
                data = json.loads(event.data)
                choices = data.get("choices")
                if choices:
                    if sample.ttfb_ms != sample.ttfb_ms:  # NaN: the first
                        sample.ttfb_ms = (now - t0) * 1000
                    if (choices[0].get("delta") or {}).get("content"):
                        arrivals.append(now)
                if data.get("usage"):  # LiteLLM sends it beside an empty delta, not with empty choices
                    sample.usage = True
                if "error" in data:
                    sample.error = str(data["error"])[:200]
    except (OSError, TimeoutError, ValueError) as e:
        sample.error = f"{type(e).__name__}: {e}"[:200]
    arrivals_summary(sample, arrivals)
    return sample


# -- the runs -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    name: str
    path: str
    headers: dict[str, str]
    client: LeanClient
    meter: Meter


async def run_sequential(targets: list[Target], n: int, mode: str = "seq") -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {t.name: [] for t in targets}
    for i in range(n):
        for t in targets if i % 2 == 0 else targets[::-1]:
            before = t.meter.snapshot()
            out[t.name].append(await one_stream(t.client, t.path, t.headers, Sample(t.name, mode)))
            t.meter.add(before)
    return out


async def run_batches(
    targets: list[Target], width: int, batches: int, mode: str = "conc", rss: RssSampler | None = None
) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {t.name: [] for t in targets}
    for b in range(batches):
        for t in targets if b % 2 == 0 else targets[::-1]:
            sampling = rss.sampling() if rss is not None and t.name == "proxy" else contextlib.nullcontext()
            with sampling:
                before = t.meter.snapshot()
                got = await asyncio.gather(
                    *(one_stream(t.client, t.path, t.headers, Sample(t.name, mode)) for _ in range(width))
                )
                t.meter.add(before)
            out[t.name].extend(got)
    return out


async def sdk_check(direct_url: str, proxy_url: str, token: str, n: int) -> dict[str, list[Sample]]:
    """The official openai SDK (AsyncOpenAI, stream_options.include_usage), sequential, interleaved."""
    clients = {
        "direct": openai.AsyncOpenAI(base_url=f"{direct_url}/openai/v1", api_key="sk-bench", max_retries=0),
        "proxy": openai.AsyncOpenAI(base_url=f"{proxy_url}/v1", api_key=token, max_retries=0),
    }
    out: dict[str, list[Sample]] = {"direct": [], "proxy": []}
    for i in range(n):
        for name in ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct"):
            sample = Sample(name, "sdk", status=200)
            arrivals: list[float] = []
            t0 = time.perf_counter()
            try:
                stream = await clients[name].chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": PROMPT}],
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=30,
                )
                async for chunk in stream:
                    now = time.perf_counter()
                    if chunk.choices:
                        if sample.ttfb_ms != sample.ttfb_ms:
                            sample.ttfb_ms = (now - t0) * 1000
                        if chunk.choices[0].delta.content:
                            arrivals.append(now)
                    if chunk.usage is not None and chunk.usage.completion_tokens == CHUNKS:
                        sample.usage = True
                sample.done = True  # the SDK's iterator ends at [DONE]
                sample.total_ms = (time.perf_counter() - t0) * 1000
            except openai.APIError as e:
                sample.status, sample.error = getattr(e, "status_code", 0) or 0, str(e)[:200]
            arrivals_summary(sample, arrivals)
            out[name].append(sample)
    for c in clients.values():
        await c.close()
    return out


# -- report ---------------------------------------------------------------------------------------


def stats(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    ttfb = [s.ttfb_ms for s in ok]
    total = [s.total_ms for s in ok]
    chunks = sum(s.content_chunks for s in ok)
    return {
        "n": len(samples),
        "ok": len(ok),
        "ttfb_p50": percentile(ttfb, 50),
        "ttfb_p95": percentile(ttfb, 95),
        "total_p50": percentile(total, 50),
        "total_p95": percentile(total, 95),
        "headers_p50": percentile([s.headers_ms for s in ok], 50),
        "separate_p50": percentile([float(s.separate) for s in ok], 50),
        "separate_min": min((s.separate for s in ok), default=0),
        "separate_share": sum(s.separate for s in ok) / chunks if chunks else 0.0,
        "gap_p50": percentile([s.median_gap_ms for s in ok], 50),
        "max_gap_p95": percentile([s.max_gap_ms for s in ok], 95),
        # the first event written > 20 ms after the response headers (TCP_NODELAY off: Nagle and
        # delayed ACK hold a small write for ~40 ms); the proxy sends both when the first token came
        "held_after_headers": sum(s.ttfb_ms - s.headers_ms > 20 for s in ok),
        "errors": sorted({s.error for s in samples if s.error})[:3],
    }


def cpu_row(meter: Meter, streams: int) -> dict[str, Any]:
    per = 1000 / max(streams, 1)
    row = {k: v * per for k, v in meter.cpu.items()} | {"other_load": meter.other_load()}
    if "proxy" in meter.cpu and meter.wall:
        row["proxy_cores"] = meter.cpu["proxy"] / meter.wall  # 1.0 = one core all the time (the GIL's limit)
    return row


def render(
    rows: list[dict[str, Any]], cpu: dict[str, dict[str, Any]], rss: dict[str, Any], peers: list[str]
) -> str:
    head = (
        f"{'phase':<6} {'target':<7} {'ok':>7} {'TTFB p50':>8} {'p95':>7} {'total p50':>9} {'p95':>7} "
        f"{'+TTFB p50':>9} {'p95':>7} {'+total p50':>10} {'p95':>7} {'hdrs p50':>8} "
        f"{'sep/50 p50':>10} {'min':>4} {'gap p50':>7} {'maxgap p95':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s, d = r["stats"], r.get("direct")

        def added(key: str, s: dict[str, Any] = s, d: dict[str, Any] | None = d) -> str:
            return f"{s[key] - d[key]:+.1f}" if d else "-"

        lines.append(
            f"{r['phase']:<6} {r['target']:<7} {s['ok']:>3}/{s['n']:<3} {s['ttfb_p50']:>8.1f} "
            f"{s['ttfb_p95']:>7.1f} {s['total_p50']:>9.1f} {s['total_p95']:>7.1f} "
            f"{added('ttfb_p50'):>9} {added('ttfb_p95'):>7} {added('total_p50'):>10} {added('total_p95'):>7} "
            f"{s['headers_p50']:>8.1f} {s['separate_p50']:>10.0f} {s['separate_min']:>4} "
            f"{s['gap_p50']:>7.1f} {s['max_gap_p95']:>10.1f}"
        )
    lines.append("")
    servers = ["proxy", *peers, "redis"]
    lines.append(
        f"{'CPU ms per stream':<22} {''.join(f'{k:>8}' for k in servers)} {'fake':>7} {'client':>7} "
        f"{'other load':>10} {'proxy busy (cores)':>18}"
    )
    for key, c in cpu.items():
        lines.append(
            f"{key:<22} {''.join(f'{c.get(k, 0.0):>8.2f}' for k in servers)} {c['fake']:>7.2f} "
            f"{c['client']:>7.2f} {c['other_load']:>9.0%} {c.get('proxy_cores', float('nan')):>18.2f}"
        )
    mb = 1024 * 1024
    lines.append("")
    lines.append(
        f"proxy RSS: start {rss['start'] / mb:.1f} MB, after warm-up {rss['warm'] / mb:.1f} MB, "
        f"peak in 50-wide batches {rss['peak'] / mb:.1f} MB "
        f"(+{rss['per_stream_kb']:.0f} KB per concurrent stream), end {rss['end'] / mb:.1f} MB; "
        f"threads: {rss['threads_idle']} idle, {rss['threads_peak']} peak"
    )
    for name in peers:
        lines.append(f"{name} RSS at the end: {rss[f'{name}_end'] / mb:.1f} MB")
    return "\n".join(lines)


def verdicts(
    by: dict[tuple[str, str], dict[str, Any]], cpu: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    def added(phase: str) -> float:
        return float(by[(phase, "proxy")]["ttfb_p50"] - by[(phase, "direct")]["ttfb_p50"])

    out = [
        {
            "target": f"sequential: added TTFB p50 <= {TARGET_SEQ_TTFB_MS:g} ms",
            "value": f"{added('seq'):+.1f} ms",
            "pass": added("seq") <= TARGET_SEQ_TTFB_MS,
        },
        {
            "target": f"50 concurrent: added TTFB p50 <= {TARGET_CONC_TTFB_MS:g} ms",
            "value": f"{added('conc'):+.1f} ms",
            "pass": added("conc") <= TARGET_CONC_TTFB_MS,
        },
    ]
    # Not buffered: every proxied stream complete, and its chunks came in as many separate reads as
    # direct ones did (at 50 concurrent the client itself sometimes reads two events at once).
    for phase in ("seq", "conc", "sdk"):
        p, d = by[(phase, "proxy")], by[(phase, "direct")]
        complete = p["ok"] == p["n"]
        separate = p["separate_share"] >= min(0.9, d["separate_share"] - 0.05)
        out.append(
            {
                "target": f"{phase}: chunks arrive separately (all complete, share >= min(90%, direct-5pp))",
                "value": f"{p['ok']}/{p['n']} complete, {p['separate_share']:.1%} separate "
                f"(direct {d['separate_share']:.1%}), median gap {p['gap_p50']:.1f} ms",
                "pass": complete and separate,
            }
        )
    for phase in ("seq", "conc"):
        ms = cpu[phase]["proxy"]
        out.append(
            {
                "target": f"{phase}: proxy CPU per stream < {TARGET_CPU_MS:g} ms",
                "value": f"{ms:.1f} ms",
                "pass": ms < TARGET_CPU_MS,
            }
        )
    return out


# -- main -----------------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace,
    fake_url: str,
    proxy_url: str,
    token: str,
    procs: dict[str, psutil.Process],
    peers: list[Peer],
) -> dict[str, Any]:
    # Connections opened by the warm-up stay open through the whole run, so every measured batch
    # runs on warm connections as designed and only the "cold" batch pays for new ones.
    rss_start, threads_idle = tree_rss(procs["proxy"])

    names = [peer.name for peer in peers]
    ours = {k: p for k, p in procs.items() if k not in names}
    shared = {"fake": procs["fake"], "client": procs["client"]}

    def meters() -> tuple[Meter, Meter, dict[str, Meter]]:
        return Meter(shared), Meter(ours), {n: Meter({n: procs[n], **shared}) for n in names}

    direct_client, proxy_client = LeanClient(fake_url), LeanClient(proxy_url)
    peer_clients = {peer.name: LeanClient(peer.url) for peer in peers}
    try:

        def targets(direct_meter: Meter, proxy_meter: Meter, peer_meters: dict[str, Meter]) -> list[Target]:
            return [
                Target(
                    "direct",
                    "/openai/v1/chat/completions",
                    {"Authorization": "Bearer sk-bench"},
                    direct_client,
                    direct_meter,
                ),
                Target(
                    "proxy",
                    "/v1/chat/completions",
                    {"Authorization": f"Bearer {token}"},
                    proxy_client,
                    proxy_meter,
                ),
                *(
                    Target(
                        p.name, "/v1/chat/completions", p.headers, peer_clients[p.name], peer_meters[p.name]
                    )
                    for p in peers
                ),
            ]

        results: dict[str, dict[str, list[Sample]]] = {}
        cpu: dict[str, dict[str, Any]] = {}
        log(f"warm-up: {args.warmup} sequential + one {args.conc}-wide batch per target (cold connections)")
        await run_sequential(targets(*meters()), args.warmup, mode="warm")
        cold = meters()
        results["cold"] = await run_batches(targets(*cold), args.conc, 1, mode="cold")
        cpu["cold (1 batch)"] = cpu_row(cold[1], args.conc)
        cpu.update({f"cold ({n})": cpu_row(m, args.conc) for n, m in cold[2].items()})
        rss_warm = tree_rss(procs["proxy"])[0]

        log(f"sequential: {args.seq} streams per target, interleaved")
        seq = meters()
        results["seq"] = await run_sequential(targets(*seq), args.seq)
        cpu["seq"] = cpu_row(seq[1], args.seq)
        cpu["seq (direct)"] = cpu_row(seq[0], args.seq)
        cpu.update({f"seq ({n})": cpu_row(m, args.seq) for n, m in seq[2].items()})

        log(f"concurrent: {args.batches} batches x {args.conc} streams per target, interleaved")
        conc = meters()
        tracking = RssSampler(procs["proxy"])
        results["conc"] = await run_batches(targets(*conc), args.conc, args.batches, rss=tracking)
        streams = args.conc * args.batches
        cpu["conc"] = cpu_row(conc[1], streams)
        cpu["conc (direct)"] = cpu_row(conc[0], streams)
        cpu.update({f"conc ({n})": cpu_row(m, streams) for n, m in conc[2].items()})

        log(f"openai SDK: {args.sdk} streams per target, sequential, interleaved")
        results["sdk"] = await sdk_check(fake_url, proxy_url, token, args.sdk)
    finally:
        await direct_client.aclose()
        await proxy_client.aclose()
        for client in peer_clients.values():
            await client.aclose()

    rss_end = tree_rss(procs["proxy"])[0]
    peaks = tracking.batches
    memory = {
        "start": rss_start,
        "warm": rss_warm,
        "peak": max(p[1] for p in peaks),
        "end": rss_end,
        "per_stream_kb": max((p[1] - p[0]) for p in peaks) / args.conc / 1024,
        "threads_idle": threads_idle,
        "threads_peak": max(p[2] for p in peaks),
        "batches": peaks,
    }
    for name in names:
        memory[f"{name}_end"] = tree_rss(procs[name])[0]
    return {"results": results, "cpu": cpu, "rss": memory, "peers": names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seq", type=int, default=200, help="sequential streams per target")
    parser.add_argument("--conc", type=int, default=50, help="streams per concurrent batch")
    parser.add_argument("--batches", type=int, default=4, help="concurrent batches per target")
    parser.add_argument("--sdk", type=int, default=10, help="openai SDK streams per target")
    parser.add_argument("--warmup", type=int, default=5, help="untimed sequential streams per target")
    parser.add_argument(
        "--scenario",
        default=SCENARIO,
        help="the fake's knobs for every stream (experiments, e.g. chunks=1 for the per-request cost)",
    )
    parser.add_argument(
        "--server-module",
        default="functions.serve",
        help="serve the app with this module instead (experiments with a patched server)",
    )
    parser.add_argument("--hold", action="store_true", help="keep the servers up until Enter (py-spy)")
    parser.add_argument(
        "--litellm",
        type=Path,
        default=None,
        help="also measure LiteLLM's proxy in the same run (its `litellm` executable; make bench-peers)",
    )
    parser.add_argument(
        "--portkey",
        type=Path,
        default=None,
        help="also measure Portkey's gateway in the same run (its npm install folder; make bench-peers)",
    )
    args = parser.parse_args(argv)
    global CHUNKS
    knobs = dict(k.split("=", 1) for k in args.scenario.replace(",", ";").split(";") if "=" in k)
    CHUNKS = int(knobs.get("chunks", 10))

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    redis_port = port()
    redis_proc = start_redis(redis_port, tmp / "redis", durable=False)
    endpoint = ensure_endpoint(port=port())  # a moto of our own: 4566 may belong to a test session
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    log(f"redis on {redis_port}, AWS endpoint {endpoint.url} ({endpoint.kind}); logs in {tmp}")
    try:
        settings = Settings(broker_url=redis_url, aws_endpoint_url=endpoint.url, namespace=NAMESPACE)
        bootstrap(settings)  # the fake provider keys in Secrets Manager
        token = TokenStore(redis.Redis.from_url(redis_url), NAMESPACE).mint(TENANT, "editor", name="bench")[0]
        policy = tmp / "routing.json"
        policy.write_text(json.dumps(POLICY))
        with fake_provider(tmp / "fake.log") as (fake_url, fake_proc):
            set_fake_state(fake_url, reset=True, scenario={"openai": args.scenario})
            env = proxy_env(redis_url, endpoint, fake_url, policy)
            with proxy_server(env, tmp / "serve.log", args.server_module) as (proxy_url, server):
                log(f"fake provider {fake_url} (pid {fake_proc.pid}), proxy {proxy_url} (pid {server.pid})")
                procs = {
                    "proxy": psutil.Process(server.pid),
                    "redis": psutil.Process(redis_proc.pid),
                    "fake": psutil.Process(fake_proc.pid),
                    "client": psutil.Process(),
                }
                with contextlib.ExitStack() as running:
                    peers: list[Peer] = []
                    if args.litellm is not None:
                        peers.append(
                            running.enter_context(litellm_server(args.litellm, fake_url, MODEL, tmp))
                        )
                    if args.portkey is not None:
                        peers.append(running.enter_context(portkey_server(args.portkey, fake_url, tmp)))
                    for peer in peers:
                        procs[peer.name] = psutil.Process(peer.process.pid)
                        log(f"{peer.name} {peer.url} (pid {peer.process.pid})")
                    measured = asyncio.run(measure(args, fake_url, proxy_url, token, procs, peers))
                    if args.hold:
                        log(f"servers up: proxy pid {server.pid}, fake pid {fake_proc.pid}; Enter stops them")
                        sys.stdin.readline()
    finally:
        stop_process(redis_proc)
        if endpoint.process is not None:
            stop_process(endpoint.process)

    elapsed = time.perf_counter() - started
    results: dict[str, dict[str, list[Sample]]] = measured["results"]
    by = {(phase, t): stats(samples) for phase, per in results.items() for t, samples in per.items()}
    rows = [
        {
            "phase": phase,
            "target": t,
            "stats": by[(phase, t)],
            "direct": by[(phase, "direct")] if t != "direct" else None,
        }
        for phase in ("seq", "conc", "cold", "sdk")
        for t in ("direct", "proxy", *PEERS)
        if (phase, t) in by
    ]
    checks = verdicts(by, measured["cpu"])
    print(render(rows, measured["cpu"], measured["rss"], measured["peers"]))
    print()
    for (phase, t), st in by.items():
        if t == "proxy" and (st["held_after_headers"] or st["errors"]):
            print(
                f"note {phase}/proxy: {st['held_after_headers']}/{st['ok']} streams got their first chunk "
                f"> 20 ms after the headers; {st['n'] - st['ok']} failed {st['errors']}"
            )
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['value']}")
    print(
        "\nms; '+' = through the proxy (or a peer) minus direct at the same percentile; "
        f"ok = 200 with {CHUNKS} content chunks, "
        "usage and [DONE]; sep/50 = content chunks that arrived > 5 ms after the previous one; "
        "cold = the first 50-wide batch (new connections), not part of the targets. "
        f"bench took {elapsed:.0f}s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"proxy-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "openai": openai.__version__,
        "cpus": os.cpu_count(),
        "scenario": args.scenario,
        "settings": vars(args),
        "elapsed_s": elapsed,
    }
    doc = {
        "meta": meta,
        "summary": {f"{p}/{t}": s for (p, t), s in by.items()},
        "cpu_ms_per_stream": measured["cpu"],
        "rss": measured["rss"],
        "checks": checks,
        "samples": {
            p: {t: [dataclasses.asdict(s) for s in ss] for t, ss in per.items()} for p, per in results.items()
        },
    }
    path.write_text(json.dumps(doc, indent=1, default=str))
    print(f"JSON: {path.relative_to(ROOT)}")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
