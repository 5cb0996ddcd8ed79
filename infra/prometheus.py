"""A local Prometheus (Debian's ``prometheus`` package, installed when missing) with Pressline's
recording and alerting rules, scraping the processes it is told about.

``make run`` starts one with ``PRESSLINE_PROMETHEUS=1`` (scraping the API's ``/metrics`` and each
worker tree's exposition); the tests start one to check every dashboard query and rule.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.devstack import Supervisor
    from shared.config import Settings

__all__ = [
    "RULES",
    "ensure_binary",
    "prometheus_command",
    "start_local_prometheus",
    "wait_ready",
    "write_config",
]

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"

_install_lock = threading.Lock()


def ensure_binary(binary: str = "prometheus", package: str = "prometheus") -> str:
    """The path of ``binary``, after ``apt-get install package`` when it is not on PATH.

    Idempotent; the package's own service is not started by us (nor, in containers, by apt).
    """
    with _install_lock:
        found = shutil.which(binary)
        if found:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        ):
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")
        found = shutil.which(binary)
        if not found:
            raise RuntimeError(f"{package} was installed but {binary} is not on PATH")
        return found


def write_config(
    directory: Path,
    jobs: Mapping[str, Sequence[str]],
    *,
    scrape_interval_s: float = 15.0,
    rules: Path = RULES,
) -> Path:
    """``prometheus.yml`` in ``directory``: one scrape job per name, its ``host:port`` targets."""
    directory.mkdir(parents=True, exist_ok=True)
    interval = f"{max(1, round(scrape_interval_s))}s"
    lines = [
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "rule_files:",
        f"  - {rules}",
        "scrape_configs:",
    ]
    for name, targets in jobs.items():
        quoted = ", ".join(f'"{t}"' for t in targets)
        lines += [
            f"  - job_name: {name}",
            f"    scrape_interval: {interval}",
            "    metrics_path: /metrics",
            "    static_configs:",
            f"      - targets: [{quoted}]",
        ]
    path = directory / "prometheus.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def prometheus_command(config: Path, data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The server's command line: our config, a private TSDB, ``/-/reload`` enabled."""
    return [
        ensure_binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=2d",
    ]


def wait_ready(url: str, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait for ``GET /-/ready`` to answer 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"prometheus exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"prometheus at {url} not ready after {timeout_s:.0f}s")


#: Logged by Prometheus once it serves queries.
READY_MARKER = "Server is ready to receive web requests."


def start_local_prometheus(
    stack: Supervisor, settings: Settings, data_dir: Path, worker_ports: Sequence[int]
) -> list[str]:
    """``make run`` with ``PRESSLINE_PROMETHEUS=1``: a Prometheus scraping the API and every worker
    tree, with the rules loaded; lines for the ready report saying where to look."""
    directory = data_dir / "prometheus-server"
    config = write_config(
        directory,
        {
            "pressline-api": [f"127.0.0.1:{settings.api_port}"],
            "pressline-workers": [f"127.0.0.1:{port}" for port in worker_ports],
        },
        scrape_interval_s=5,
    )
    stack.new_tier()
    child = stack.spawn(
        "prometheus",
        prometheus_command(config, directory / "tsdb", settings.prometheus_port),
        env=dict(os.environ),
        stop_timeout_s=10.0,
        ready_lines=1,
        ready_marker=READY_MARKER,
    )
    stack.wait_ready([child], 60.0)
    url = f"http://127.0.0.1:{settings.prometheus_port}"
    return [
        f"Prometheus (pid {child.pid}) scrapes the API and {len(worker_ports)} worker trees every 5s, "
        f"rules from {RULES.relative_to(ROOT)}:",
        f"  {url}/targets   {url}/alerts   {url}/rules",
        f"  {url}/graph?g0.expr=max%20by%20(queue_name)%20(pressline_queue_backlog)",
        "  Grafana: provision dashboards/grafana/provisioning (PROMETHEUS_URL=" + url + ")",
        "",
    ]
