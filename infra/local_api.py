"""Run a local server of the functions on a free port and wait until it answers.

Used by the tests and the benchmarks; ``make run`` starts the same server itself.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.redis_server import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class LocalApi:
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def local_api(
    env: Mapping[str, str], log: Path, *, module: str | None = "functions.serve", wait_s: float = 30.0
) -> Iterator[LocalApi]:
    """``python -m <module>`` (Chalice's local server, SSE streamed), or with ``module=None`` the
    stock ``chalice local`` CLI; stopped when the block ends."""
    port = str(free_port())
    if module is None:
        command = [str(BIN / "chalice"), "local", "--host", "127.0.0.1", "--port", port, "--no-autoreload"]
        cwd = ROOT / "functions"
    else:
        command = [str(BIN / "python"), "-m", module, "--host", "127.0.0.1", "--port", port]
        cwd = ROOT
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                httpx.get(f"{url}/v1/openapi.json", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield LocalApi(url, proc)
    finally:
        stop_process(proc)
