"""The pipeline's processes on free ports, for the demo and the pipeline benchmark.

Redis, the local AWS endpoint (moto) with its bootstrap, the fake LLM provider, Dramatiq workers for
the five queues (``infer`` under gevent in its own process tree) and the functions' local API, all
stopped in reverse order when the block ends.  ``make run`` is the interactive equivalent.

:func:`stack_wordpress` gives such a stack a WordPress instance of its own (its own root dir, on
free ports): one instance sends its webhooks to one URL, so a stack never takes over ``make run``'s.
Its port is chosen when the stack starts, so the processes' egress allow-list
(``PRESSLINE_EGRESS_ALLOW``) names exactly that loopback address and port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from infra.local_api import local_api
from infra.redis_server import free_port, start_redis, stop_process
from localstack.bootstrap import bootstrap
from localstack.endpoint import ensure_endpoint
from localstack.fake_provider import ROUTING_POLICY, provider_env, running_fake_provider
from shared.aws import LOCAL_CREDENTIALS
from shared.config import Settings
from shared.egress import AllowRule, format_allow_list, parse_allow_list

if TYPE_CHECKING:
    from infra.wordpress import LocalWordPress

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKER_READY = "Worker process is ready for action."


@dataclass
class PipelineStack:
    """Where the started stack listens, and the environment its processes share."""

    api: str
    settings: Settings
    env: dict[str, str]
    fake_llm: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Where :func:`stack_wordpress` serves (the one loopback port the stack's egress policy allows).
    wordpress_port: int = 0


def _start_worker_tree(
    queues: tuple[str, ...], threads: int, gevent: bool, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    binary = BIN / ("dramatiq-gevent" if gevent else "dramatiq")
    command = [str(binary), "workers.app", "-p", "1", "-t", str(threads), "-Q", *queues]
    out = log.open("ab")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)


def _wait_ready(log: Path, count: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"workers exited {proc.returncode}: {log.read_text()[-2000:]}")
        if log.exists() and log.read_text(errors="replace").count(WORKER_READY) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"workers not ready after {timeout_s:.0f}s (see {log})")


def _stop_tree(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def pipeline_stack(
    scratch: Path, *, threads: int = 16, greenlets: int = 64, extra_env: dict[str, str] | None = None
) -> Iterator[PipelineStack]:
    """Start the whole pipeline in ``scratch`` (logs, Redis data); stop it when the block ends."""
    scratch = scratch.resolve()  # redis-server changes into its --dir
    scratch.mkdir(parents=True, exist_ok=True)
    redis_port, aws_port, wordpress_port = free_port(), free_port(), free_port()
    redis_dir = scratch / "redis"
    shutil.rmtree(redis_dir, ignore_errors=True)
    redis_proc = start_redis(redis_port, redis_dir, durable=False)
    endpoint = ensure_endpoint(port=aws_port)
    trees: list[subprocess.Popen[bytes]] = []
    try:
        inherited = parse_allow_list({**os.environ, **(extra_env or {})}.get("PRESSLINE_EGRESS_ALLOW"))
        egress = (*inherited, AllowRule.parse(f"127.0.0.1:{wordpress_port}"))
        settings = Settings(
            broker_url=f"redis://127.0.0.1:{redis_port}/0", aws_endpoint_url=endpoint.url, egress_allow=egress
        )
        bootstrap(settings)
        policy = scratch / "routing.json"
        policy.write_text(json.dumps(ROUTING_POLICY))
        with running_fake_provider() as fake:
            env = dict(os.environ)
            env.update(
                DRAMATIQ_BROKER_URL=settings.broker_url,
                AWS_ENDPOINT_URL=endpoint.url,
                AWS_DEFAULT_REGION=settings.aws_region,
                PYTHONPATH=str(ROOT),
                **provider_env(fake),
                PRESSLINE_ROUTING_POLICY=str(policy),
                PRESSLINE_API_RATE_LIMIT="100000/s:100000",
                **(extra_env or {}),
                PRESSLINE_EGRESS_ALLOW=format_allow_list(egress),
            )
            if "AWS_ACCESS_KEY_ID" not in os.environ:
                env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = LOCAL_CREDENTIALS
            shapes = [
                (("ingest", "post-process", "publish", "webhooks"), threads, False),
                (("infer",), greenlets, True),
            ]
            for index, (queues, width, gevent) in enumerate(shapes):
                log = scratch / f"workers-{index}.log"
                log.unlink(missing_ok=True)
                tree_env = {
                    **env,
                    "dramatiq_prom_port": str(free_port()),
                    "dramatiq_prom_db": str(scratch / f"prom-{index}"),
                }
                tree = _start_worker_tree(queues, width, gevent, tree_env, log)
                trees.append(tree)
                _wait_ready(log, 1, tree)
            with local_api(env, scratch / "api.log") as api:
                yield PipelineStack(api.url, settings, env, fake, [*trees, api.process], wordpress_port)
    finally:
        for tree in reversed(trees):
            _stop_tree(tree)
        if endpoint.process is not None:
            stop_process(endpoint.process)
        stop_process(redis_proc)


def stack_wordpress(
    stack: PipelineStack, root: Path, *, site: str, tenant: str, publish: bool
) -> LocalWordPress:
    """The local WordPress in ``root`` (a previous run's instance there is stopped first), on the
    stack's WordPress port (the one its egress allow-list names) and a free database port,
    registered with the stack as ``site`` of ``tenant``, its webhooks sent to the stack's API."""
    from infra import wordpress as wp
    from shared.redis_client import redis_client

    config = wp.WordPressConfig(root=root, port=stack.wordpress_port, db_port=free_port(), site=site)
    wp.down(config, say=lambda _: None)  # its pid files say what runs, whatever ports it had
    return wp.register_site(
        stack.settings,
        redis_client(stack.settings),
        site=site,
        tenant=tenant,
        publish=publish,
        webhook_url=f"{stack.api}/v1/webhooks/wordpress/{site}",
        config=config,
        say=lambda _: None,
    )
