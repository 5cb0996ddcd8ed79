"""Start a Redis server that Pressline owns (the local stack's broker, or a test's)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


class RedisServerError(RuntimeError):
    """The Redis server could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(
    port: int,
    data_dir: Path,
    *,
    durable: bool = True,
    fsync: str = "everysec",
    wait_s: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Run ``redis-server`` on 127.0.0.1:port with its files in ``data_dir``.

    ``durable`` turns on the AOF with ``appendfsync`` ``fsync`` (``everysec`` for the stack's
    broker; ``always`` for a test that kills Redis and must lose no write); tests run without
    persistence.  Eviction is always off: a broker must never silently drop messages.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError("redis-server is not installed (make deps installs it)")
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--timeout",
        "0",
        "--tcp-keepalive",
        "60",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    args += ["--appendonly", "yes", "--appendfsync", fsync] if durable else ["--appendonly", "no"]
    # Its own session: a terminal's Ctrl-C reaches the supervisor, which stops Redis last.
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RedisServerError(
                f"redis-server exited with {proc.returncode}; see {data_dir / 'redis.log'}"
            )
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RedisServerError(f"redis-server did not answer on port {port} within {wait_s}s")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)
