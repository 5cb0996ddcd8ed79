"""Start and stop real ``dramatiq`` CLI worker processes for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DRAMATIQ_BROKER_URL=redis_url,
        PYTHONPATH=str(ROOT),
        AWS_ENDPOINT_URL=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    env.update(extra)
    return env


def start_workers(
    redis_url: str,
    *,
    module: str = "tests.support.actors",
    queues: tuple[str, ...] = ("runner-test",),
    processes: int = 1,
    threads: int = 8,
    gevent: bool = False,
    shutdown_timeout_ms: int = 30_000,
    log: Path | None = None,
    **env: str,
) -> subprocess.Popen[bytes]:
    """Run ``dramatiq`` (or ``dramatiq-gevent``) in its own process group."""
    command = [
        str(BIN / ("dramatiq-gevent" if gevent else "dramatiq")),
        module,
        "-p",
        str(processes),
        "-t",
        str(threads),
        "--worker-shutdown-timeout",
        str(shutdown_timeout_ms),
    ]
    command += ["-Q", *queues]  # one -Q with every name: a repeated -Q keeps only the last
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        command, cwd=ROOT, env=worker_env(redis_url, **env), stdout=out, stderr=out, start_new_session=True
    )


def worker_children(main: subprocess.Popen[bytes], expected: int, timeout_s: float = 20.0) -> list[int]:
    """PIDs of the worker processes the dramatiq main process forked."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            children = psutil.Process(main.pid).children()
        except psutil.NoSuchProcess:
            break
        if len(children) >= expected:
            return [c.pid for c in children]
        time.sleep(0.05)
    raise AssertionError(f"dramatiq did not start {expected} worker processes")


def stop_workers(main: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM the main process (a graceful drain) and wait; SIGKILL the group if it hangs."""
    if main.poll() is None:
        main.send_signal(signal.SIGTERM)
        try:
            main.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(main.pid, signal.SIGKILL)
            main.wait(10)
    return main.returncode
