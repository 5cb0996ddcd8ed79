"""The local AWS endpoint on LocalStack's edge port.

If something already answers on the port (a LocalStack, or a moto server from an earlier run) it
is used as it is; otherwise moto's server is started there, which answers the same API calls.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

EDGE_PORT = 4566


@dataclass(frozen=True)
class Endpoint:
    url: str
    kind: str  # "localstack" | "moto"
    process: subprocess.Popen[bytes] | None  # set when we started it


def probe(url: str) -> str | None:
    """Which emulator answers at ``url``, or None when nothing does."""
    try:
        health = httpx.get(f"{url}/_localstack/health", timeout=1.0)
        if health.status_code == 200 and "services" in health.text:
            return "localstack"
    except httpx.HTTPError:
        return None
    try:
        # moto's dashboard; its data.json answers 500 for good once the server has held a Lambda
        moto = httpx.get(f"{url}/moto-api/", timeout=1.0)
        if moto.status_code == 200 and "<title>Moto" in moto.text:
            return "moto"
    except httpx.HTTPError:
        return None
    return "unknown"


def ensure_endpoint(port: int = EDGE_PORT, host: str = "127.0.0.1", wait_s: float = 30.0) -> Endpoint:
    """Use the emulator already on ``port``, or start moto's server there."""
    url = f"http://{host}:{port}"
    kind = probe(url)
    if kind is not None:
        return Endpoint(url=url, kind=kind, process=None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor, which stops it in order
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode} (is port {port} taken?)")
        if probe(url) == "moto":
            return Endpoint(url=url, kind="moto", process=proc)
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on {url} within {wait_s}s")
