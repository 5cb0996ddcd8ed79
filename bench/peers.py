"""Peer gateways the proxy bench can measure in the same run, against the same fake provider.

Only LiteLLM's proxy, the peer the issue names that installs and streams here (Portkey's gateway
from npm fails every stream on this machine; ``../shared/notes`` has the details). It is not a
project dependency: ``make bench-peers`` installs it into its own virtualenv (``.peers/litellm``)
and passes its ``litellm`` executable to ``python -m bench.proxy_bench --litellm``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from infra.redis_server import free_port, stop_process

__all__ = ["litellm_server"]


@contextlib.contextmanager
def litellm_server(
    executable: Path, fake_url: str, model: str, workdir: Path, wait_s: float = 120.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
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
    with (workdir / "litellm.log").open("ab") as out:
        proc = subprocess.Popen(
            [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"litellm exited {proc.returncode}; see {workdir / 'litellm.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/liveliness", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"litellm did not answer within {wait_s:.0f} s")
            time.sleep(0.25)
        yield url, proc
    finally:
        stop_process(proc)
