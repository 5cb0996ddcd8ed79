"""Pressline's Redis Streams broker against Dramatiq's stock RedisBroker, in one run on one Redis.

Run ``make bench`` (or ``.venv/bin/python -m bench.broker_bench --help`` for the knobs).  The bench
starts its own ``redis-server`` on a free port, then for each broker runs real ``dramatiq
bench.actors -p P -t T`` worker processes (fresh ones per measurement, stopped with SIGTERM) with
the same actors (``bench/actors.py``) and Dramatiq's default middleware.  What each number means:

* enqueue msgs/s: one producer process calling ``actor.send`` N times, no worker running
  (workers are up but frozen with SIGSTOP, so the N messages become the drain backlog);
* drain msgs/s: N / time from SIGCONT of the workers until the backlog is fully processed (acked);
  "drain, last actor finished" uses the time the last actor returned instead, so a late final
  ack shows up as the difference between the two;
* mixed msgs/s: N / time from the producer's first send until all N are processed, with the
  producer (one process, sending as fast as it can, same code for both) and workers running at once;
* CPU us/msg: CPU time of every ``dramatiq`` process (main and children) plus the Redis server
  during the drain, divided by N (producer excluded);
* Redis cmds/msg: ``INFO commandstats`` calls (commands inside Lua scripts included) from before
  the enqueue to the end of the drain, divided by N, minus the bench's own probe commands;
* enqueue-to-start latency: the ``stamped`` actor records ``time.time() - sent_at`` in memory,
  paced at 200 msgs/s; each worker process writes its samples to a file at shutdown;
* idle ops/s: Redis commands per second of one idle worker process (default threads);
* other load: CPU used by processes outside the bench during enqueue+drain, as a share of all
  CPUs.  The numbers are only trustworthy when it is near 0%.

Completion is detected by polling the queue with one cheap command (HLEN / XINFO GROUPS) every
10 ms; the bench counts those and subtracts them, and ignores ``INFO`` altogether.  Every
measurement is repeated ``--reps`` times and the table shows medians; all samples go to JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dramatiq
import psutil
import redis

from bench.actors import QUEUE
from infra.redis_server import free_port, start_redis, stop_process
from shared.streams.keys import QueueKeys

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
NAMESPACE = "bench"
BROKERS = ("stock", "streams")
POLL_S = 0.01


def log(text: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(text, file=sys.stderr, flush=True)


# -- Redis: the server, its counters, and the bench's own (subtracted) probe commands -------------


@dataclass(frozen=True)
class Snapshot:
    """Redis's command counters and CPU at one instant, plus the bench's own commands so far."""

    calls: dict[str, int]
    redis_cpu_s: float
    own: dict[str, int]
    at: float
    machine_busy_s: float  # CPU seconds all processes on the machine have used
    bench_cpu_s: float  # this process plus its finished children (the producers)


class RedisProbe:
    """The bench's view of its Redis; it counts its own commands so they can be subtracted."""

    def __init__(self, url: str, pid: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.client.ping()  # connect now, so connection set-up is never inside a measured window
        self.server = psutil.Process(pid)
        self.own: Counter[str] = Counter()

    def snapshot(self) -> Snapshot:
        stats = self.client.info("commandstats")  # INFO itself is excluded from every count
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        cpu = self.server.cpu_times()
        machine = psutil.cpu_times()
        me = psutil.Process().cpu_times()
        return Snapshot(
            calls,
            cpu.user + cpu.system,
            dict(self.own),
            time.perf_counter(),
            machine_busy_s=sum(machine) - machine.idle - machine.iowait,
            bench_cpu_s=me.user + me.system + me.children_user + me.children_system,
        )

    def remaining(self, kind: str) -> int:
        """Messages enqueued and not yet acked, with one O(1) command."""
        if kind == "stock":
            self.own["hlen"] += 1  # the stock broker keeps each message in <ns>:<queue>.msgs until acked
            return int(self.client.hlen(f"{NAMESPACE}:{QUEUE}.msgs"))
        self.own["xinfo|groups"] += 1
        groups = self.client.xinfo_groups(QueueKeys(NAMESPACE, QUEUE).stream)
        if not groups:
            return 0
        group = groups[0]
        if group["lag"] is not None:
            return int(group["pending"]) + int(group["lag"])
        # Redis could not compute the lag (e.g. after deletions): compare ids instead.
        self.own["xinfo|stream"] += 1
        last = self.client.xinfo_stream(QueueKeys(NAMESPACE, QUEUE).stream)["last-generated-id"]
        return int(group["pending"]) + int(group["last-delivered-id"] != last)

    def wait_empty(self, kind: str, timeout_s: float = 600.0) -> float:
        """Poll until the queue is empty; returns the perf_counter time it was seen empty."""
        deadline = time.perf_counter() + timeout_s
        while self.remaining(kind) > 0:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{kind}: queue not drained within {timeout_s}s")
            time.sleep(POLL_S)
        return time.perf_counter()

    def flush(self) -> None:
        self.client.flushall()


def foreign_load(before: Snapshot, after: Snapshot, worker_cpu_s: float) -> float:
    """Share of the machine's CPUs used by processes that are not part of the bench (e.g. a test
    suite running at the same time); anything above a few percent makes the numbers suspect."""
    ours = after.bench_cpu_s - before.bench_cpu_s + after.redis_cpu_s - before.redis_cpu_s + worker_cpu_s
    foreign = after.machine_busy_s - before.machine_busy_s - ours
    return max(0.0, foreign) / ((after.at - before.at) * (os.cpu_count() or 1))


def command_delta(before: Snapshot, after: Snapshot) -> dict[str, int]:
    """Commands the brokers sent between two snapshots (INFO and the bench's probes removed)."""
    delta: dict[str, int] = {}
    for name, calls in after.calls.items():
        if name == "info":
            continue
        own = after.own.get(name, 0) - before.own.get(name, 0)
        n = calls - before.calls.get(name, 0) - own
        if n:
            delta[name] = n
    return delta


# -- worker processes ---------------------------------------------------------------------------


def broker_env(kind: str, url: str, out_dir: Path) -> dict[str, str]:
    return dict(
        os.environ,
        BENCH_BROKER=kind,
        BENCH_REDIS_URL=url,
        BENCH_NAMESPACE=NAMESPACE,
        BENCH_OUT_DIR=str(out_dir),
    )


class Workers:
    """A running ``dramatiq bench.actors`` command: its main process and all children."""

    def __init__(self, proc: subprocess.Popen[bytes], out_dir: Path) -> None:
        self.proc = proc
        self.out_dir = out_dir
        main = psutil.Process(proc.pid)
        self.processes = [main, *main.children(recursive=True)]

    def cpu_s(self) -> float:
        """User + system CPU seconds of all dramatiq processes (they are alive, so sum each one)."""
        total = 0.0
        for p in self.processes:
            t = p.cpu_times()
            total += t.user + t.system
        return total

    def pause(self) -> None:
        for p in self.processes:
            p.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for p in self.processes:
            p.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM and wait, as an operator would; SIGKILL the group only if it hangs."""
        self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            log("  workers did not stop in 60s; killing them")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def last_finished(self) -> float:
        """Wall-clock time the last message finished in any process (files written at shutdown)."""
        return max(float(path.read_text()) for path in self.out_dir.glob("finished-*"))

    def latencies(self) -> list[float]:
        samples: list[float] = []
        for path in self.out_dir.glob("latency-*.json"):
            samples += json.loads(path.read_text())
        return samples


class Bench:
    """One Redis, both brokers, and helpers to run producers and workers against it."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        port = free_port()
        self.redis_proc = start_redis(port, scratch / "redis", durable=False)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.probe = RedisProbe(self.url, self.redis_proc.pid)
        self.sessions = 0

    def close(self) -> None:
        stop_process(self.redis_proc)

    def produce(self, kind: str, actor: str, n: int, rate: float = 0.0) -> subprocess.Popen[str]:
        """Start one producer process (``bench/producer.py``); it prints its timings as JSON."""
        cmd = [
            str(BIN / "python"),
            "-m",
            "bench.producer",
            "--actor",
            actor,
            "--n",
            str(n),
            "--rate",
            str(rate),
        ]
        env = broker_env(kind, self.url, self.scratch)
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)

    def run_producer(self, kind: str, actor: str, n: int, rate: float = 0.0) -> dict[str, float]:
        return finish_producer(self.produce(kind, actor, n, rate))

    @contextmanager
    def workers(self, kind: str, processes: int, threads: int | None) -> Iterator[Workers]:
        """Fresh workers on an empty Redis, yielded once every process has booted and a warm-up
        batch has been processed (so start-up never lands inside a measurement)."""
        self.sessions += 1
        out_dir = self.scratch / f"session-{self.sessions}-{kind}"
        out_dir.mkdir()
        self.probe.flush()
        cmd = [str(BIN / "dramatiq"), "bench.actors", "-p", str(processes)]
        if threads is not None:
            cmd += ["-t", str(threads)]
        with (out_dir / "dramatiq.log").open("wb") as logfile:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=broker_env(kind, self.url, out_dir),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while len(list(out_dir.glob("ready-*"))) < processes:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} workers did not start; see {out_dir / 'dramatiq.log'}")
                time.sleep(0.05)
            self.run_producer(kind, "noop", 4 * processes * (threads or 8))
            self.probe.wait_empty(kind)
            time.sleep(0.3)  # let the last acks and fetches settle
            workers = Workers(proc, out_dir)
            yield workers
        finally:
            if proc.poll() is None:
                Workers(proc, out_dir).stop()


def finish_producer(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"producer failed with exit code {proc.returncode}")
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- measurements -------------------------------------------------------------------------------


def per_msg(delta: dict[str, int], n: int) -> dict[str, float]:
    return {name: calls / n for name, calls in sorted(delta.items(), key=lambda kv: -kv[1])}


def measure_enqueue_drain(
    bench: Bench, kind: str, processes: int, threads: int, actor: str, n: int
) -> dict[str, Any]:
    """Enqueue N with the workers frozen, then thaw them and time the drain."""
    with bench.workers(kind, processes, threads) as workers:
        workers.pause()
        before, start_cpu = bench.probe.snapshot(), workers.cpu_s()
        produced = bench.run_producer(kind, actor, n)
        cpu0, redis0 = workers.cpu_s(), bench.probe.snapshot().redis_cpu_s
        t0, t0_wall = time.perf_counter(), time.time()
        workers.resume()
        t1 = bench.probe.wait_empty(kind)
        cpu1, after = workers.cpu_s(), bench.probe.snapshot()
    delta = command_delta(before, after)
    return {
        "enqueue_per_s": n / produced["elapsed"],
        "drain_per_s": n / (t1 - t0),
        "drain_run_per_s": n / (workers.last_finished() - t0_wall),
        "worker_cpu_us_per_msg": (cpu1 - cpu0) / n * 1e6,
        "redis_cpu_us_per_msg": (after.redis_cpu_s - redis0) / n * 1e6,
        "cpu_us_per_msg": (cpu1 - cpu0 + after.redis_cpu_s - redis0) / n * 1e6,
        "cmds_per_msg": sum(delta.values()) / n,
        "cmds": per_msg(delta, n),
        "foreign_load": foreign_load(before, after, cpu1 - start_cpu),
    }


def measure_mixed(
    bench: Bench, kind: str, processes: int, threads: int, actor: str, n: int
) -> dict[str, Any]:
    """Producer and workers at once: N / (first send .. last message processed)."""
    with bench.workers(kind, processes, threads) as workers:
        before, cpu0 = bench.probe.snapshot(), workers.cpu_s()
        producer = bench.produce(kind, actor, n)
        produced = finish_producer(producer)
        bench.probe.wait_empty(kind)
        end_wall = time.time()
        cpu1, after = workers.cpu_s(), bench.probe.snapshot()
    delta = command_delta(before, after)
    return {
        "mixed_per_s": n / (end_wall - produced["start"]),
        "mixed_enqueue_per_s": n / produced["elapsed"],
        "mixed_cpu_us_per_msg": (cpu1 - cpu0 + after.redis_cpu_s - before.redis_cpu_s) / n * 1e6,
        "mixed_cmds_per_msg": sum(delta.values()) / n,
        "mixed_cmds": per_msg(delta, n),
        "mixed_foreign_load": foreign_load(before, after, cpu1 - cpu0),
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def measure_latency(bench: Bench, kind: str, rate: float, seconds: float) -> dict[str, Any]:
    """Enqueue-to-start delay at a paced rate, 2 x 8 workers, no-op actor."""
    n = int(rate * seconds)
    with bench.workers(kind, 2, 8) as workers:
        before = bench.probe.snapshot()
        bench.run_producer(kind, "stamped", n, rate)
        bench.probe.wait_empty(kind)
        after = bench.probe.snapshot()
    samples = workers.latencies()  # written by each process at shutdown
    if len(samples) != n:
        log(f"  warning: {len(samples)} latency samples for {n} messages")
    delta = command_delta(before, after)
    return {
        "latency_p50_ms": percentile(samples, 50) * 1000,
        "latency_p95_ms": percentile(samples, 95) * 1000,
        "latency_p99_ms": percentile(samples, 99) * 1000,
        "latency_cmds_per_msg": sum(delta.values()) / n,
        "latency_cmds": per_msg(delta, n),
    }


def measure_idle(bench: Bench, kind: str, seconds: float) -> dict[str, Any]:
    """Redis commands/s of one idle worker process with Dramatiq's default thread count."""
    with bench.workers(kind, 1, None):
        time.sleep(3)  # past the warm-up's tail (the stock consumer's back-off grows to 1 s)
        before = bench.probe.snapshot()
        time.sleep(seconds)
        after = bench.probe.snapshot()
    delta = command_delta(before, after)
    elapsed = after.at - before.at
    return {
        "idle_ops_per_s": sum(delta.values()) / elapsed,
        "idle_cmds": {k: v / elapsed for k, v in delta.items()},
    }


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    processes: int
    threads: int
    actor: str
    n: int


Samples = dict[str, dict[str, dict[str, list[Any]]]]  # scenario -> broker -> metric -> one value per rep


def record(samples: Samples, scenario: str, kind: str, values: dict[str, Any]) -> None:
    for metric, value in values.items():
        samples.setdefault(scenario, {}).setdefault(kind, {}).setdefault(metric, []).append(value)


def run(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = [
        Scenario("2x8 noop", 2, 8, "noop", args.n),
        Scenario("1x1 noop", 1, 1, "noop", args.n_small),
        Scenario("2x8 cpu_2ms", 2, 8, "cpu_2ms", args.n_small),
        Scenario("1x1 cpu_2ms", 1, 1, "cpu_2ms", max(200, args.n_small // 4)),
    ]
    wanted = set(args.only.split(",")) if args.only else None
    scenarios = [sc for sc in scenarios if wanted is None or sc.name in wanted]
    run_latency = wanted is None or "latency" in wanted
    idle_reps = args.idle_reps if wanted is None or "idle" in wanted else 0
    samples: Samples = {}
    scratch = Path(tempfile.mkdtemp(prefix="pressline-bench-"))
    bench = Bench(scratch)
    started = time.monotonic()
    try:
        for rep in range(args.reps):
            # Alternate which broker goes first, so slow drift of the machine favours neither.
            order = BROKERS if rep % 2 == 0 else BROKERS[::-1]
            for sc in scenarios:
                for kind in order:
                    log(f"[{time.monotonic() - started:5.0f}s] rep {rep + 1}/{args.reps} {sc.name} {kind}")
                    values = measure_enqueue_drain(bench, kind, sc.processes, sc.threads, sc.actor, sc.n)
                    values |= measure_mixed(bench, kind, sc.processes, sc.threads, sc.actor, sc.n)
                    record(samples, sc.name, kind, values)
            for kind in order if run_latency else ():
                log(f"[{time.monotonic() - started:5.0f}s] rep {rep + 1}/{args.reps} latency {kind}")
                record(
                    samples, "latency", kind, measure_latency(bench, kind, args.rate, args.latency_seconds)
                )
        for rep in range(idle_reps):
            for kind in BROKERS:
                log(f"[{time.monotonic() - started:5.0f}s] idle {rep + 1}/{args.idle_reps} {kind}")
                record(samples, "idle", kind, measure_idle(bench, kind, args.idle_seconds))
    finally:
        bench.close()
        if args.keep:
            log(f"scratch files kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"samples": samples, "medians": medians(samples), "elapsed_s": time.monotonic() - started}


def medians(samples: Samples) -> dict[str, dict[str, dict[str, Any]]]:
    """Median of each metric; for per-command breakdowns, the median of each command."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, kinds in samples.items():
        for kind, metrics in kinds.items():
            row: dict[str, Any] = {}
            for metric, values in metrics.items():
                if isinstance(values[0], dict):
                    names = {name for v in values for name in v}
                    row[metric] = {
                        name: round(statistics.median(v.get(name, 0.0) for v in values), 4)
                        for name in sorted(names)
                    }
                else:
                    row[metric] = statistics.median(values)
            out.setdefault(scenario, {})[kind] = row
    return out


# -- report -------------------------------------------------------------------------------------

#: (scenario, metric, label, format) rows of the table, in order.
ROWS: list[tuple[str, str, str, str]] = []
for _sc in ("2x8 noop", "1x1 noop", "2x8 cpu_2ms"):
    ROWS += [
        (_sc, "enqueue_per_s", "enqueue msgs/s (producer alone)", "{:,.0f}"),
        (_sc, "drain_per_s", "drain msgs/s (backlog of N)", "{:,.0f}"),
        (_sc, "drain_run_per_s", "  drain, by last actor finished", "{:,.0f}"),
        (_sc, "mixed_per_s", "mixed msgs/s (producer + workers)", "{:,.0f}"),
        (_sc, "cpu_us_per_msg", "CPU us/msg, drain (workers + Redis)", "{:,.0f}"),
        (_sc, "worker_cpu_us_per_msg", "  of which dramatiq processes", "{:,.0f}"),
        (_sc, "redis_cpu_us_per_msg", "  of which redis-server", "{:,.1f}"),
        (_sc, "mixed_cpu_us_per_msg", "CPU us/msg, mixed (workers + Redis)", "{:,.0f}"),
        (_sc, "cmds_per_msg", "Redis cmds/msg (enqueue + drain)", "{:.2f}"),
        (_sc, "mixed_cmds_per_msg", "Redis cmds/msg (mixed)", "{:.2f}"),
        (_sc, "foreign_load", "other load on the machine, % of CPUs", "{:.0%}"),
    ]
ROWS += [
    ("latency", "latency_p50_ms", "enqueue-to-start p50 ms", "{:.2f}"),
    ("latency", "latency_p95_ms", "enqueue-to-start p95 ms", "{:.2f}"),
    ("latency", "latency_p99_ms", "enqueue-to-start p99 ms", "{:.2f}"),
    ("latency", "latency_cmds_per_msg", "Redis cmds/msg at that rate", "{:.2f}"),
    ("idle", "idle_ops_per_s", "idle worker Redis ops/s", "{:.2f}"),
]


def value(med: dict[str, Any], scenario: str, kind: str, metric: str) -> float | None:
    v = med.get(scenario, {}).get(kind, {}).get(metric)
    return float(v) if v is not None else None


def table(med: dict[str, Any], args: argparse.Namespace) -> str:
    titles = {
        "2x8 noop": f"2 processes x 8 threads, no-op actor, N={args.n:,}",
        "1x1 noop": f"1 process x 1 thread, no-op actor, N={args.n_small:,}",
        "2x8 cpu_2ms": f"2 processes x 8 threads, 2 ms CPU actor, N={args.n_small:,}",
        "latency": f"2 x 8, no-op actor paced at {args.rate:.0f} msgs/s for {args.latency_seconds:.0f}s",
        "idle": f"1 idle worker process (default threads), {args.idle_seconds:.0f}s window",
    }
    lines = [f"{'':40} {'stock':>12} {'streams':>12} {'ratio':>8}", "-" * 75]
    current = ""
    for scenario, metric, label, fmt in ROWS:
        if scenario != current:
            current = scenario
            lines.append(f"{titles[scenario]}:")
        stock, streams = value(med, scenario, "stock", metric), value(med, scenario, "streams", metric)
        cells = [fmt.format(v) if v is not None else "-" for v in (stock, streams)]
        ratio = f"{streams / stock:.2f}x" if stock and streams is not None and "%" not in fmt else ""
        lines.append(f"  {label:38} {cells[0]:>12} {cells[1]:>12} {ratio:>8}")
    lines.append("ratio = streams / stock; medians of --reps runs (idle: of --idle-reps).")
    return "\n".join(lines)


#: The issue's "Done when" targets: (label, scenario, metric, compared as, limit).  "ratio" compares
#: streams / stock; "value" compares the streams broker's own number.  "at least" / "at most".
TARGETS: list[tuple[str, str, str, str, str, float]] = [
    ("2x8 no-op drain >= 1.5x stock", "2x8 noop", "drain_per_s", "ratio", "at least", 1.5),
    ("2x8 no-op mixed >= 1.3x stock", "2x8 noop", "mixed_per_s", "ratio", "at least", 1.3),
    ("2x8 no-op CPU/msg <= 2/3 of stock", "2x8 noop", "cpu_us_per_msg", "ratio", "at most", 2 / 3),
    ("1x1 no-op drain >= 5x stock", "1x1 noop", "drain_per_s", "ratio", "at least", 5.0),
    ("2 ms actor (2x8) drain >= 1.2x stock", "2x8 cpu_2ms", "drain_per_s", "ratio", "at least", 1.2),
    ("2 ms actor (2x8) mixed >= 1.2x stock", "2x8 cpu_2ms", "mixed_per_s", "ratio", "at least", 1.2),
    ("2 ms actor (1x1) drain >= 1.2x stock", "1x1 cpu_2ms", "drain_per_s", "ratio", "at least", 1.2),
    ("2 ms actor (1x1) mixed >= 1.2x stock", "1x1 cpu_2ms", "mixed_per_s", "ratio", "at least", 1.2),
    ("<= 2 cmds/msg, 2x8 enqueue+drain", "2x8 noop", "cmds_per_msg", "value", "at most", 2.0),
    ("<= 2 cmds/msg, 1x1 enqueue+drain", "1x1 noop", "cmds_per_msg", "value", "at most", 2.0),
    ("<= 2 cmds/msg, 2x8 mixed", "2x8 noop", "mixed_cmds_per_msg", "value", "at most", 2.0),
    ("enqueue-to-start p99 < 5 ms at 200/s", "latency", "latency_p99_ms", "value", "below", 5.0),
    ("idle worker <= 1 Redis op/s", "idle", "idle_ops_per_s", "value", "at most", 1.0),
]


def targets(med: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it passes."""
    checks = []
    for label, scenario, metric, compared, how, limit in TARGETS:
        stock, streams = value(med, scenario, "stock", metric), value(med, scenario, "streams", metric)
        if compared == "ratio":
            measured = streams / stock if stock and streams is not None else float("nan")
            shown = (
                f"{measured:.2f}x (stock {stock:,.1f}, streams {streams:,.1f})" if stock and streams else "-"
            )
        else:
            measured = streams if streams is not None else float("nan")
            shown = f"{measured:.2f}"
        ok = {"at least": measured >= limit, "at most": measured <= limit, "below": measured < limit}[how]
        checks.append({"target": label, "value": measured, "measured": shown, "pass": ok})
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description="Redis Streams broker vs Dramatiq's stock RedisBroker.")
    parser.add_argument("--n", type=int, default=20_000, help="messages per run, 2x8 no-op (default 20000)")
    parser.add_argument("--n-small", type=int, default=4_000, help="messages per run, 1x1 and 2 ms actor")
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions of each measurement (median reported)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="paced rate of the latency run, msgs/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle measurement window")
    parser.add_argument("--idle-reps", type=int, default=2, help="repetitions of the idle measurement")
    parser.add_argument("--keep", action="store_true", help="keep worker logs and Redis dir in /tmp")
    parser.add_argument(
        "--only",
        default="",
        help="subset, comma-separated, of: 2x8 noop, 1x1 noop, 2x8 cpu_2ms, 1x1 cpu_2ms, latency, idle",
    )
    args = parser.parse_args()

    result = run(args)
    med = result["medians"]
    checks = targets(med)
    print(table(med, args))
    print("\nTargets (issue 2, 'Done when'):")
    for c in checks:
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['target']:42} measured {c['measured']}")
    print(f"\nbench took {result['elapsed_s']:.0f}s")

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"broker-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    redis_version = bench_redis_version()
    meta = {
        "python": platform.python_version(),
        "dramatiq": dramatiq.__version__,
        "redis_py": redis.__version__,
        "redis_server": redis_version,
        "cpus": os.cpu_count(),
        "settings": vars(args),
    }
    path.write_text(json.dumps({"meta": meta, "targets": checks, **result}, indent=2, default=str))
    print(f"JSON: {path.relative_to(ROOT)}")


def bench_redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip()


if __name__ == "__main__":
    main()
