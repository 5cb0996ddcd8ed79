"""Peer gateways the proxy bench can measure in the same run, against the same fake provider.

The two the issue names: LiteLLM's proxy and Portkey's gateway. Neither is a project dependency:
``make bench-peers`` installs LiteLLM into its own virtualenv (``.peers/litellm``) and Portkey
with npm into ``.peers/portkey`` (from ``bench/portkey-package.json``, which pins Hono as the
gateway's own lock file does: with the versions npm resolves today every stream fails with
``TypeError: immutable``), then runs ``python -m bench.proxy_bench --litellm ... --portkey ...``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from infra.redis_server import free_port, stop_process

__all__ = ["Peer", "litellm_server", "portkey_server"]


@dataclasses.dataclass(frozen=True)
class Peer:
    """A running gateway: where to send the bench's chat completions, and with which headers."""

    name: str
    url: str
    headers: dict[str, str]
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def litellm_server(
    executable: Path, fake_url: str, model: str, workdir: Path, wait_s: float = 120.0
) -> Iterator[Peer]:
    """LiteLLM's proxy (one uvicorn worker, its default) routing ``model`` to the fake's OpenAI API.

    No database and no master key (LiteLLM's escape hatch for that is set): it authenticates
    nothing and keeps no spend log, so it does less per request than Pressline's proxy.
    """
    config = workdir / "litellm.yaml"
    entry = {
        "model_name": model,
        "litellm_params": {
            "model": f"openai/{model}",
            "api_base": f"{fake_url}/openai/v1",
            "api_key": "sk-bench",
        },
    }
    config.write_text(json.dumps({"model_list": [entry]}))  # YAML is a superset of JSON
    port = free_port()
    env = dict(os.environ, LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true", LITELLM_LOG="ERROR")
    command = [str(executable.resolve()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with _started(
        "litellm", command, env, workdir, f"http://127.0.0.1:{port}", "/health/liveliness", wait_s
    ) as (
        url,
        proc,
    ):
        yield Peer("litellm", url, {"Authorization": "Bearer sk-bench"}, proc)


@contextlib.contextmanager
def portkey_server(install_dir: Path, fake_url: str, workdir: Path, wait_s: float = 60.0) -> Iterator[Peer]:
    """Portkey's open-source gateway (one Node.js process) sending each request to the fake's
    OpenAI API, chosen per request by its ``x-portkey-provider`` and ``x-portkey-custom-host``
    headers (its config-free mode). It authenticates nothing and computes no cost."""
    script = install_dir.resolve() / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    node = shutil.which("node")
    if node is None or not script.exists():
        raise RuntimeError(f"Portkey's gateway is not installed in {install_dir} (make bench-peers)")
    port = free_port()
    command = [node, str(script), f"--port={port}", "--headless"]
    with _started("portkey", command, dict(os.environ), workdir, f"http://127.0.0.1:{port}", "/", wait_s) as (
        url,
        proc,
    ):
        headers = {
            "Authorization": "Bearer sk-bench",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"{fake_url}/openai/v1",
        }
        yield Peer("portkey", url, headers, proc)


@contextlib.contextmanager
def _started(
    name: str,
    command: list[str],
    env: dict[str, str],
    workdir: Path,
    url: str,
    ready_path: str,
    wait_s: float,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``command`` (its output in ``workdir/<name>.log``) and wait until ``ready_path`` answers 200."""
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}{ready_path}", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {wait_s:.0f} s; see {log}")
            time.sleep(0.25)
        yield url, proc
    finally:
        stop_process(proc)
