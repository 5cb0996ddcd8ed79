"""Burn-in: the whole ``make run`` stack under steady load while its components are killed, frozen
and starved, then an account of every job it accepted.

Run ``make burn-in`` (``python -m bench.burn_in``; ``--short`` for a ~3 minute run, ``--help``).

Why it exists: the supervisor restarts what dies, the broker redelivers what a dead consumer held,
the retries outlast outages and WordPress posts are upserted by reference. Each is tested on its
own; this runs them together for a long time, the way production meets them, so anyone can rerun
the scenario and get the same figures. It:

1. starts ``python -m infra.devstack`` itself (``PRESSLINE_WORDPRESS=1``: the real local WordPress,
   site ``local-wp`` of tenant ``demo``), on free ports and in a temporary data dir, and waits for
   its ready banner;
2. sends an open-loop load (a fixed rate whatever the answers, each send in its own thread): 90%
   ``POST /v1/jobs`` with an ``Idempotency-Key``, 10% Standard-Webhooks-signed
   ``post.generate_requested`` events to ``POST /v1/webhooks/wordpress/local-wp``. A refused or
   failed send is retried with the same key (webhook id), so a job is *accepted* exactly when a
   202 came back;
3. meanwhile plays a fault schedule (data: :func:`schedule`): kill -9 of each queue's worker
   process, of the API's parent, the fake LLM, Redis, the moto endpoint, MariaDB and WordPress's php
   server (its process group); Redis SIGTERM;
   WordPress frozen (SIGSTOP of the php server's process group) and slowed (stopped 3/4 of each
   second); the LLM providers answering 503, 429 or stalling;
4. samples health every second (API, Redis, the endpoint, the fake LLM, WordPress, MariaDB, each
   queue's worker tree, each queue's backlog/pending/delayed/dead), from which each fault's
   recovery time is derived: from the kill (or the end of a window) to the first sample in which
   every component answers, the killed one with a new process;
5. drains (waits, bounded, until every accepted job is final), then accounts for every accepted
   job: its final state, the dead letters and their reasons, its WordPress posts (by external
   reference), messages still held past the dead-consumer window, and its cost.

The table goes to stdout, progress to stderr, everything to ``bench/results/burn_in-<ts>.json``.
The exit code is 0 only when the targets hold: at least 99.9% of the accepted jobs that did not
fail permanently succeeded, none lost, none stuck, no duplicate post, every component back within
30 s of every fault. 1 when a target failed, 2 when the stack could not be run at all. A failed
run keeps its data dir (the stack's log, Redis's AOF, WordPress) and says where.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import boto3
import httpx
import redis
from botocore.config import Config as BotoConfig

from infra.devstack import READY_BANNER
from infra.redis_server import free_port
from shared.auth import TokenStore
from shared.config import QUEUES, Settings
from shared.jobs import JobRecord, JobState, JobStore
from shared.streams.admin import QueueAdmin
from shared.streams.keys import GROUP, QueueKeys
from shared.webhooks import sign

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SITE = "local-wp"  # what PRESSLINE_WORDPRESS=1 registers (infra/wordpress.py STACK_SITE)
TENANT = "demo"
GENERATE = "post.generate_requested"
LLM_PROVIDERS = ("openai", "groq", "anthropic")  # every provider, so a route's fallback is down too

#: Targets (issue 15, point 5).
TARGET_SUCCESS = 0.999
TARGET_RECOVERY_S = 30.0
#: How long after a fault recovery is looked for; past it the fault counts as "not back".
RECOVERY_LIMIT_S = 180.0
STACK_READY_TIMEOUT_S = 240.0
STACK_STOP_TIMEOUT_S = 120.0
SAMPLE_INTERVAL_S = 1.0
FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED})
#: A source of a fixed word count, so every job's prompt (and so its cost) is the same.
SOURCE = (
    "Burn-in source text. The runtime keeps serving while its parts are killed. "
    "Every accepted job must end, once, with one post."
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class Fault:
    """One fault: what, to what (a queue for ``kill_worker``), when, and for how long (windows)."""

    at_s: float
    kind: str
    target: str = ""
    duration_s: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


#: kind -> (component whose process it replaces, or None; default window length in seconds).
FAULT_KINDS: dict[str, tuple[str | None, float]] = {
    "kill_worker": (None, 0.0),  # the component is the target queue
    "kill_api": ("api", 0.0),
    "kill_llm": ("llm", 0.0),
    "kill_redis": ("redis", 0.0),
    "term_redis": ("redis", 0.0),
    "kill_aws": ("aws", 0.0),
    "kill_mariadb": ("mariadb", 0.0),
    "kill_wordpress": ("wordpress", 0.0),  # the php server's whole process group
    "freeze_wordpress": (None, 20.0),
    "slow_wordpress": (None, 30.0),
    "llm_503": (None, 30.0),
    "llm_429": (None, 30.0),
    "llm_stall": (None, 30.0),
}

#: The long run's cycle, played again and again until the load ends (Redis killed twice a cycle).
FULL_CYCLE: tuple[tuple[str, str], ...] = (
    ("kill_worker", "ingest"),
    ("llm_503", ""),
    ("kill_redis", ""),
    ("kill_worker", "infer"),
    ("freeze_wordpress", ""),
    ("kill_api", ""),
    ("llm_429", ""),
    ("kill_worker", "post-process"),
    ("kill_llm", ""),
    ("slow_wordpress", ""),
    ("kill_redis", ""),
    ("kill_worker", "publish"),
    ("llm_stall", ""),
    ("term_redis", ""),
    ("kill_aws", ""),
    ("kill_worker", "webhooks"),
    ("kill_mariadb", ""),
    ("kill_wordpress", ""),
)
#: ``--short``: a handful, played once (the LLM window shortened to fit).
SHORT_CYCLE: tuple[tuple[str, str], ...] = (
    ("kill_worker", "publish"),
    ("kill_api", ""),
    ("llm_503", ""),
    ("kill_redis", ""),
)


def schedule(load_s: float, *, short: bool) -> list[Fault]:
    """The faults of a run of ``load_s`` seconds, as data: spaced so each has time to recover before
    the next, none in the last stretch of the load (so the drain measures recovery, not a fault)."""
    cycle, start_s, gap_s, tail_s = (
        (SHORT_CYCLE, 8.0, 10.0, 12.0) if short else (FULL_CYCLE, 30.0, 40.0, 45.0)
    )
    faults: list[Fault] = []
    at = start_s
    for index in range(10_000):
        if short and index >= len(cycle):
            break
        kind, target = cycle[index % len(cycle)]
        duration = FAULT_KINDS[kind][1]
        if short and duration:
            duration = min(duration, 15.0)
        if at + duration > load_s - tail_s:
            break
        faults.append(Fault(at, kind, target, duration))
        at += duration + gap_s
    return faults


# ------------------------------------------------------------------------------------- processes


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _component_of(args: list[str]) -> str | None:
    """Which stack component a child of the supervisor is, from its command line."""
    if not args or not args[0]:
        return None
    program = Path(args[0].split(" ")[0]).name  # Redis rewrites its title: "redis-server host:port"
    if program == "redis-server":
        return "redis"
    if "moto.server" in args:
        return "aws"
    if program == "mariadbd":
        return "mariadb"
    if program.startswith("php") and "-S" in args:
        return "wordpress"
    if "localstack.fake_provider" in args:
        return "llm"
    if "functions.serve" in args:
        return "api"
    if any(Path(arg).name in ("dramatiq", "dramatiq-gevent") for arg in args) and "-Q" in args:
        return args[args.index("-Q") + 1]
    return None


def stack_processes(stack_pid: int) -> tuple[dict[str, int], dict[int, int]]:
    """Each component's process (the supervisor's own child) and the pid -> ppid map it came from."""
    parents = _parent_map()
    found: dict[str, int] = {}
    for pid, ppid in parents.items():
        if ppid != stack_pid or not _alive(pid):
            continue
        name = _component_of(_cmdline(pid))
        if name is not None:
            found[name] = pid
    return found, parents


def descendants(pid: int, parents: dict[int, int] | None = None) -> set[int]:
    parents = parents if parents is not None else _parent_map()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


# ------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The devstack subprocess and where its parts listen."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    settings: Settings
    api: str
    aws: str
    wordpress: str
    wordpress_port: int
    db_port: int
    llm: str = ""
    seen_pids: set[int] = field(default_factory=set)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def stack_env(data_dir: Path, concurrency: str | None) -> dict[str, str]:
    """A clean environment (nothing of ours inherited) pointing the stack at free ports and ``data_dir``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "DRAMATIQ_", "PRESSLINE_", "HMAC_", "dramatiq_", "OTEL_", "LOKI_"))
    }
    env.update(
        PRESSLINE_DATA_DIR=str(data_dir),
        PRESSLINE_LOCAL_REDIS_PORT=str(free_port()),
        PRESSLINE_METRICS_PORT=str(free_port()),
        PRESSLINE_API_PORT=str(free_port()),
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        PRESSLINE_WORDPRESS="1",
        PRESSLINE_WORDPRESS_PORT=str(free_port()),
        PRESSLINE_WORDPRESS_DB_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    if concurrency:
        env["PRESSLINE_QUEUE_CONCURRENCY"] = concurrency
    return env


def start_stack(data_dir: Path, concurrency: str | None) -> Stack:
    """``python -m infra.devstack`` in its own session (as under a terminal), its output to a file."""
    env = stack_env(data_dir, concurrency)
    settings = Settings.from_env(env)
    log_path = data_dir / "stack.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.devstack"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Stack(
        process=process,
        data_dir=data_dir,
        log_path=log_path,
        env=env,
        settings=settings,
        api=f"http://127.0.0.1:{settings.api_port}",
        aws=str(settings.aws_endpoint_url),
        wordpress=f"http://127.0.0.1:{settings.wordpress_port}",
        wordpress_port=settings.wordpress_port,
        db_port=settings.wordpress_db_port,
    )


class StackFailed(RuntimeError):
    """The stack could not be started (the message carries its log's tail)."""


def wait_ready(stack: Stack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while READY_BANNER not in stack.output():
        if stack.process.poll() is not None:
            raise StackFailed(f"the stack exited with {stack.process.returncode}:\n{_tail(stack.output())}")
        if time.monotonic() > deadline:
            raise StackFailed(f"no ready banner within {timeout_s:.0f}s:\n{_tail(stack.output())}")
        time.sleep(0.2)
    found = re.search(r"llm providers\s+(http://\S+)", stack.output())
    if found is None:
        raise StackFailed("the ready report names no fake LLM provider (are PRESSLINE_*_BASE_URL set?)")
    stack.llm = found.group(1)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def stop_stack(stack: Stack) -> int | None:
    """Ctrl-C, as a terminal sends it; then whatever of ours is still alive is killed."""
    if stack.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.process.pid, signal.SIGINT)
        try:
            stack.process.wait(STACK_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"the stack did not stop within {STACK_STOP_TIMEOUT_S:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()
    for pid in stack.seen_pids:  # only processes the stack started (its command lines checked)
        if _alive(pid) and _component_of(_cmdline(pid)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return stack.process.returncode


class StackLog:
    """Follows the stack's output: which worker trees are ready, and every restart the supervisor did."""

    READY = "Worker process is ready for action."

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._offset = 0
        self._partial = b""
        self.ready_count: dict[str, int] = dict.fromkeys(QUEUES, 0)
        self.restarts: Counter[str] = Counter()
        self.exits: list[str] = []

    def poll(self, now_s: float) -> None:
        with self.stack.log_path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace")
            exited = re.match(r"^(\S+(?: endpoint)?) exited on its own \((code [^)]*)\)", line)
            if exited:
                name = exited.group(1)
                self.restarts[name] += 1
                self.exits.append(f"{now_s:.1f}s {name} {exited.group(2)}")
                if name in self.ready_count:
                    self.ready_count[name] = 0
                continue
            prefixed = re.match(r"^\s*(\S+) \| (.*)$", line)
            if prefixed and prefixed.group(1) in self.ready_count and self.READY in prefixed.group(2):
                self.ready_count[prefixed.group(1)] += 1


# ------------------------------------------------------------------------------------- health


@dataclass
class Sample:
    t: float
    up: dict[str, bool]
    pids: dict[str, int]
    queues: dict[str, dict[str, int]]


COMPONENTS: tuple[str, ...] = ("redis", "aws", "mariadb", "wordpress", "llm", "api", *QUEUES)


class Health:
    """Samples every component once a second (each check bounded, all in parallel)."""

    def __init__(self, stack: Stack, stack_log: StackLog, t0: Callable[[], float]) -> None:
        self.stack = stack
        self.stack_log = stack_log
        self.now = t0
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=httpx.Timeout(4.0, connect=2.0), trust_env=False)
        self._redis = redis.Redis(
            port=stack.settings.local_redis_port, socket_timeout=2.0, socket_connect_timeout=1.0
        )
        self._s3 = boto3.client(
            "s3",
            endpoint_url=stack.aws,
            region_name=stack.settings.aws_region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=BotoConfig(connect_timeout=2, read_timeout=3, retries={"max_attempts": 1}),
        )
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")
        self.expected_processes = {q: c.processes for q, c in stack.settings.concurrency.items()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def last(self) -> Sample | None:
        with self.lock:
            return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sample = self.sample()
                with self.lock:
                    self.samples.append(sample)
            except Exception as error:  # a sampler bug must not end the run; it shows in the log
                log(f"health sample failed: {type(error).__name__}: {error}")
            self._stop.wait(max(0.0, SAMPLE_INTERVAL_S - (time.monotonic() - started)))

    def _get_ok(self, url: str) -> bool:
        try:
            return self._http.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def _redis_ok(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def _aws_ok(self) -> bool:
        """Up and bootstrapped again: the payload bucket exists."""
        try:
            self._s3.head_bucket(Bucket=self.stack.settings.payload_bucket)
            return True
        except Exception:
            return False

    def _db_ok(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            return sock.connect_ex(("127.0.0.1", self.stack.db_port)) == 0

    def _queues(self) -> dict[str, dict[str, int]]:
        admin = QueueAdmin(self._redis, self.stack.settings.namespace)
        result = {}
        for queue in QUEUES:
            try:
                stats = admin.stats(queue)
            except redis.RedisError:
                continue
            result[queue] = {
                "backlog": stats.backlog,
                "pending": stats.pending,
                "delayed": stats.delayed,
                "dead": stats.dead,
            }
        return result

    def sample(self) -> Sample:
        t = self.now()
        checks = {
            "api": self._pool.submit(self._get_ok, f"{self.stack.api}/v1/openapi.json"),
            "redis": self._pool.submit(self._redis_ok),
            "aws": self._pool.submit(self._aws_ok),
            "llm": self._pool.submit(self._get_ok, f"{self.stack.llm}/_fake/state"),
            "wordpress": self._pool.submit(
                self._get_ok, f"{self.stack.wordpress}/wp-json/wp/v2/types/post?context=view"
            ),
            "mariadb": self._pool.submit(self._db_ok),
        }
        self.stack_log.poll(t)
        pids, parents = stack_processes(self.stack.process.pid)
        self.stack.seen_pids |= descendants(self.stack.process.pid, parents)
        up = {name: bool(future.result()) and name in pids for name, future in checks.items()}
        for queue in QUEUES:
            master = pids.get(queue)
            workers = [pid for pid in parents if parents[pid] == master and _alive(pid)] if master else []
            up[queue] = bool(
                master
                and workers
                and self.stack_log.ready_count[queue] >= self.expected_processes.get(queue, 1)
            )
        queues = self._queues() if up["redis"] else {}
        return Sample(t=round(t, 2), up=up, pids=pids, queues=queues)


# ------------------------------------------------------------------------------------- faults


@dataclass
class FaultRecord:
    fault: Fault
    started_s: float | None = None
    ended_s: float | None = None
    component: str | None = None
    pid_before: int | None = None
    signalled: list[int] = field(default_factory=list)
    error: str | None = None
    recovered_s: float | None = None
    recovery_s: float | None = None
    not_back: list[str] = field(default_factory=list)
    #: From the fault's end until the pipeline's queues held no more than before it (informative).
    backlog_cleared_s: float | None = None


class Faults:
    """Plays the schedule against the stack; a window's end is always applied, even on the way out."""

    def __init__(self, stack: Stack, t0: Callable[[], float]) -> None:
        self.stack = stack
        self.now = t0
        self.records: list[FaultRecord] = []
        self._stopped_groups: set[int] = set()
        self._llm_dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def play(self, faults: list[Fault]) -> threading.Thread:
        thread = threading.Thread(target=self._play, args=(faults,), name="faults", daemon=True)
        thread.start()
        return thread

    def abort(self) -> None:
        self._stop.set()
        self.release()

    def release(self) -> None:
        """SIGCONT whatever we stopped and clear the fake's state: never leave the stack frozen."""
        with self._lock:
            groups, self._stopped_groups = set(self._stopped_groups), set()
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)
        if self._llm_dirty:
            self._llm(lambda: self._set_llm(reset=True), patience_s=10.0)

    def _play(self, faults: list[Fault]) -> None:
        for fault in faults:
            while not self._stop.is_set() and self.now() < fault.at_s:
                self._stop.wait(min(0.2, fault.at_s - self.now()))
            if self._stop.is_set():
                return
            record = FaultRecord(fault)
            self.records.append(record)
            record.started_s = round(self.now(), 2)
            try:
                self._inject(record)
            except Exception as error:  # recorded: a fault that could not be injected is a finding
                record.error = f"{type(error).__name__}: {error}"
            record.ended_s = round(self.now(), 2)
            log(
                f"[{record.started_s:7.1f}s] fault {fault.label}"
                + (f" pid {record.signalled}" if record.signalled else "")
                + (f" for {fault.duration_s:.0f}s" if fault.duration_s else "")
                + (f" FAILED: {record.error}" if record.error else "")
            )

    def _inject(self, record: FaultRecord) -> None:
        fault = record.fault
        pids, parents = stack_processes(self.stack.process.pid)
        kind = fault.kind
        if kind == "kill_worker":
            record.component = fault.target
            master = pids.get(fault.target)
            if master is None:
                raise RuntimeError(f"no worker tree of queue {fault.target} runs")
            record.pid_before = master
            children = [pid for pid, ppid in parents.items() if ppid == master and _alive(pid)]
            if not children:
                raise RuntimeError(f"the {fault.target} tree has no worker process")
            # The worker process runs the actor threads; the other child (the metrics fork) has few.
            self._signal(record, max(children, key=_threads), signal.SIGKILL)
        elif kind in ("kill_api", "kill_llm", "kill_redis", "term_redis", "kill_aws", "kill_mariadb"):
            component = FAULT_KINDS[kind][0]
            assert component is not None
            record.component = component
            pid = pids.get(component)
            if pid is None:
                raise RuntimeError(f"no {component} process runs")
            record.pid_before = pid
            self._signal(record, pid, signal.SIGTERM if kind == "term_redis" else signal.SIGKILL)
        elif kind == "kill_wordpress":
            php = pids.get("wordpress")
            if php is None:
                raise RuntimeError("no php server runs")
            record.component, record.pid_before = "wordpress", php
            os.killpg(php, signal.SIGKILL)  # the server and its PHP_CLI_SERVER_WORKERS children
            record.signalled.append(php)
        elif kind in ("freeze_wordpress", "slow_wordpress"):
            php = pids.get("wordpress")
            if php is None:
                raise RuntimeError("no php server runs")
            self._stall_group(record, php, stopped_share=1.0 if kind == "freeze_wordpress" else 0.75)
        elif kind in ("llm_503", "llm_429", "llm_stall"):
            self._llm_window(record)
        else:
            raise ValueError(f"unknown fault {kind}")

    def _signal(self, record: FaultRecord, pid: int, sig: signal.Signals) -> None:
        os.kill(pid, sig)
        record.signalled.append(pid)

    def _stall_group(self, record: FaultRecord, group: int, *, stopped_share: float) -> None:
        """SIGSTOP the php server's process group (all its workers) for the window, or for
        ``stopped_share`` of each second of it; SIGCONT at the end whatever happens."""
        record.signalled.append(group)
        end = time.monotonic() + record.fault.duration_s
        try:
            while time.monotonic() < end and not self._stop.is_set():
                with self._lock:
                    self._stopped_groups.add(group)
                os.killpg(group, signal.SIGSTOP)
                if stopped_share >= 1.0:
                    self._stop.wait(max(0.0, end - time.monotonic()))
                    break
                self._stop.wait(min(stopped_share, max(0.0, end - time.monotonic())))
                os.killpg(group, signal.SIGCONT)
                self._stop.wait(min(1.0 - stopped_share, max(0.0, end - time.monotonic())))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)
            with self._lock:
                self._stopped_groups.discard(group)

    def _set_llm(self, **update: Any) -> None:
        httpx.post(
            f"{self.stack.llm}/_fake/state", json=update, timeout=5, trust_env=False
        ).raise_for_status()

    def _llm(self, action: Callable[[], None], patience_s: float) -> None:
        """Retry a control call while the fake restarts (a restarted fake has lost the state anyway)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                action()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _llm_window(self, record: FaultRecord) -> None:
        kind = record.fault.kind
        if kind == "llm_503":
            on: dict[str, Any] = {"down": dict.fromkeys(LLM_PROVIDERS, 503)}
            off: dict[str, Any] = {"down": dict.fromkeys(LLM_PROVIDERS)}
        else:
            scenario = "error=429;retry_after=1" if kind == "llm_429" else "stall_after=1;stall_ms=20000"
            on = {"scenario": dict.fromkeys(LLM_PROVIDERS, scenario)}
            off = {"scenario": dict.fromkeys(LLM_PROVIDERS)}
        self._llm_dirty = True
        self._llm(lambda: self._set_llm(**on), patience_s=10.0)
        try:
            self._stop.wait(record.fault.duration_s)
        finally:
            self._llm(lambda: self._set_llm(**off), patience_s=30.0)


PIPELINE_QUEUES = ("ingest", "infer", "post-process", "publish")


def _queued(sample: Sample) -> int | None:
    if not sample.queues:
        return None
    return sum(
        v["backlog"] + v["pending"] + v["delayed"] for q, v in sample.queues.items() if q in PIPELINE_QUEUES
    )


def derive_recovery(records: list[FaultRecord], samples: list[Sample], floor: int) -> None:
    """Each fault's recovery: from its end to the first sample in which every component is up, the
    one it killed running as a new process; not back within RECOVERY_LIMIT_S: who was still down.

    Also, for reading beside it, when the work the fault held up had drained (``backlog_cleared_s``,
    from its end): once the pipeline's queued messages rose above what they were in the 5 s before it
    (or ``floor``, what a steady load keeps queued anyway) before the next fault, the first sample
    after that back at or under it; 0 when they never rose."""
    for index, record in enumerate(records):
        if record.ended_s is None or record.started_s is None or record.error:
            continue
        window = [s for s in samples if record.ended_s <= s.t <= record.ended_s + RECOVERY_LIMIT_S]
        for sample in window:
            replaced = record.component is None or (
                sample.pids.get(record.component) not in (None, record.pid_before)
            )
            if replaced and all(sample.up.values()):
                record.recovered_s = sample.t
                record.recovery_s = round(sample.t - record.ended_s, 1)
                break
        else:
            if window:
                down: Counter[str] = Counter()
                for sample in window:
                    down.update(name for name, ok in sample.up.items() if not ok)
                record.not_back = sorted(name for name in down if down[name] == len(window)) or sorted(down)
        before = [
            q
            for s in samples
            if record.started_s - 5 <= s.t <= record.started_s and (q := _queued(s)) is not None
        ]
        limit = max([floor, *before])
        following = records[index + 1].started_s if index + 1 < len(records) else None
        rose = False
        record.backlog_cleared_s = 0.0
        for sample in samples:
            queued = _queued(sample)
            if sample.t < record.started_s or queued is None:
                continue
            if not rose:
                if following is not None and sample.t >= following:
                    break
                rose = queued > limit
                continue
            if queued <= limit:
                record.backlog_cleared_s = round(max(0.0, sample.t - record.ended_s), 1)
                break
        else:
            if rose:
                record.backlog_cleared_s = None  # never drained while sampled


# ------------------------------------------------------------------------------------- load


@dataclass
class Submission:
    """One send and its retries; ``job_id`` is set once a 202 came back (the job is accepted)."""

    index: int
    kind: str  # "api" | "webhook"
    key: str  # the Idempotency-Key, or the webhook id
    scheduled_s: float
    title: str
    sent_s: float | None = None
    attempts: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    accepted_s: float | None = None
    job_id: str | None = None
    outcome: str = "pending"  # accepted | refused | gave_up
    detail: str = ""

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["answers"] = dict(self.answers)
        return data


def webhook_job_id(site: str, msg_id: str) -> str:
    """The job id the API derives from a webhook (shared/api/intake.py), to look a job up after a
    409 for an event whose first answer was lost."""
    return "wh" + hashlib.sha256(f"{site}:{msg_id}".encode()).hexdigest()[:30]


class SiteSecret:
    """The site's webhook secret, read from Secrets Manager by the site's own secret name; read again
    after a 401 (rotated, or re-created after an endpoint restart)."""

    def __init__(self, stack: Stack) -> None:
        self.name = stack.settings.webhook_site_secret_pattern.replace("{site}", SITE)
        self._sm = boto3.client(
            "secretsmanager",
            endpoint_url=stack.aws,
            region_name=stack.settings.aws_region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=BotoConfig(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
        )
        self._lock = threading.Lock()
        self._value: str | None = None
        self._read_at = 0.0

    def get(self, *, fresh: bool = False) -> str:
        with self._lock:
            if self._value is None or (fresh and time.monotonic() - self._read_at > 2.0):
                self._read_at = time.monotonic()
                try:
                    value = self._sm.get_secret_value(SecretId=self.name)["SecretString"]
                except Exception as error:
                    self._value = None
                    raise SecretMissing(f"{self.name}: {type(error).__name__}: {error}") from None
                self._value = str(value).strip()
            return self._value


class SecretMissing(RuntimeError):
    """The site's webhook secret cannot be read (the endpoint is down, or it no longer has it)."""


class Load:
    """Sends at a fixed rate whatever the answers; each send and its retries run in their own thread."""

    def __init__(self, stack: Stack, token: str, args: argparse.Namespace, t0: Callable[[], float]) -> None:
        self.stack = stack
        self.token = token
        self.rate = float(args.rate)
        self.total = max(1, round(self.rate * args.load_s))
        self.load_s = float(args.load_s)
        self.patience_s = float(args.patience)
        self.webhook_share = float(args.webhook_share)
        self.now = t0
        self.run_id = args.run_id
        self.rng = random.Random(args.seed)
        self.secret = SiteSecret(stack)
        self.submissions: list[Submission] = []
        self._http = httpx.Client(
            timeout=httpx.Timeout(15.0, connect=3.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            trust_env=False,
        )
        workers = min(1000, math.ceil(self.rate * self.patience_s) + 32)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="send")
        self._lock = threading.Lock()

    def run(self) -> None:
        """Dispatch every send at its time (blocking until the last is dispatched), then wait for all."""
        for index in range(self.total):
            at = index / self.rate
            if at >= self.load_s:
                break
            delay = at - self.now()
            if delay > 0:
                time.sleep(delay)
            kind = "webhook" if self.rng.random() < self.webhook_share else "api"
            key = f"burn{self.run_id}n{index:06d}"
            title = f"Burn-in {self.run_id} job {index:06d}"
            submission = Submission(index, kind, key, round(at, 2), title)
            with self._lock:
                self.submissions.append(submission)
            self._pool.submit(self._send, submission)
        self._pool.shutdown(wait=True)

    def progress(self) -> Counter[str]:
        with self._lock:
            return Counter(s.outcome for s in self.submissions)

    def _send(self, submission: Submission) -> None:
        try:
            if submission.kind == "api":
                self._send_job(submission)
            else:
                self._send_webhook(submission)
        except Exception as error:  # a harness bug: recorded, never silent
            submission.outcome, submission.detail = (
                "gave_up",
                f"harness error {type(error).__name__}: {error}",
            )

    def _backoff(self, submission: Submission, retry_after: str | None = None) -> bool:
        """Sleep before the next try; False once the submission's patience is spent."""
        deadline = (submission.sent_s or 0.0) + self.patience_s
        delay = min(5.0, 0.5 * 2 ** min(submission.attempts - 1, 4)) * (0.5 + random.random() / 2)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(10.0, float(retry_after)))
        if self.now() + delay > deadline:
            submission.outcome = "gave_up"
            return False
        time.sleep(delay)
        return True

    def _accept(self, submission: Submission, job_id: str, how: str = "") -> None:
        submission.job_id = job_id
        submission.accepted_s = round(self.now(), 2)
        submission.outcome = "accepted"
        submission.detail = how

    def _send_job(self, submission: Submission) -> None:
        body = {
            "site": SITE,
            "input": {"title": submission.title, "source": SOURCE},
            "metadata": {"burn_in": self.run_id, "n": str(submission.index)},
        }
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": submission.key}
        submission.sent_s = round(self.now(), 2)
        while True:
            submission.attempts += 1
            try:
                response = self._http.post(f"{self.stack.api}/v1/jobs", json=body, headers=headers)
            except httpx.HTTPError as error:
                submission.answers[type(error).__name__] += 1
                submission.detail = type(error).__name__
                if not self._backoff(submission):
                    return
                continue
            code = _code(response)
            submission.answers[code] += 1
            if response.status_code == 202:
                self._accept(submission, str(response.json()["job_id"]))
                return
            submission.detail = f"{code}: {response.text[:300]}"
            if response.status_code in (409, 429) or response.status_code >= 500:
                if not self._backoff(submission, response.headers.get("retry-after")):
                    return
                continue
            submission.outcome = "refused"  # 4xx other than in-flight/rate-limited: a retry cannot help
            return

    def _send_webhook(self, submission: Submission) -> None:
        payload = {
            "type": GENERATE,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {"title": submission.title, "source": SOURCE},
        }
        raw = json.dumps(payload).encode()
        derived = webhook_job_id(SITE, submission.key)
        url = f"{self.stack.api}/v1/webhooks/wordpress/{SITE}"
        submission.sent_s = round(self.now(), 2)
        fresh = False
        while True:
            submission.attempts += 1
            try:
                secret = self.secret.get(fresh=fresh)
            except SecretMissing as error:
                submission.answers["secret_unreadable"] += 1
                submission.detail = str(error)[:300]
                if not self._backoff(submission):
                    return
                continue
            stamp = int(time.time())  # each try signed afresh, with the same webhook id
            headers = {
                "content-type": "application/json",
                "webhook-id": submission.key,
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(secret, submission.key, stamp, raw),
            }
            try:
                response = self._http.post(url, content=raw, headers=headers)
            except httpx.HTTPError as error:
                submission.answers[type(error).__name__] += 1
                submission.detail = type(error).__name__
                if not self._backoff(submission):
                    return
                continue
            code = _code(response)
            submission.answers[code] += 1
            if response.status_code == 202:
                self._accept(submission, str(response.json()["job_id"]))
                return
            submission.detail = f"{code}: {response.text[:300]}"
            if response.status_code == 409:
                # The event was claimed by a try whose answer we lost: did it make its job?
                if self._job_exists(derived):
                    self._accept(submission, derived, "409 replayed; its job exists")
                    return
                submission.detail = f"409 replayed, and job {derived} does not exist: {response.text[:200]}"
                if not self._backoff(submission):
                    return
                continue
            fresh = response.status_code == 401
            if response.status_code in (401, 429) or response.status_code >= 500:
                if not self._backoff(submission, response.headers.get("retry-after")):
                    return
                continue
            submission.outcome = "refused"
            return

    def _job_exists(self, job_id: str) -> bool:
        for _ in range(3):
            try:
                response = self._http.get(
                    f"{self.stack.api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {self.token}"}
                )
                if response.status_code == 200:
                    return True
                if response.status_code == 404:
                    return False
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        return False


def _code(response: httpx.Response) -> str:
    """The status with the error code of the body, e.g. ``409 request_in_progress``."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    code = error.get("code") if isinstance(error, dict) else None
    return f"{response.status_code} {code}" if code else str(response.status_code)


# ------------------------------------------------------------------------------------- accounting


def _redis(stack: Stack) -> redis.Redis:
    return redis.Redis(port=stack.settings.local_redis_port, socket_timeout=10.0, socket_connect_timeout=2.0)


#: A non-final job none of whose messages is anywhere (stream, pending, delayed, dead) this long can
#: never finish: the drain stops waiting for it (it is then counted as lost).
ORPHANED_FOR_S = 45.0


def drain(stack: Stack, job_ids: list[str], timeout_s: float, health: Health) -> tuple[float, int]:
    """Wait until every accepted job's record is final (or gone), bounded; (seconds, non-final left).

    Ends early when every job left has had no message anywhere for ORPHANED_FOR_S: nothing can
    finish those, so waiting out the timeout would only hide the finding behind a long run.
    """
    client = _redis(stack)
    settings = stack.settings
    store = JobStore(client, settings.namespace, settings.job_ttl_s)
    started = time.monotonic()
    left = list(job_ids)
    next_note = next_scan = started
    orphaned_since: dict[str, float] = {}
    while True:
        now = time.monotonic()
        try:
            with client.pipeline(transaction=False) as pipe:
                for job_id in left:
                    pipe.hget(store.key(job_id), "state")
                states = pipe.execute()
            left = [
                job_id
                for job_id, state in zip(left, states, strict=True)
                if state and state.decode() not in FINAL
            ]
            if left and now >= next_scan:
                next_scan = now + 5.0
                contents = queue_contents(client, settings.namespace, settings.consumer_dead_after_ms)
                somewhere = set(contents["held"]) | {
                    letter["job_id"] for letters in contents["dead"].values() for letter in letters
                }
                orphaned_since = {job: orphaned_since.get(job, now) for job in left if job not in somewhere}
        except redis.RedisError as error:
            log(f"drain: Redis: {error}")
        elapsed = now - started
        if not left or elapsed > timeout_s:
            return round(elapsed, 1), len(left)
        if all(job in orphaned_since and now - orphaned_since[job] >= ORPHANED_FOR_S for job in left):
            log(f"drain: the {len(left)} jobs left have had no message anywhere for {ORPHANED_FOR_S:.0f}s")
            return round(elapsed, 1), len(left)
        if now >= next_note:
            sample = health.last()
            down = [name for name, ok in sample.up.items() if not ok] if sample else []
            log(
                f"drain: {len(left)} jobs not final after {elapsed:.0f}s"
                + (f" ({len(orphaned_since)} with no message anywhere)" if orphaned_since else "")
                + (f"; down: {down}" if down else "")
            )
            next_note += 15
        time.sleep(1.0)


def _job_of(message: dict[str, Any]) -> str | None:
    options = message.get("options") or {}
    job_id = options.get("job_id") if isinstance(options, dict) else None
    return str(job_id) if job_id else None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def queue_contents(client: redis.Redis, namespace: str, dead_after_ms: int) -> dict[str, Any]:
    """Where each job still has a message (undelivered, pending, delayed), each queue's dead letters,
    and the pending entries idle longer than the dead-consumer window."""
    held: dict[str, list[str]] = defaultdict(list)
    dead: dict[str, list[dict[str, Any]]] = {}
    stale: dict[str, list[dict[str, Any]]] = {}
    for queue in QUEUES:
        keys = QueueKeys(namespace, queue)
        groups: list[dict[str, Any]] = client.xinfo_groups(keys.stream) if client.exists(keys.stream) else []
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        last = group["last-delivered-id"] if group else b"0-0"
        last_text = last.decode() if isinstance(last, bytes) else str(last)
        ms, seq = last_text.split("-")
        for _, fields in cast(list[Any], client.xrange(keys.stream, min=f"{ms}-{int(seq) + 1}", max="+")):
            job = _job_of(_decode(fields.get(b"m", b"{}")))
            if job:
                held[job].append(f"{queue}:undelivered")
        if group:
            pending = cast(
                list[dict[str, Any]],
                client.xpending_range(keys.stream, GROUP, min="-", max="+", count=100_000),
            )
            for entry in pending:
                entry_id = entry["message_id"]
                found = cast(list[Any], client.xrange(keys.stream, min=entry_id, max=entry_id))
                job = _job_of(_decode(found[0][1].get(b"m", b"{}"))) if found else None
                if job:
                    held[job].append(f"{queue}:pending")
                idle_ms = int(entry["time_since_delivered"])
                if idle_ms >= dead_after_ms:
                    consumer = entry["consumer"]
                    stale.setdefault(queue, []).append(
                        {
                            "entry": entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
                            "consumer": consumer.decode() if isinstance(consumer, bytes) else str(consumer),
                            "idle_ms": idle_ms,
                            "deliveries": int(entry["times_delivered"]),
                            "job_id": job,
                        }
                    )
        for member in cast(list[bytes], client.zrange(keys.delayed, 0, -1)):
            job = _job_of(_decode(member))
            if job:
                held[job].append(f"{queue}:delayed")
        letters = []
        for entry_id, fields in cast(list[Any], client.xrange(keys.dead)):
            message = _decode(fields.get(b"m", b"{}"))
            letters.append(
                {
                    "entry": entry_id.decode(),
                    "job_id": _job_of(message),
                    "actor": message.get("actor_name"),
                    "error": fields.get(b"error", b"").decode(errors="replace"),
                    "attempts": int(fields.get(b"attempts", 0)),
                }
            )
        if letters:
            dead[queue] = letters
    return {"held": dict(held), "dead": dead, "stale_pending": stale}


def wordpress_posts(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every post of the instance by its Pressline reference, asked as the administrator (the
    credentials the stack wrote), page by page."""
    creds = json.loads((stack.data_dir / "wordpress" / "credentials.json").read_text())
    admin = creds["users"]["admin"]
    auth = (admin["username"], admin["app_password"])
    by_ref: dict[str, list[dict[str, Any]]] = defaultdict(list)
    page, pages = 1, 1
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        while page <= pages:
            for attempt in range(5):
                try:
                    response = http.get(
                        f"{stack.wordpress}/wp-json/wp/v2/posts",
                        params={
                            "status": "any",
                            "context": "edit",
                            "per_page": 100,
                            "page": page,
                            "orderby": "id",
                            "order": "asc",
                            "_fields": "id,status,meta",
                        },
                        auth=auth,
                    )
                    response.raise_for_status()
                    break
                except httpx.HTTPError:
                    if attempt == 4:
                        raise
                    time.sleep(2.0)
            pages = int(response.headers.get("x-wp-totalpages", "1"))
            for post in response.json():
                ref = (post.get("meta") or {}).get("pressline_external_ref") or ""
                by_ref[ref].append({"id": post["id"], "status": post["status"]})
            page += 1
    return dict(by_ref)


def classify(record: JobRecord | None, held: list[str], dead: list[str]) -> tuple[str, str]:
    """(category, why) of one accepted job."""
    if record is None:
        return "lost", "no job record"
    if record.state is JobState.SUCCEEDED:
        return "succeeded", ""
    if record.state is JobState.FAILED:
        error = record.last_error or ""
        return ("failed_permanent" if error.startswith("PermanentError") else "failed_other"), error
    where = held + [f"{queue}:dead" for queue in dead]
    if where:
        return "stuck", f"{record.state.value} at {record.stage}; message in {', '.join(where)}"
    return "lost", f"{record.state.value} at {record.stage}; no message in any queue or dead-letter stream"


def account(stack: Stack, submissions: list[Submission]) -> dict[str, Any]:
    """Every accepted job: final state, dead letters, posts per reference, held messages, cost."""
    client = _redis(stack)
    settings = stack.settings
    store = JobStore(client, settings.namespace, settings.job_ttl_s)
    contents = queue_contents(client, settings.namespace, settings.consumer_dead_after_ms)
    dead_by_job: dict[str, list[str]] = defaultdict(list)
    for queue, letters in contents["dead"].items():
        for letter in letters:
            if letter["job_id"]:
                dead_by_job[letter["job_id"]].append(queue)
    posts = wordpress_posts(stack)
    accepted = [s for s in submissions if s.job_id]
    accepted_ids = {s.job_id for s in accepted}
    categories: Counter[str] = Counter()
    jobs_out: list[dict[str, Any]] = []
    costs: dict[str, int] = {}  # of the succeeded jobs
    total_cost = 0
    duplicates: list[dict[str, Any]] = []
    missing_posts: list[str] = []
    for submission in accepted:
        job_id = str(submission.job_id)
        record = store.get(job_id)
        category, why = classify(record, contents["held"].get(job_id, []), dead_by_job.get(job_id, []))
        categories[category] += 1
        job_posts = posts.get(job_id, [])
        if len(job_posts) > 1:
            duplicates.append({"job_id": job_id, "posts": job_posts})
        if category == "succeeded" and not job_posts:
            missing_posts.append(job_id)
        if record is not None and category == "succeeded":
            costs[job_id] = record.cost_pico_usd
        total_cost += record.cost_pico_usd if record is not None else 0
        if category != "succeeded":
            jobs_out.append(
                {
                    "job_id": job_id,
                    "submission": submission.index,
                    "kind": submission.kind,
                    "category": category,
                    "why": why,
                    "record": None
                    if record is None
                    else {
                        "state": record.state.value,
                        "stage": record.stage,
                        "attempts": record.attempts,
                        "last_error": record.last_error,
                        "updated_at_ms": record.updated_at_ms,
                    },
                    "accepted_s": submission.accepted_s,
                    "stages": [
                        {
                            "name": st.name,
                            "state": st.state.value,
                            "attempts": st.attempts,
                            "error": st.last_error,
                        }
                        for st in (record.stages if record else ())
                    ],
                    "posts": job_posts,
                }
            )
    # A post whose reference is no accepted job: a job that ran for a send never accepted, or a second
    # job made for one send (its first answer lost, the retry creating another): that one is a
    # duplicate post. The job's archived input names the send.
    orphans: list[dict[str, Any]] = []
    by_index = {s.index: s for s in submissions}
    for ref, found in posts.items():
        if not ref or ref in accepted_ids:
            continue
        record = store.get(ref)
        index = _submission_of(stack, record)
        sent = by_index.get(index) if index is not None else None
        orphans.append(
            {
                "ref": ref,
                "posts": found,
                "job_state": record.state.value if record else None,
                "submission": index,
                "submission_job_id": sent.job_id if sent else None,
                "submission_answers": dict(sent.answers) if sent else None,
                "duplicate": bool(sent and sent.job_id and sent.job_id != ref),
            }
        )
    unreferenced = posts.get("", [])
    succeeded_costs = list(costs.values())
    mode = Counter(succeeded_costs).most_common(1)[0][0] if succeeded_costs else 0
    dead_reasons = {
        queue: Counter(_reason(letter["error"]) for letter in letters).most_common()
        for queue, letters in contents["dead"].items()
    }
    return {
        "accepted": len(accepted),
        "categories": dict(categories),
        "jobs_not_succeeded": jobs_out,
        "dead_letters": {queue: len(letters) for queue, letters in contents["dead"].items()},
        "dead_letter_reasons": dead_reasons,
        "dead_letter_entries": contents["dead"],
        "duplicate_posts": sum(len(d["posts"]) - 1 for d in duplicates)
        + sum(len(o["posts"]) for o in orphans if o["duplicate"]),
        "duplicates": duplicates,
        "succeeded_without_post": missing_posts,
        "posts_total": sum(len(found) for found in posts.values()),
        "posts_without_accepted_job": orphans,
        "posts_without_ref": unreferenced,
        "stale_pending": contents["stale_pending"],
        "still_held": {job: where for job, where in contents["held"].items()},
        "cost": {
            "total_pico_usd": total_cost,
            "succeeded_modal_pico_usd": mode,
            "succeeded_zero_cost": sum(1 for c in succeeded_costs if c == 0),
            "succeeded_above_mode": sum(1 for c in succeeded_costs if c > mode),
            "succeeded_below_mode": sum(1 for c in succeeded_costs if 0 < c < mode),
            "median_pico_usd": int(statistics.median(succeeded_costs)) if succeeded_costs else 0,
            "max_pico_usd": max(succeeded_costs, default=0),
        },
    }


def _submission_of(stack: Stack, record: JobRecord | None) -> int | None:
    """Which send a job was made for, from its archived input's title (``... job NNNNNN``)."""
    if record is None or not record.input_ref or not record.input_ref.startswith("s3://"):
        return None
    bucket, _, key = record.input_ref[len("s3://") :].partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.aws,
        region_name=stack.settings.aws_region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=BotoConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 3}),
    )
    try:
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode(errors="replace")
    except Exception:  # gone with an endpoint restart: the post stays unattributed
        return None
    found = re.search(r"Burn-in \d+ job (\d{6})", text)
    return int(found.group(1)) if found else None


def _reason(error: str) -> str:
    """A dead letter's error without its ids, so equal reasons group."""
    text = re.sub(r"[0-9a-f]{16,}", "<id>", error)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


# ------------------------------------------------------------------------------------- report


def evaluate(accounting: dict[str, Any], faults: list[FaultRecord]) -> dict[str, dict[str, Any]]:
    """Each target: its value, what it must be, and whether it holds."""
    cats = accounting["categories"]
    accepted = accounting["accepted"]
    permanent = cats.get("failed_permanent", 0)
    eligible = accepted - permanent
    ratio = cats.get("succeeded", 0) / eligible if eligible else 1.0
    recoveries = [f.recovery_s for f in faults]
    worst = max((r for r in recoveries if r is not None), default=0.0)
    not_back = [f.fault.label for f in faults if f.recovery_s is None]
    return {
        "accepted": {"value": accepted, "target": "> 0", "ok": accepted > 0},
        "succeeded_excluding_permanent": {
            "value": round(ratio, 5),
            "target": f">= {TARGET_SUCCESS}",
            "ok": ratio >= TARGET_SUCCESS,
        },
        "lost": {"value": cats.get("lost", 0), "target": "0", "ok": cats.get("lost", 0) == 0},
        "stuck": {"value": cats.get("stuck", 0), "target": "0", "ok": cats.get("stuck", 0) == 0},
        "duplicate_posts": {
            "value": accounting["duplicate_posts"],
            "target": "0",
            "ok": accounting["duplicate_posts"] == 0,
        },
        "faults_recovered": {"value": not_back, "target": "every fault", "ok": not not_back},
        "max_recovery_s": {
            "value": worst,
            "target": f"<= {TARGET_RECOVERY_S:.0f}",
            "ok": worst <= TARGET_RECOVERY_S and not not_back,
        },
    }


def table(result: dict[str, Any]) -> str:
    acc = result["accounting"]
    cats = acc["categories"]
    sub = result["submissions"]
    targets = result["targets"]
    accepted = acc["accepted"]
    eligible = accepted - cats.get("failed_permanent", 0)
    pct = 100.0 * cats.get("succeeded", 0) / eligible if eligible else 100.0
    mark = {name: ("ok" if t["ok"] else "FAIL") for name, t in targets.items()}
    stale = sum(len(v) for v in acc["stale_pending"].values())
    cost = acc["cost"]
    lines = [
        f"burn-in {result['run']['mode']}: {result['run']['load_s']:.0f}s of load at "
        f"{result['run']['rate']}/s, {len(result['faults'])} faults, drain {result['drain_s']:.0f}s",
        "",
        f"  {'submitted':<34}{sub['total']:>10}   (webhooks {sub['webhooks']})",
        f"  {'accepted (a 202 came back)':<34}{accepted:>10}   {mark['accepted']}",
        f"  {'never accepted':<34}{sub['not_accepted']:>10}   {sub['not_accepted_why']}",
        f"  {'succeeded (excl. permanent)':<34}{pct:>9.2f}%   {mark['succeeded_excluding_permanent']} "
        f"(target >= {100 * TARGET_SUCCESS:.1f}%)",
        f"  {'failed, permanent error':<34}{cats.get('failed_permanent', 0):>10}",
        f"  {'failed, other':<34}{cats.get('failed_other', 0):>10}",
        f"  {'stuck (not final)':<34}{cats.get('stuck', 0):>10}   {mark['stuck']}",
        f"  {'lost':<34}{cats.get('lost', 0):>10}   {mark['lost']}",
        f"  {'duplicate posts':<34}{acc['duplicate_posts']:>10}   {mark['duplicate_posts']}",
        f"  {'succeeded without a post':<34}{len(acc['succeeded_without_post']):>10}",
        f"  {'posts of no accepted job':<34}{len(acc['posts_without_accepted_job']):>10}   "
        f"({sum(1 for o in acc['posts_without_accepted_job'] if o['duplicate'])} a send's second job)",
        f"  {'pending past dead-consumer window':<34}{stale:>10}",
        f"  {'dead letters':<34}{sum(acc['dead_letters'].values()):>10}   {acc['dead_letters'] or ''}",
        f"  {'cost, total / modal per job':<34}{cost['total_pico_usd'] / 1e12:>10.6f}   "
        f"${cost['succeeded_modal_pico_usd'] / 1e12:.8f}; {cost['succeeded_above_mode']} above, "
        f"{cost['succeeded_zero_cost']} at zero",
        "",
        f"  {'max recovery per fault kind':<34}{'s':>10}   ({mark['max_recovery_s']}: every one <= "
        f"{TARGET_RECOVERY_S:.0f}s)",
    ]
    for kind, worst in result["max_recovery_by_kind"].items():
        lines.append(f"    {kind:<32}{'not back' if worst is None else f'{worst:.1f}':>10}")
    lines += ["", "  fault timeline (s from the load's start)"]
    for fault in result["faults"]:
        spec = fault["fault"]
        what = spec["kind"] + (f":{spec['target']}" if spec["target"] else "")
        took = (
            "error: " + fault["error"]
            if fault["error"]
            else (
                f"back after {fault['recovery_s']:.1f}s, queues drained after "
                + ("-" if fault["backlog_cleared_s"] is None else f"{fault['backlog_cleared_s']:.1f}s")
                if fault["recovery_s"] is not None
                else f"NOT back (down: {', '.join(fault['not_back'])})"
            )
        )
        window = f"-{fault['ended_s']:.0f}" if spec["duration_s"] else ""
        lines.append(f"    {fault['started_s']:>7.1f}{window:<6} {what:<24} pid {fault['signalled']}  {took}")
    if acc["dead_letter_reasons"]:
        lines += ["", "  dead-letter reasons"]
        for queue, reasons in acc["dead_letter_reasons"].items():
            for reason, count in reasons:
                lines.append(f"    {queue:<13}{count:>5}  {reason}")
    for dup in acc["duplicates"][:10]:
        lines.append(f"  duplicate: job {dup['job_id']} has posts {[p['id'] for p in dup['posts']]}")
    for orphan in acc["posts_without_accepted_job"][:10]:
        lines.append(
            f"  post {[p['id'] for p in orphan['posts']]} of job {orphan['ref']} ({orphan['job_state']}): "
            + (
                f"a second job of send #{orphan['submission']}, accepted as {orphan['submission_job_id']} "
                f"after {orphan['submission_answers']}"
                if orphan["duplicate"]
                else f"send #{orphan['submission']} (never accepted)"
            )
        )
    not_ok = acc["jobs_not_succeeded"]
    if not_ok:
        lines += ["", f"  accepted jobs that did not succeed ({len(not_ok)}; first 15)"]
        for job in not_ok[:15]:
            lines.append(
                f"    {job['job_id']} #{job['submission']} {job['kind']:<7} {job['category']:<16} "
                f"{job['why'][:110]}"
            )
    lines += [
        "",
        "  restarts the supervisor logged: "
        + (", ".join(f"{k} {v}" for k, v in result["restarts"].items()) or "none"),
    ]
    lines.append(
        "  result: "
        + (
            "targets met"
            if result["ok"]
            else "TARGETS FAILED: " + ", ".join(name for name, t in targets.items() if not t["ok"])
        )
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burn_in",
        description="The make run stack under load and faults, then an account of every accepted job.",
    )
    parser.add_argument("--short", action="store_true", help="about 3 minutes: 75 s of load, four faults")
    parser.add_argument("--minutes", type=float, help="minutes of load (default 30; --short: 1.25)")
    parser.add_argument("--rate", type=float, help="submissions per second (default 1.5; --short: 1.0)")
    parser.add_argument("--webhook-share", type=float, default=0.1, help="share of webhook events (0.1)")
    parser.add_argument("--no-faults", action="store_true", help="the load alone (a baseline)")
    parser.add_argument("--patience", type=float, help="seconds a submission is retried (180; --short: 90)")
    parser.add_argument(
        "--drain-timeout", type=float, help="seconds to wait for final states (600; --short: 240)"
    )
    parser.add_argument("--concurrency", help="PRESSLINE_QUEUE_CONCURRENCY for the stack (default: its own)")
    parser.add_argument("--seed", type=int, default=15, help="seeds which submissions are webhooks")
    parser.add_argument("--keep-data", action="store_true", help="keep the data dir even when targets hold")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    short = bool(args.short)
    args.minutes = args.minutes if args.minutes is not None else (1.25 if short else 30.0)
    args.rate = args.rate if args.rate is not None else (1.0 if short else 1.5)
    args.patience = args.patience if args.patience is not None else (90.0 if short else 180.0)
    args.drain_timeout = args.drain_timeout if args.drain_timeout is not None else (240.0 if short else 600.0)
    args.load_s = args.minutes * 60.0
    args.run_id = datetime.now().strftime("%H%M%S")
    if args.rate <= 0 or args.load_s <= 0:
        parser.error("--rate and --minutes must be positive")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole burn-in; the result (also written as JSON). Raises StackFailed when the stack never ran."""
    faults = [] if args.no_faults else schedule(args.load_s, short=args.short)
    data_dir = Path(tempfile.mkdtemp(prefix="pressline-burn-in-"))
    log(f"burn-in: stack data in {data_dir}; {len(faults)} faults over {args.load_s:.0f}s at {args.rate}/s")
    stack = start_stack(data_dir, args.concurrency)
    health: Health | None = None
    injector: Faults | None = None
    result: dict[str, Any] = {}
    began = time.monotonic()
    try:
        wait_ready(stack, STACK_READY_TIMEOUT_S)
        log(
            f"burn-in: stack ready after {time.monotonic() - began:.0f}s "
            f"(api {stack.api}, wordpress {stack.wordpress})"
        )
        token = TokenStore(_redis(stack), stack.settings.namespace).mint(TENANT, "editor", name="burn-in")[0]
        start = time.monotonic()

        def t0() -> float:
            return time.monotonic() - start

        stack_log = StackLog(stack)
        health = Health(stack, stack_log, t0)
        health.start()
        injector = Faults(stack, t0)
        fault_thread = injector.play(faults)
        load = Load(stack, token, args, t0)
        reporter = threading.Thread(
            target=_report_progress, args=(load, health, t0, args.load_s), daemon=True
        )
        reporter.start()
        load.run()
        fault_thread.join(
            timeout=max(0.0, faults[-1].at_s + faults[-1].duration_s + 60 - t0()) if faults else 0
        )
        injector.abort()  # nothing may stay frozen or failing while we drain
        accepted_ids = [str(s.job_id) for s in load.submissions if s.job_id]
        log(f"burn-in: load done at {t0():.0f}s; draining {len(accepted_ids)} accepted jobs")
        drain_s, left = drain(stack, accepted_ids, args.drain_timeout, health)
        log(f"burn-in: drain took {drain_s:.0f}s, {left} jobs not final")
        time.sleep(2 * SAMPLE_INTERVAL_S)  # the last samples after the drain
        health.stop()
        derive_recovery(injector.records, health.samples, floor=math.ceil(3 * args.rate) + 2)
        accounting = account(stack, load.submissions)
        targets = evaluate(accounting, injector.records)
        result = _result(args, stack, load, injector, health, stack_log, accounting, targets, drain_s)
    finally:
        if injector is not None:
            injector.abort()
        if health is not None:
            health.stop()
        code = stop_stack(stack)
        log(f"burn-in: stack stopped (exit {code})")
        ok = bool(result.get("ok"))
        _cleanup(stack, keep=args.keep_data or not ok)
        if result:
            result["stack_exit"] = code
            result["data_dir"] = str(data_dir) if (args.keep_data or not ok) else None
    return result


def _report_progress(load: Load, health: Health, t0: Callable[[], float], load_s: float) -> None:
    while t0() < load_s + 5:
        time.sleep(15)
        sample = health.last()
        down = [name for name, ok in sample.up.items() if not ok] if sample else []
        backlog = {
            q: v["backlog"] + v["pending"] + v["delayed"]
            for q, v in (sample.queues if sample else {}).items()
        }
        log(
            f"[{t0():7.1f}s] sends {dict(load.progress())} queued {backlog}"
            + (f" down {down}" if down else "")
        )


def _result(
    args: argparse.Namespace,
    stack: Stack,
    load: Load,
    injector: Faults,
    health: Health,
    stack_log: StackLog,
    accounting: dict[str, Any],
    targets: dict[str, dict[str, Any]],
    drain_s: float,
) -> dict[str, Any]:
    by_kind: dict[str, float | None] = {}
    for record in injector.records:
        label = record.fault.label
        if record.recovery_s is None or (label in by_kind and by_kind[label] is None):
            by_kind[label] = None
        else:
            by_kind[label] = max(by_kind.get(label) or 0.0, record.recovery_s)
    not_accepted = [s for s in load.submissions if not s.job_id]
    why = Counter(f"{s.kind} {s.outcome}: {s.detail[:80]}" for s in not_accepted)
    answers: Counter[str] = Counter()
    for submission in load.submissions:
        answers.update(submission.answers)
    return {
        "run": {
            "mode": "short" if args.short else "full",
            "load_s": args.load_s,
            "rate": args.rate,
            "webhook_share": args.webhook_share,
            "seed": args.seed,
            "patience_s": args.patience,
            "drain_timeout_s": args.drain_timeout,
            "concurrency": args.concurrency or "the stack's default",
            "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "at": datetime.now(UTC).isoformat(),
        },
        "ok": all(t["ok"] for t in targets.values()),
        "targets": targets,
        "drain_s": drain_s,
        "submissions": {
            "total": len(load.submissions),
            "webhooks": sum(1 for s in load.submissions if s.kind == "webhook"),
            "accepted": sum(1 for s in load.submissions if s.job_id),
            "not_accepted": len(not_accepted),
            "not_accepted_why": dict(why.most_common(5)),
            "answers": dict(answers.most_common()),
            "retried": sum(1 for s in load.submissions if s.attempts > 1),
            "not_accepted_detail": [s.summary() for s in not_accepted],
            "retried_detail": [s.summary() for s in load.submissions if s.attempts > 1],
        },
        "accounting": accounting,
        "faults": [asdict(record) for record in injector.records],
        "max_recovery_by_kind": by_kind,
        "restarts": dict(stack_log.restarts),
        "exits": stack_log.exits,
        "samples": [asdict(sample) for sample in health.samples],
    }


def _cleanup(stack: Stack, *, keep: bool) -> None:
    """Drop our /etc/wordpress link (named after this data dir), and the data dir unless kept."""
    from infra.wordpress import WordPressConfig, purge

    cfg = WordPressConfig(root=stack.data_dir / "wordpress", port=stack.wordpress_port, db_port=stack.db_port)
    if keep:
        with contextlib.suppress(OSError):
            if cfg.config_link.is_symlink() and Path(os.readlink(cfg.config_link)) == cfg.path("config.php"):
                cfg.config_link.unlink()
        log(f"burn-in: kept {stack.data_dir} (the stack's log is stack.log)")
        return
    try:
        purge(cfg, say=lambda _: None)
    except Exception as error:  # the data is only scratch; say so and go on
        log(f"burn-in: could not purge the WordPress instance: {error}")
    shutil.rmtree(stack.data_dir, ignore_errors=True)


def write_result(result: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"burn_in-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except StackFailed as error:
        log(f"burn-in: the stack did not run: {error}")
        return 2
    print(table(result))
    out = write_result(result, args.results)
    log(f"wrote {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
