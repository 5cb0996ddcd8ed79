"""The WordPress sites Pressline serves: which tenant owns a site, and the site's own publish gate.

python -m shared.sites register --site blog-1 --tenant acme [--publish]
python -m shared.sites list
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from typing import cast

import redis

SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Site:
    site: str
    tenant: str
    #: The site's own gate: may jobs started by its webhooks publish (not only draft)?
    publish_allowed: bool = False


class SiteRegistry:
    """Sites in one Redis hash, ``<namespace>.sites``: site id -> JSON."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}.sites"

    def register(self, site: Site) -> None:
        if not SITE_ID.match(site.site):
            raise ValueError(f"invalid site id {site.site!r}")
        self.client.hset(self.key, site.site, json.dumps(asdict(site)))

    def get(self, site: str) -> Site | None:
        if not SITE_ID.match(site):
            return None
        raw = cast(bytes | None, self.client.hget(self.key, site))
        return Site(**json.loads(raw)) if raw else None

    def all(self) -> list[Site]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key))
        return sorted((Site(**json.loads(v)) for v in raw.values()), key=lambda s: s.site)


def main(argv: list[str] | None = None) -> int:
    from shared.config import Settings
    from shared.redis_client import redis_client

    parser = argparse.ArgumentParser(prog="python -m shared.sites", description="WordPress sites.")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="add or change a site")
    reg.add_argument("--site", required=True)
    reg.add_argument("--tenant", required=True)
    reg.add_argument("--publish", action="store_true", help="jobs from this site's webhooks may publish")
    sub.add_parser("list", help="every site, one JSON line each")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    registry = SiteRegistry(redis_client(settings), settings.namespace)
    if args.command == "register":
        registry.register(Site(site=args.site, tenant=args.tenant, publish_allowed=args.publish))
        print(f"site {args.site} belongs to {args.tenant}")
    else:
        for site in registry.all():
            print(json.dumps(asdict(site)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
