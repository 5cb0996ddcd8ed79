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


def threads(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


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
    assert config["appendfsync"] == "always"  # a kill -9 of Redis loses no write a worker acted on
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


def _wait(predicate: Callable[[], bool], what: str, stack: Stack, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert stack.process.poll() is None, f"the stack exited:\n{stack.output()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s\n{stack.output()}"
        time.sleep(0.2)


def test_a_dead_component_is_started_again_and_the_rest_keep_serving(start_stack: StartStack) -> None:
    """Issue 15, point 1: kill -9 of a worker process, the API, the fake LLM, the AWS endpoint and
    Redis each bring back that component only (the endpoint bootstrapped again); a job then runs."""
    import boto3

    aws_url = f"http://127.0.0.1:{free_port()}"
    stack = start_stack(AWS_ENDPOINT_URL=aws_url)
    stack.wait_ready()
    api = "http://127.0.0.1:{}".format(
        re.search(r"api\s+http://127.0.0.1:(\d+)", stack.output()).group(1)  # type: ignore[union-attr]
    )

    def serving() -> bool:
        try:
            return httpx.get(f"{api}/v1/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def restarted(name: str) -> Callable[[], bool]:
        count = stack.output().count(f"{name} started again")
        return lambda: stack.output().count(f"{name} started again") > count

    def child_running(marker: str) -> int:
        """The stack's own child (not a grandchild: the API's pre-forked servers share its command line)."""
        children = [pid for pid, parent in parent_map().items() if parent == stack.process.pid]
        return next(pid for pid in children if marker in " ".join(cmdline(pid)))

    # A worker process of one queue: Dramatiq's master then exits; only that queue's tree restarts.
    masters = stack.workers_by_queue()
    # A worker process, not the metrics fork (same command line): the one running the actor threads.
    children = [pid for pid, parent in parent_map().items() if parent == masters["ingest"]]
    worker = max(children, key=threads)
    back = restarted("ingest")
    os.kill(worker, signal.SIGKILL)
    _wait(back, "ingest restarted", stack)
    assert serving()  # the API went on serving meanwhile
    assert stack.workers_by_queue()["publish"] == masters["publish"]  # other queues untouched
    _wait(
        lambda: stack.workers_by_queue().get("ingest", masters["ingest"]) != masters["ingest"],
        "new ingest",
        stack,
    )

    for name, marker in (("api", "functions.serve"), ("fake-llm", "localstack.fake_provider")):
        back = restarted(name)
        os.kill(child_running(marker), signal.SIGKILL)
        _wait(back, f"{name} restarted", stack)
    _wait(serving, "the API answers again", stack)

    s3 = boto3.client(
        "s3", endpoint_url=aws_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    back = restarted("moto endpoint")
    os.kill(child_running("moto.server"), signal.SIGKILL)
    _wait(back, "the endpoint restarted", stack)
    assert "pressline-payloads" in {b["Name"] for b in s3.list_buckets()["Buckets"]}  # bootstrapped again

    back = restarted("redis")
    os.kill(child_running("redis-server"), signal.SIGKILL)
    _wait(back, "redis restarted", stack)

    # Everything is back: a job goes through all four queues.
    token = TokenStore(redis.Redis(port=stack.redis_port), "pressline").mint("demo", "editor")[0]
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{api}/v1/jobs",
        json={"input": {"title": "Back", "source": "One. Two. Three."}},
        headers=auth,
        timeout=10,
    )
    assert created.status_code == 202, created.text
    status_url = api + created.json()["status_url"]
    _wait(
        lambda: httpx.get(status_url, headers=auth, timeout=5).json()["state"] in ("succeeded", "failed"),
        "the job finished",
        stack,
    )
    assert httpx.get(status_url, headers=auth, timeout=5).json()["state"] == "succeeded"

    os.killpg(stack.process.pid, signal.SIGINT)
    assert stack.wait_exit() == 0, stack.output()
