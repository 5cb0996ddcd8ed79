"""The pre-forked server (functions.prefork): real processes sharing one listening socket."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

#: A tiny TCP server answering each connection with the pid that accepted it, pre-forked.
SERVER = textwrap.dedent(
    """
    import os, socketserver, sys
    from functions.prefork import Prefork

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(str(os.getpid()).encode())

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        def get_request(self):
            connection, address = self.socket.accept()
            connection.setblocking(True)
            return connection, address

    def boot():
        if sys.argv[1] == "fail":
            raise RuntimeError("cannot boot")

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    sys.exit(Prefork(server, 2, boot=boot, stop_s=3).run())
    """
)


def start(mode: str = "ok") -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, mode], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def accepted_by(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return int(conn.makefile("rb").read())


def children(proc: subprocess.Popen[bytes], n: int = 2, wait_s: float = 10.0) -> set[int]:
    deadline = time.monotonic() + wait_s
    while True:
        pids = {c.pid for c in psutil.Process(proc.pid).children() if c.status() != psutil.STATUS_ZOMBIE}
        if len(pids) == n or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, port = start()
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_every_child_accepts_from_the_shared_socket(server: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = server
    forked = children(proc)
    assert len(forked) == 2
    seen = set()
    for _ in range(200):
        seen.add(accepted_by(port))
        if seen == forked:
            break
    assert seen == forked  # both children took connections; the parent took none


def test_a_child_that_dies_is_replaced_and_the_socket_keeps_answering(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = server
    first = children(proc)
    victim = min(first)
    psutil.Process(victim).kill()
    deadline = time.monotonic() + 10
    while True:
        now = children(proc)
        if (victim not in now and len(now) == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert victim not in now and len(now) == 2
    assert {accepted_by(port) for _ in range(20)} <= now


def test_sigterm_stops_every_child_and_the_parent_exits_cleanly(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, _ = server
    forked = children(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    time.sleep(0.2)
    assert not [pid for pid in forked if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def test_children_die_with_a_killed_parent(server: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, _ = server
    forked = children(proc)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in forked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(pid) for pid in forked)


def test_a_child_that_cannot_boot_stops_the_server_with_an_error() -> None:
    proc, _ = start("fail")
    try:
        assert proc.wait(15) == 1
        assert proc.stderr is not None
        assert b"could not start" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_server_forks_one_process_per_cpu_unless_the_semantic_store_is_embedded() -> None:
    import os

    from functions.serve import serving_processes
    from shared.config import Settings

    assert serving_processes(Settings(serve_workers=0)) == (os.cpu_count() or 1)
    assert serving_processes(Settings(serve_workers=3)) == 3
    assert serving_processes(Settings(serve_workers=3), requested=1) == 1
    embedded = Settings(serve_workers=3, cache_enabled=True, cache_semantic=True)
    assert serving_processes(embedded) == 1  # only one process can open the embedded store
    assert serving_processes(Settings(serve_workers=3, cache_enabled=True, qdrant_url="http://q:6333")) == 3
    assert serving_processes(Settings(serve_workers=3, cache_enabled=True, cache_semantic=False)) == 3
