"""``python -m infra.demo`` (``make demo``): one article from an API request to a WordPress post, offline.

It uses the ``make run`` stack when that stack's API answers (on ``PRESSLINE_API_PORT``), with that
stack's WordPress site ``local-wp`` of tenant ``demo`` (registered, and the instance brought up, if
``make run`` was started without ``PRESSLINE_WORDPRESS=1``).  Otherwise it starts its own stack on
free ports (``infra.pipeline_stack``: Redis, moto, the fake LLM provider, the workers, the API) and
a WordPress instance of its own in ``<data dir>/demo-wordpress`` registered as site ``demo-blog``:
one instance sends its webhooks to one URL, so the demo never re-points ``make run``'s.  Then it
mints a token, submits a job with ``POST /v1/jobs``, waits for the run, and prints each stage, the
post's URL and id, the trace id and the cost.  The demo's own WordPress stays up so the URL can be
opened; ``python -m infra.wordpress down --root .data/demo-wordpress`` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import redis

from infra import wordpress as wp
from infra.devstack import local_egress
from infra.pipeline_stack import PipelineStack, pipeline_stack, stack_wordpress
from shared.auth import TokenStore
from shared.config import Settings
from shared.egress import EgressPolicy
from shared.redis_client import redis_client
from shared.sites import SiteRegistry

ROOT = Path(__file__).resolve().parents[1]
SITE = "demo-blog"
TENANT = "demo"


@dataclass(frozen=True)
class Target:
    """The API to talk to, the Redis and AWS endpoint behind it, and the stack (ours, or None)."""

    api: str
    settings: Settings
    stack: PipelineStack | None = None


def _make_run_stack(settings: Settings) -> Target | None:
    """The ``make run`` stack, when its API and Redis answer."""
    api = f"http://127.0.0.1:{settings.api_port}"
    try:
        httpx.get(f"{api}/v1/openapi.json", timeout=2.0).raise_for_status()
        redis.Redis.from_url(settings.broker_url, socket_timeout=2.0).ping()
    except (httpx.HTTPError, redis.RedisError):
        return None
    return Target(api, local_egress(settings))  # its WordPress is loopback, allowed as make run allows it


@contextlib.contextmanager
def target(settings: Settings, scratch: Path) -> Iterator[Target]:
    running = _make_run_stack(settings)
    if running is not None:
        print(f"using the running stack at {running.api}")
        yield running
        return
    print("starting a stack of our own (Redis, moto, fake LLM, workers, API) ...")
    with pipeline_stack(scratch) as stack:
        yield Target(stack.api, stack.settings, stack)


def demo_wordpress_root(settings: Settings) -> Path:
    return ROOT / settings.data_dir / "demo-wordpress"


def _answers(base_url: str | None) -> bool:
    if not base_url:
        return False
    try:
        return httpx.get(f"{base_url}/wp-json/", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def prepare_site(target: Target, client: redis.Redis, *, publish: bool) -> tuple[str, str, str]:
    """The site the demo writes to: (site, tenant, WordPress URL).

    With ``make run``'s stack: its site ``local-wp``, as registered (only its publish gate is
    opened for ``--publish``); its Application Password is not re-issued while the stack's workers
    use it.  With our own stack: our own instance, registered as ``demo-blog``.
    """
    settings = target.settings
    if target.stack is not None:
        site = stack_wordpress(
            target.stack, demo_wordpress_root(settings), site=SITE, tenant=TENANT, publish=publish
        )
        return SITE, TENANT, site.base_url
    registry = SiteRegistry(client, settings.namespace, EgressPolicy.from_settings(settings))
    current = registry.get(wp.STACK_SITE)
    if current is None or not _answers(current.base_url):
        print(f"registering make run's WordPress as site {wp.STACK_SITE!r} (webhooks to {target.api})")
        local = wp.register_site(
            settings, client, site=wp.STACK_SITE, tenant=wp.STACK_TENANT, publish=publish, say=lambda _: None
        )
        return wp.STACK_SITE, wp.STACK_TENANT, local.base_url
    if publish and not current.publish_allowed:
        print(f"opening site {wp.STACK_SITE!r}'s publish gate")
        registry.register(replace(current, publish_allowed=True))
    return current.site, current.tenant, current.base_url or ""


def run_demo(target: Target, *, publish: bool, title: str, source: str, timeout_s: float) -> int:
    settings = target.settings
    client = redis_client(settings)
    site, tenant, base_url = prepare_site(target, client, publish=publish)
    print(f"WordPress at {base_url}; site {site!r} of tenant {tenant!r}")
    role = "publisher" if publish else "editor"
    token, _ = TokenStore(client, settings.namespace).mint(tenant, role, name="demo", ttl_s=3600)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"site": site, "publish": publish, "input": {"title": title, "source": source}}
    accepted = httpx.post(f"{target.api}/v1/jobs", json=body, headers=headers, timeout=10)
    if accepted.status_code != 202:
        print(f"the API refused the job: {accepted.status_code} {accepted.text}", file=sys.stderr)
        return 1
    job_id = accepted.json()["job_id"]
    print(f"job {job_id} accepted; waiting for the run ...")
    deadline = time.monotonic() + timeout_s
    while True:
        view = httpx.get(f"{target.api}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if view["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for stage in view.get("stages", []):
        print(
            f"  {stage['name']:<13} {stage['state']:<10} attempts {stage['attempts']}  {stage['run_ms']} ms"
        )
    if view["state"] != "succeeded":
        print(f"the job did not succeed: {view['state']} {view.get('last_error')}", file=sys.stderr)
        return 1
    post = view["post"] or {}
    print()
    print(f"post URL : {post.get('link')}")
    refused = ", publish refused" if post.get("publish_refused") else ""
    print(f"post id  : {post.get('id')} ({post.get('status')}{refused})")
    print(f"trace id : {view['trace_id']}")
    print(f"cost     : ${view['cost']['usd']} ({view['cost']['pico_usd']} pico-USD)")
    if target.stack is not None:
        root = demo_wordpress_root(settings).relative_to(ROOT)
        print(f"\nWordPress stays up for a look; stop it with: python -m infra.wordpress down --root {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--publish", action="store_true", help="publish (a publisher token, a site that allows it)"
    )
    parser.add_argument("--title", default="Why the tides turn")
    parser.add_argument(
        "--source",
        default=(
            "The moon's gravity pulls the oceans. The Earth turns beneath the bulge. "
            "Twice a day the sea rises."
        ),
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    scratch = ROOT / settings.data_dir / "demo" / uuid.uuid4().hex[:8]
    with target(settings, scratch) as where:
        return run_demo(
            where, publish=args.publish, title=args.title, source=args.source, timeout_s=args.timeout
        )


if __name__ == "__main__":
    sys.exit(main())
