"""``python -m infra.devstack`` (what ``make run`` runs) as a real process tree, started and stopped.

Each test points the stack at a free Redis port and a temporary data dir, waits for its ready
banner, inspects the real processes, signals it the way a terminal or an operator would, and
checks that every process it started is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from infra.devstack import READY_BANNER
from infra.redis_server import free_port, start_redis, stop_process
from localstack.endpoint import Endpoint
from shared.auth import TokenStore
from tests.conftest import ROOT

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CONCURRENCY = "ingest=2x2,infer=1x4:gevent,post-process=1x1,publish=1x1"


def parent_map() -> dict[int, int]:
    """pid -> ppid for every process, from /proc."""
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


def descendants(pid: int) -> set[int]:
    parents = parent_map()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/moto-api/data.json", timeout=1.0)
        return True
    except httpx.HTTPError:
        return False


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    redis_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while READY_BANNER not in self.output():
            assert self.process.poll() is None, f"devstack exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no ready banner:\n{self.output()}"
            time.sleep(0.1)

    def wait_exit(self) -> int:
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"devstack did not exit in {STOP_TIMEOUT_S}s:\n{self.output()}")

    def workers_by_queue(self) -> dict[str, int]:
        """The Dramatiq master PID of each queue (its worker processes are forks with the same cmdline)."""
        masters = {}
        for pid, parent in parent_map().items():
            if parent != self.process.pid:
                continue
            args = cmdline(pid)
            if any(Path(arg).name in ("dramatiq", "dramatiq-gevent") for arg in args) and "-Q" in args:
                masters[args[args.index("-Q") + 1]] = pid
        return masters


StartStack = Callable[..., Stack]


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[StartStack]:
    """Run the devstack with ``env`` on top of a clean environment; kill leftovers after the test."""
    started: list[Stack] = []

    def start(**env: str) -> Stack:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DRAMATIQ_", "PRESSLINE_", "HMAC_", "dramatiq_"))
        }
        data_dir = Path(env.get("PRESSLINE_DATA_DIR") or tmp_path / f"data{len(started)}")
        redis_port = int(env.get("PRESSLINE_LOCAL_REDIS_PORT") or free_port())
        base.update(
            PRESSLINE_DATA_DIR=str(data_dir),
            PRESSLINE_LOCAL_REDIS_PORT=str(redis_port),
            PRESSLINE_METRICS_PORT=str(free_port()),
            PRESSLINE_API_PORT=str(free_port()),
            PRESSLINE_QUEUE_CONCURRENCY=CONCURRENCY,
            PRESSLINE_DRAIN_TIMEOUT_MS="5000",
        )
        base.update(env)
        log = tmp_path / f"devstack{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "infra.devstack"],
                cwd=ROOT,
                env=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as under a terminal
            )
        stack = Stack(process, log, data_dir, redis_port)
        started.append(stack)
        return stack

    yield start
    for stack in started:
        leftovers = descendants(stack.process.pid)
        if stack.process.poll() is None:
            stack.process.kill()
            stack.process.wait()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_run_then_ctrl_c_stops_everything(start_stack: StartStack) -> None:
    """The stack owns Redis and the AWS endpoint; a terminal's Ctrl-C stops all of it in order."""
    aws_url = f"http://127.0.0.1:{free_port()}"
    stack = start_stack(AWS_ENDPOINT_URL=aws_url)
    stack.wait_ready()
    output = stack.output()
    assert f"redis://127.0.0.1:{stack.redis_port}/0" in output
    assert "moto, pid" in output and "ours" in output

    client = redis.Redis(port=stack.redis_port, decode_responses=True)
    assert client.ping()
    config = client.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert Path(str(config["dir"])) == (stack.data_dir / "redis").resolve()
    redis_pid = int(client.info("server")["process_id"])

    # The stack's processes: those seen twice half a second apart (a check's short-lived
    # subprocess may come and go in between).
    first = descendants(stack.process.pid)
    time.sleep(0.5)
    children = [pid for pid in descendants(stack.process.pid) if pid in first]
    assert redis_pid in children
    moto_pids = [pid for pid in children if "moto.server" in cmdline(pid)]
    assert len(moto_pids) == 1 and answers(aws_url)
    masters = stack.workers_by_queue()
    assert sorted(masters) == sorted(["ingest", "infer", "post-process", "publish", "webhooks"])
    assert len(descendants(masters["ingest"])) >= 2  # -p 2: two worker processes
    for queue in masters:
        assert (stack.data_dir / "prometheus" / queue).is_dir()
    assert all(alive(pid) for pid in children)
    api_port = int(re.search(r"api\s+http://127.0.0.1:(\d+)", output).group(1))  # type: ignore[union-attr]
    served = httpx.get(f"http://127.0.0.1:{api_port}/v1/openapi.json", timeout=5)
    assert served.status_code == 200 and served.json()["info"]["title"] == "Pressline API"
    unauthenticated = httpx.post(f"http://127.0.0.1:{api_port}/v1/jobs", json={}, timeout=5)
    assert unauthenticated.status_code == 401  # the API reaches the stack's Redis (tokens)
    # Offline by default: the proxy answers through the stack's fake provider, with the SDK.
    assert "llm providers" in output
    token = TokenStore(redis.Redis(port=stack.redis_port), "pressline").mint("demo", "editor")[0]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key=token, max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content

    os.killpg(stack.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does

    assert stack.wait_exit() == 0, stack.output()
    still_alive = [(pid, cmdline(pid)) for pid in children if alive(pid)]
    assert still_alive == []
    assert not answers(aws_url)
    # Redis was stopped by the supervisor after the workers, not by the terminal's SIGINT.
    redis_log = (stack.data_dir / "redis" / "redis.log").read_text()
    assert "Received SIGTERM" in redis_log and "Received SIGINT" not in redis_log
    output = stack.output()
    assert output.index("publish (pid") < output.index("redis (pid")
    assert output.rstrip().endswith("stopped")


def test_refuses_a_redis_it_does_not_own(start_stack: StartStack, tmp_path: Path) -> None:
    port = free_port()
    foreign = start_redis(port, tmp_path / "foreign", durable=False)
    try:
        stack = start_stack(PRESSLINE_LOCAL_REDIS_PORT=str(port))
        assert stack.wait_exit() == 1
        assert f"port {port} is in use by another Redis" in stack.output()
        assert READY_BANNER not in stack.output()
        assert descendants(stack.process.pid) == set()
        assert redis.Redis(port=port).ping()  # left alone
    finally:
        stop_process(foreign)


def test_restarts_its_own_leftover_redis_and_leaves_a_shared_endpoint_running(
    start_stack: StartStack, tmp_path: Path, aws_endpoint: Endpoint
) -> None:
    """A Redis on our data dir (from a SIGKILLed run) is taken over; a double Ctrl-C kills the workers
    but still lets Redis shut down with SIGTERM."""
    port = free_port()
    data_dir = tmp_path / "data0"  # the dir start_stack gives its first stack
    leftover = start_redis(port, data_dir / "redis", durable=True)
    redis.Redis(port=port).set("survives", "yes")
    try:
        stack = start_stack(PRESSLINE_LOCAL_REDIS_PORT=str(port), AWS_ENDPOINT_URL=aws_endpoint.url)
        stack.wait_ready()
        assert leftover.wait(5) == 0  # shut down by the stack...
        client = redis.Redis(port=port)
        assert client.get("survives") == b"yes"  # ...and restarted from its AOF
        assert int(client.info("server")["process_id"]) in descendants(stack.process.pid)
        assert "already running; not ours" in stack.output()
        children = descendants(stack.process.pid)

        second = start_stack(
            PRESSLINE_LOCAL_REDIS_PORT=str(port),
            PRESSLINE_DATA_DIR=str(data_dir),
            AWS_ENDPOINT_URL=aws_endpoint.url,
        )
        assert second.wait_exit() == 1  # a second `make run` must not take over a live stack's Redis
        assert "the stack already runs" in second.output()
        assert client.get("survives") == b"yes"

        os.killpg(stack.process.pid, signal.SIGINT)
        time.sleep(0.3)  # workers take about a second to drain even when idle
        os.killpg(stack.process.pid, signal.SIGINT)

        assert stack.wait_exit() == 1, stack.output()
        output = stack.output()
        assert re.search(r"ingest \(pid \d+\) killed", output)
        assert re.search(r"redis \(pid \d+\) exited 0", output)
        assert "stopped, but some processes had to be killed" in output
        assert [pid for pid in children if alive(pid)] == []
        assert answers(aws_endpoint.url)  # not ours, so still running
    finally:
        stop_process(leftover)


def test_external_broker_is_used_not_started(
    start_stack: StartStack, redis_url: str, aws_endpoint: Endpoint
) -> None:
    """With DRAMATIQ_BROKER_URL the stack starts no Redis; SIGTERM (an operator's kill) stops it."""
    stack = start_stack(DRAMATIQ_BROKER_URL=redis_url, AWS_ENDPOINT_URL=aws_endpoint.url)
    stack.wait_ready()
    children = descendants(stack.process.pid)
    assert not any("redis-server" in " ".join(cmdline(pid)) for pid in children)
    assert "external (DRAMATIQ_BROKER_URL)" in stack.output()
    assert not (stack.data_dir / "redis").exists()

    stack.process.terminate()

    assert stack.wait_exit() == 0, stack.output()
    assert "killed" not in stack.output()
    assert [pid for pid in children if alive(pid)] == []
    assert redis.Redis.from_url(redis_url).ping()
