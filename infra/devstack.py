"""``make run``: the whole local stack in the foreground; Ctrl-C or SIGTERM stops all of it.

A process that dies on its own (a queue's worker tree, the API, the fake LLM, Redis, the AWS
endpoint, WordPress's) is started again with backoff while the rest go on serving; an endpoint
that comes back is bootstrapped again, since an emulator keeps nothing across a restart.

Start order: Redis (owned, unless ``DRAMATIQ_BROKER_URL`` is set) -> the AWS endpoint (moto's server
unless an emulator already answers there) -> the bootstrap from ``localstack/`` -> one Dramatiq
process tree per queue. Stop order is the reverse, so workers drain while Redis and the endpoint are
still up. A second Ctrl-C kills whatever is still running.

Why the process groups matter: a terminal sends Ctrl-C to its whole foreground process group.
Every child (worker trees, Redis, moto) therefore runs in its own session, so only this
supervisor hears Ctrl-C, and it stops the children in order.

A Redis already listening on the owned port is accepted only when its data dir is ours, i.e. it
is left over from a run that was SIGKILLed: it is shut down (``SHUTDOWN`` fsyncs the AOF) and
started again under this supervisor. Any other Redis there is an error, since the stack must
own its broker.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import redis

from infra.redis_server import free_port, start_redis
from localstack.bootstrap import bootstrap, restore_secrets, saved_secrets
from localstack.endpoint import EDGE_PORT, Endpoint, ensure_endpoint, probe
from localstack.fake_provider import provider_env
from shared.aws import LOCAL_CREDENTIALS, is_local_endpoint
from shared.config import QUEUES, QueueConcurrency, Settings
from shared.egress import AllowRule, format_allow_list

ROOT = Path(__file__).resolve().parents[1]
#: Logged by every Dramatiq worker process once its threads consume (dramatiq/cli.py).
WORKER_READY = "Worker process is ready for action."
WORKER_BOOT_TIMEOUT_S = 90.0
#: Time a child gets after SIGTERM (workers: on top of the drain timeout) before SIGKILL.
STOP_GRACE_S = 10.0
#: After a second Ctrl-C: the children being waited for are killed at once; later tiers (the endpoint,
#: Redis) still get SIGTERM but only this long, so Redis can flush its AOF.
FORCED_GRACE_S = 2.0
READY_BANNER = "Pressline local stack is ready"
#: The first restart of a dead child waits this long, each further one twice as long, up to the max;
#: a child that has run RESTART_RESET_S since its last start begins again from the first delay.
RESTART_DELAY_S = 0.5
RESTART_MAX_DELAY_S = 10.0
RESTART_RESET_S = 60.0


class StackError(RuntimeError):
    """The stack cannot start; the message says why and what to do about it."""


@dataclass
class Child:
    """A process the stack owns. ``own_group``: it leads its own process group (a worker tree)."""

    name: str
    process: subprocess.Popen[bytes]
    stop_timeout_s: float
    own_group: bool = False
    ready_lines_needed: int = 0
    ready_lines_seen: int = 0
    ready_marker: str = WORKER_READY
    log_thread: threading.Thread | None = field(default=None, repr=False)
    #: Starts it again after it died; None: its death stops the whole stack.
    restart: Callable[[], subprocess.Popen[bytes]] | None = field(default=None, repr=False)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0

    def restart_delay(self, now: float) -> float:
        """The backoff before the next restart (and count it)."""
        if now - self.started_at >= RESTART_RESET_S:
            self.restarts = 0
        delay = min(RESTART_MAX_DELAY_S, RESTART_DELAY_S * 2**self.restarts)
        self.restarts += 1
        return delay

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ready(self) -> bool:
        return self.ready_lines_seen >= self.ready_lines_needed

    def send(self, sig: signal.Signals) -> None:
        """SIGTERM goes to the leader (Dramatiq's master forwards it once); SIGKILL to the whole group."""
        try:
            if self.own_group and sig == signal.SIGKILL:
                os.killpg(self.pid, sig)
            elif self.process.poll() is None:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass


def _kill_me_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child if this supervisor dies (e.g. SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


class Supervisor:
    """Owns the stack's processes: starts them in tiers, stops the tiers newest first."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._tiers: list[list[Child]] = []
        self._preexec = _kill_me_with_parent()
        # Plain attributes, not Events: signal handlers must not take locks the main thread may hold.
        self.stop_signal: int | None = None
        self.forced = False

    def say(self, text: str = "") -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        else:
            self.forced = True

    @property
    def children(self) -> list[Child]:
        return [child for tier in self._tiers for child in tier]

    def new_tier(self) -> None:
        """Children added from now on are stopped together, before those of earlier tiers."""
        self._tiers.append([])

    def add(self, child: Child) -> Child:
        self._tiers[-1].append(child)
        return child

    def spawn(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        stop_timeout_s: float,
        ready_lines: int = 0,
        ready_marker: str = WORKER_READY,
        cwd: Path = ROOT,
    ) -> Child:
        """Start ``args`` in a new session, its output prefixed with ``name`` on our stdout; started
        again the same way if it dies.

        It is ready once ``ready_lines`` lines containing ``ready_marker`` have been seen.
        """

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._preexec,  # takes no locks, so it is safe alongside our log threads
            )

        child = self.add(
            Child(
                name,
                start(),
                stop_timeout_s,
                own_group=True,
                ready_lines_needed=ready_lines,
                ready_marker=ready_marker,
                restart=start,
            )
        )
        self._follow(child)
        return child

    def _follow(self, child: Child) -> None:
        """Forward the output of the child's current process, if we read it."""
        if child.process.stdout is None:
            return
        child.log_thread = threading.Thread(target=self._forward, args=(child,), name=child.name, daemon=True)
        child.log_thread.start()

    def _forward(self, child: Child) -> None:
        stdout = child.process.stdout
        assert stdout is not None
        for raw in stdout:
            line = raw.decode(errors="replace").rstrip()
            if child.ready_marker in line:
                child.ready_lines_seen += 1
            self.say(f"{child.name:>14} | {line}")

    def wait_ready(self, children: list[Child], timeout_s: float) -> bool:
        """Wait until every child has logged its ready lines; False if asked to stop meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not all(child.ready for child in children):
            if self.stop_signal is not None:
                return False
            for child in children:
                if child.process.poll() is not None:
                    raise StackError(
                        f"{child.name} exited with code {child.process.returncode} while starting"
                    )
            if time.monotonic() > deadline:
                late = ", ".join(child.name for child in children if not child.ready)
                raise StackError(f"not ready after {timeout_s:.0f}s: {late}")
            time.sleep(0.1)
        return True

    def watch(self) -> Child | None:
        """Block until a stop signal (None). A child that exits on its own is started again after
        its backoff, the others serving meanwhile; one that cannot be restarted is returned."""
        due: dict[int, float] = {}  # id(child) -> when it is started again
        while self.stop_signal is None:
            now = time.monotonic()
            for child in self.children:
                if child.process.poll() is None:
                    continue
                if child.restart is None:
                    return child
                if id(child) not in due:
                    child.send(signal.SIGKILL)  # what is left of its group (a worker tree's forks)
                    delay = child.restart_delay(now)
                    self.say(
                        f"{child.name} exited on its own (code {child.process.returncode}); "
                        f"starting it again in {delay:.1f}s"
                    )
                    due[id(child)] = now + delay
                elif now >= due[id(child)]:
                    del due[id(child)]
                    self._restart(child)
            time.sleep(0.2)
        return None

    def _restart(self, child: Child) -> None:
        assert child.restart is not None
        try:
            process = child.restart()
        except Exception as error:  # the next round tries again, with more backoff
            self.say(f"{child.name} did not start again: {error}")
            return  # its old process is still dead: the next round schedules another try
        if child.log_thread is not None:
            child.log_thread.join(timeout=2.0)
        child.process, child.started_at = process, time.monotonic()
        self._follow(child)
        self.say(f"{child.name} started again (pid {process.pid})")

    def stop(self) -> bool:
        """SIGTERM each tier, newest first, and wait; SIGKILL on timeout or a second signal.

        Returns True when every child exited without being killed.
        """
        clean = True
        while self._tiers:
            tier = self._tiers.pop()
            alive = [child for child in tier if child.process.poll() is None]
            if alive:
                self.say(f"stopping {', '.join(child.name for child in alive)}")
            for child in alive:
                child.send(signal.SIGTERM)
            forced_before = self.forced
            grace = max((child.stop_timeout_s for child in tier), default=0.0)
            deadline = time.monotonic() + (min(grace, FORCED_GRACE_S) if forced_before else grace)
            while any(c.process.poll() is None for c in tier) and time.monotonic() < deadline:
                if self.forced and not forced_before:
                    break
                time.sleep(0.05)
            for child in tier:
                killed = child.process.poll() is None
                child.send(signal.SIGKILL)  # also reaps stragglers left in a worker's group
                code = child.process.wait()
                if child.log_thread is not None:
                    child.log_thread.join(timeout=2.0)
                clean = clean and not killed
                self.say(f"  {child.name} (pid {child.pid}) {'killed' if killed else f'exited {code}'}")
        return clean


def redact(url: str) -> str:
    """``url`` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _taken_port_error(port: int, what: str) -> StackError:
    return StackError(
        f"port {port} is in use by {what}, and `make run` must own the Redis it starts. Stop it, pick "
        f"another port with PRESSLINE_LOCAL_REDIS_PORT, or use that Redis as it is with "
        f"DRAMATIQ_BROKER_URL=redis://127.0.0.1:{port}/0"
    )


def start_owned_redis(settings: Settings, redis_dir: Path, say: Callable[[str], None]) -> Child:
    """A durable Redis on ``settings.local_redis_port`` (AOF, fsync ``settings.local_redis_fsync``,
    noeviction), in ``redis_dir``."""
    port = settings.local_redis_port
    if _listening(port):
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0, decode_responses=True)
        try:
            client.ping()
            their_dir = str(client.config_get("dir").get("dir", ""))
        except redis.RedisError as error:
            raise _taken_port_error(port, f"something that is not a Redis we can use ({error})") from None
        if os.path.realpath(their_dir) != os.path.realpath(redis_dir):
            raise _taken_port_error(port, f"another Redis (data dir {their_dir})")
        owner = _parent_cmdline(int(client.info("server")["process_id"]))
        if "infra.devstack" in owner:
            raise StackError(f"the stack already runs (its Redis on port {port} belongs to: {owner})")
        say(f"a Redis left over from an earlier run holds port {port}; restarting it under this stack")
        client.shutdown()
        deadline = time.monotonic() + STOP_GRACE_S
        while _listening(port):
            if time.monotonic() > deadline:
                raise StackError(f"the leftover Redis on port {port} did not shut down")
            time.sleep(0.05)
    start = functools.partial(start_redis, port, redis_dir, durable=True, fsync=settings.local_redis_fsync)
    return Child("redis", start(), STOP_GRACE_S, restart=start)


def _parent_cmdline(pid: int) -> str:
    """The command line of ``pid``'s parent, or "" when /proc does not tell."""
    try:
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        return (
            Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        )
    except (OSError, IndexError):
        return ""


def check_external_redis(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0).ping()
    except redis.RedisError as error:
        raise StackError(f"DRAMATIQ_BROKER_URL={redact(url)} does not answer PING: {error}") from None


def start_endpoint(settings: Settings) -> Endpoint:
    """The emulator at AWS_ENDPOINT_URL; on this machine, moto's server is started when none answers."""
    if not settings.aws_endpoint_url:
        raise StackError("AWS_ENDPOINT_URL is empty: `make run` works against a local emulator only")
    url = settings.aws_endpoint_url.rstrip("/")
    if is_local_endpoint(url):
        parts = urlsplit(url)
        endpoint = ensure_endpoint(port=parts.port or EDGE_PORT, host=parts.hostname or "127.0.0.1")
    else:
        endpoint = Endpoint(url=url, kind=probe(url) or "nothing", process=None)
    if endpoint.kind not in ("moto", "localstack"):
        raise StackError(f"{endpoint.url} answers neither as LocalStack nor as moto ({endpoint.kind})")
    return endpoint


def restart_endpoint(
    settings: Settings, say: Callable[[str], None], saved: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start the stack's emulator again, bootstrap it and put back the secrets it had when the
    stack became ready (the sites' webhook secrets and WordPress credentials among them): moto
    keeps its state in memory only, so without this ingest would fail on a missing bucket, and
    webhooks and publishing on missing secrets, until someone restarted the stack."""
    endpoint = start_endpoint(settings)
    if endpoint.process is None:
        raise StackError(f"another emulator now answers at {endpoint.url}; not ours to supervise")
    for line in [*bootstrap(settings), *restore_secrets(settings, saved)]:
        say(f"bootstrap      {line}")
    return endpoint.process


def _needs_dummy_credentials(settings: Settings) -> bool:
    """The endpoint is an emulator (checked at start), so without configured credentials, dummy ones do."""
    return settings.aws_access_key_id is None and settings.aws_profile is None


def local_egress(settings: Settings) -> Settings:
    """``settings`` with the stack's own WordPress allowed as an egress destination.

    Its URL is loopback (``127.0.0.1:<PRESSLINE_WORDPRESS_PORT>``), which the egress policy refuses
    unless named; the site ``local-wp`` that ``PRESSLINE_WORDPRESS=1`` (or ``make demo``) registers
    points there. Only that address and port: the stack's Redis, endpoint and API stay refused.
    """
    entry = AllowRule.parse(f"127.0.0.1:{settings.wordpress_port}")
    if entry in settings.egress_allow:
        return settings
    return replace(settings, egress_allow=(*settings.egress_allow, entry))


def worker_env(settings: Settings, endpoint: Endpoint, metrics_port: int, prom_db: Path) -> dict[str, str]:
    """The environment of one queue's workers: ours, pointed at this stack."""
    env = dict(os.environ)
    env.update(
        DRAMATIQ_BROKER_URL=settings.broker_url,
        AWS_ENDPOINT_URL=endpoint.url,
        AWS_DEFAULT_REGION=settings.aws_region,
        PRESSLINE_EGRESS_ALLOW=format_allow_list(settings.egress_allow),
        dramatiq_prom_host="127.0.0.1",  # a dev machine need not serve metrics to its network
        dramatiq_prom_port=str(metrics_port),
        dramatiq_prom_db=str(prom_db),
        PYTHONUNBUFFERED="1",
    )
    if _needs_dummy_credentials(settings):
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = LOCAL_CREDENTIALS
    return env


def worker_command(queue: str, concurrency: QueueConcurrency, settings: Settings) -> list[str]:
    name = "dramatiq-gevent" if concurrency.gevent else "dramatiq"
    binary = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if binary is None:
        raise StackError(f"{name} is not installed (run `make deps`)")
    return [
        binary,
        "workers.app",
        "-Q", queue,
        "-p", str(concurrency.processes),
        "-t", str(concurrency.threads),
        "--worker-shutdown-timeout", str(settings.drain_timeout_ms),
    ]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """Child PIDs of ``pid`` (Dramatiq's worker and fork processes), from /proc when it has them."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _display(path: Path) -> str:
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def ready_report(
    settings: Settings,
    redis_child: Child | None,
    endpoint: Endpoint,
    workers: dict[str, Child],
    fake_llm_url: str | None = None,
) -> list[str]:
    """The table of what listens where, and lines to try."""
    rows: list[tuple[str, str, str]] = []
    broker = redact(settings.broker_url)
    if redis_child is not None:
        rows.append(
            ("redis", broker, f"pid {redis_child.pid}; ours, AOF {settings.local_redis_fsync}, noeviction")
        )
    else:
        rows.append(("redis", broker, "external (DRAMATIQ_BROKER_URL); not started by us"))
    aws_owner = f"pid {endpoint.process.pid}; ours" if endpoint.process else "already running; not ours"
    rows.append(("aws endpoint", endpoint.url, f"{endpoint.kind}, {aws_owner}"))
    if fake_llm_url:
        rows.append(("llm providers", fake_llm_url, "the offline fake (PRESSLINE_*_BASE_URL for real ones)"))
    rows.append(
        (
            "api",
            f"http://127.0.0.1:{settings.api_port}",
            "chalice local server (SSE streamed); GET /v1/openapi.json",
        )
    )
    for index, queue in enumerate(QUEUES):
        child = workers[queue]
        c = settings.concurrency[queue]
        shape = f"{c.processes}x{c.threads}" + (" gevent" if c.gevent else "")
        pids = " ".join(str(pid) for pid in [child.pid, *_descendants(child.pid)])
        rows.append(
            (f"queue {queue}", shape, f"pids {pids}; metrics 127.0.0.1:{settings.metrics_port + index}")
        )
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    python = _display(Path(sys.executable).absolute())
    prefix = ""
    if settings.broker_url != Settings().broker_url:
        prefix += f"DRAMATIQ_BROKER_URL={broker} "
    if endpoint.url != Settings().aws_endpoint_url:
        prefix += f"AWS_ENDPOINT_URL={endpoint.url} "
    aws_cli = "aws"
    if _needs_dummy_credentials(settings):
        aws_cli = "AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} aws".format(*LOCAL_CREDENTIALS)
    return [
        "",
        f"{READY_BANNER} (Ctrl-C stops all of it; data in {_display(ROOT / settings.data_dir)})",
        "",
        *(f"  {a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows),
        "",
        "Try:",
        f'  {prefix}{python} -m workers.submit --title "Hello"   # one job through all four queues',
        f"  {aws_cli} --endpoint-url {endpoint.url} s3 ls s3://{settings.payload_bucket} --recursive",
        f"  {prefix}{python} -m shared.auth.cli mint --tenant demo --role editor   # an API token, then:",
        f"  curl -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' "
        f'-d \'{{"input": {{"title": "Hi", "source": "One. Two."}}}}\' '
        f"http://127.0.0.1:{settings.api_port}/v1/jobs",
        "",
    ]


def start_stack(stack: Supervisor, settings: Settings) -> list[str] | None:
    """Start everything in order; the ready report, or None when a stop signal came first."""
    settings = local_egress(settings)  # every process below may reach the stack's WordPress
    data_dir = ROOT / settings.data_dir
    redis_child: Child | None = None
    if settings.broker_is_external:
        check_external_redis(settings.broker_url)
    else:
        stack.new_tier()
        redis_child = stack.add(start_owned_redis(settings, data_dir / "redis", stack.say))
    stack.say(f"redis          {redact(settings.broker_url)}")
    if stack.stop_signal is not None:
        return None

    endpoint = start_endpoint(settings)
    saved: dict[str, str] = {}  # the endpoint's secrets, once the stack is ready (restart_endpoint)
    stack.say(f"aws endpoint   {endpoint.url} ({endpoint.kind})")
    for line in bootstrap(replace(settings, aws_endpoint_url=endpoint.url)):
        stack.say(f"bootstrap      {line}")
    if endpoint.process is not None:
        stack.new_tier()
        again = functools.partial(
            restart_endpoint, replace(settings, aws_endpoint_url=endpoint.url), stack.say, saved
        )
        stack.add(Child(f"{endpoint.kind} endpoint", endpoint.process, STOP_GRACE_S, restart=again))
    if settings.wordpress_local:  # PRESSLINE_WORDPRESS=1: site local-wp of tenant demo (infra/wordpress.py)
        from infra.wordpress import start_for_stack

        stack.new_tier()
        for name, process, restart in start_for_stack(
            replace(settings, aws_endpoint_url=endpoint.url), stack.say
        ):
            stack.add(Child(name, process, STOP_GRACE_S, own_group=True, restart=restart))
    if stack.stop_signal is not None:
        return None

    api_env = worker_env(settings, endpoint, 0, data_dir / "prometheus" / "api")
    llm_env: dict[str, str] = {}  # the infer workers call the providers too, through the proxy core
    providers_configured = any(
        getattr(settings, name) != getattr(Settings(), name)
        for name in ("openai_base_url", "anthropic_base_url", "groq_base_url")
    )
    fake_url = None
    if not providers_configured:  # offline default: the fake provider speaks each API's wire format
        stack.new_tier()
        fake_port = free_port()
        fake = stack.spawn(
            "fake-llm",
            [sys.executable, "-m", "localstack.fake_provider", "--port", str(fake_port)],
            env=api_env,
            stop_timeout_s=STOP_GRACE_S,
            ready_lines=1,
            ready_marker="listening on",
        )
        if not stack.wait_ready([fake], WORKER_BOOT_TIMEOUT_S):
            return None
        fake_url = f"http://127.0.0.1:{fake_port}"
        llm_env = provider_env(fake_url)

    api_env.update(llm_env)

    workers: dict[str, Child] = {}
    stack.new_tier()  # all queues drain at once
    for index, queue in enumerate(QUEUES):
        prom_db = data_dir / "prometheus" / queue
        shutil.rmtree(prom_db, ignore_errors=True)
        prom_db.mkdir(parents=True)
        concurrency = settings.concurrency[queue]
        workers[queue] = stack.spawn(
            queue,
            worker_command(queue, concurrency, settings),
            env={**worker_env(settings, endpoint, settings.metrics_port + index, prom_db), **llm_env},
            stop_timeout_s=settings.drain_timeout_ms / 1000 + STOP_GRACE_S,
            ready_lines=concurrency.processes,
        )
    if not stack.wait_ready(list(workers.values()), WORKER_BOOT_TIMEOUT_S):
        return None

    stack.new_tier()  # the API stops first: no new jobs while the workers drain
    api = stack.spawn(
        "api",
        api_command(settings),
        env=api_env,
        stop_timeout_s=STOP_GRACE_S,
        ready_lines=1,
        ready_marker="Serving on",
    )
    if not stack.wait_ready([api], WORKER_BOOT_TIMEOUT_S):
        return None
    saved.update(saved_secrets(replace(settings, aws_endpoint_url=endpoint.url)))
    report = ready_report(settings, redis_child, endpoint, workers, fake_url)
    if settings.prometheus_local:  # PRESSLINE_PROMETHEUS=1
        from infra.prometheus import start_local_prometheus

        ports = [settings.metrics_port + index for index in range(len(QUEUES))]
        report += start_local_prometheus(stack, settings, data_dir, ports)
    return report


def api_command(settings: Settings) -> list[str]:
    """Chalice's local server for the functions, with server-sent events streamed as produced."""
    return [sys.executable, "-m", "functions.serve", "--host", "127.0.0.1", "--port", str(settings.api_port)]


def run(settings: Settings, out: TextIO) -> int:
    """Start the stack, wait for a signal, stop it. 0 after a clean stop on request."""
    stack = Supervisor(out)
    stack.install_signal_handlers()
    try:
        report = start_stack(stack, settings)
        if report is not None:
            for line in report:
                stack.say(line)
            died = stack.watch()
            if died is not None:
                raise StackError(f"{died.name} exited on its own with code {died.process.returncode}")
    except (StackError, RuntimeError, OSError, redis.RedisError) as error:
        stack.say(f"error: {error}")
        stack.stop()
        return 1
    except BaseException:
        stack.stop()  # then let the traceback show what went wrong
        raise
    stack.say(f"received {signal.Signals(stack.stop_signal or signal.SIGTERM).name}; stopping the stack")
    if not stack.stop():
        stack.say("stopped, but some processes had to be killed")
        return 1
    stack.say("stopped")
    return 0


def main() -> int:
    return run(Settings.from_env(), sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
