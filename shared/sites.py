"""The WordPress sites Pressline serves: which tenant owns a site, and the site's own publish gate.

python -m shared.sites register --site blog-1 --tenant acme [--publish]
    [--base-url http://blog.example] [--credentials-secret pressline/sites/blog-1/wordpress]
python -m shared.sites list
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, fields
from typing import cast

import redis

SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Site:
    site: str
    tenant: str
    #: The site's own gate: may jobs started by its webhooks publish (not only draft)?
    publish_allowed: bool = False
    #: The site's root URL (REST at ``base_url + "/wp-json"``); overrides the one in its credentials.
    base_url: str | None = None
    #: Secrets Manager name of its Application Password credentials (JSON; see shared.wordpress);
    #: None: ``PRESSLINE_WORDPRESS_CREDENTIALS_PATTERN`` with the site id.
    credentials_secret: str | None = None


class SiteRegistry:
    """Sites in one Redis hash, ``<namespace>.sites``: site id -> JSON."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}.sites"

    def register(self, site: Site) -> None:
        if not SITE_ID.match(site.site):
            raise ValueError(f"invalid site id {site.site!r}")
        if site.base_url is not None and not re.match(r"^https?://[^/\s@]+(/\S*)?$", site.base_url):
            raise ValueError("base_url must be an http(s) URL without credentials")
        self.client.hset(self.key, site.site, json.dumps(asdict(site)))

    def get(self, site: str) -> Site | None:
        if not SITE_ID.match(site):
            return None
        raw = cast(bytes | None, self.client.hget(self.key, site))
        return _load(raw) if raw else None

    def all(self) -> list[Site]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key))
        return sorted((_load(v) for v in raw.values()), key=lambda s: s.site)


def _load(raw: bytes | str) -> Site:
    """A stored site; fields this version does not know are ignored, missing ones take defaults."""
    data = json.loads(raw)
    known = {f.name for f in fields(Site)}
    return Site(**{k: v for k, v in data.items() if k in known})


def main(argv: list[str] | None = None) -> int:
    from shared.config import Settings
    from shared.redis_client import redis_client

    parser = argparse.ArgumentParser(prog="python -m shared.sites", description="WordPress sites.")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="add or change a site")
    reg.add_argument("--site", required=True)
    reg.add_argument("--tenant", required=True)
    reg.add_argument("--publish", action="store_true", help="jobs from this site's webhooks may publish")
    reg.add_argument("--base-url", help="the site's root URL, e.g. https://blog.example")
    reg.add_argument("--credentials-secret", help="Secrets Manager name of its Application Password JSON")
    sub.add_parser("list", help="every site, one JSON line each")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    registry = SiteRegistry(redis_client(settings), settings.namespace)
    if args.command == "register":
        site = Site(
            site=args.site,
            tenant=args.tenant,
            publish_allowed=args.publish,
            base_url=args.base_url,
            credentials_secret=args.credentials_secret,
        )
        registry.register(site)
        print(f"site {args.site} belongs to {args.tenant}")
    else:
        for site in registry.all():
            print(json.dumps(asdict(site)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
