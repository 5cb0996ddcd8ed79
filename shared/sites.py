"""The WordPress sites Pressline serves: which tenant owns a site, and the site's own publish gate.

python -m shared.sites register --site blog-1 --tenant acme [--publish]
    [--base-url http://blog.example] [--credentials-secret pressline/sites/blog-1/wordpress] [--move]
python -m shared.sites rotate-secret --site blog-1 [--grace-s 86400]
python -m shared.sites list

Every site has a webhook secret of its own (``PRESSLINE_WEBHOOK_SITE_SECRET_PATTERN`` in Secrets
Manager): ``register`` creates it and ``rotate-secret`` replaces it, each printing the new value
once, alone on stdout (everything else goes to stderr). A shared secret would let whoever holds it
start jobs for every tenant's sites, so none is accepted outside the single-tenant development mode.

A ``base_url`` must resolve to public addresses only, unless ``PRESSLINE_EGRESS_ALLOW`` names it
(shared.egress): Pressline sends the site's Application Password there. The WordPress client checks
again on every connection, so a name that later resolves elsewhere is refused then too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, cast

import redis

from shared.egress import EgressPolicy, EgressRefused

if TYPE_CHECKING:
    from shared.config import Settings

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
    """Sites in one Redis hash, ``<namespace>.sites``: site id -> JSON.

    Parameters:
      client(redis.Redis)
      namespace(str): Redis key prefix.
      egress(EgressPolicy | None): What a registered ``base_url`` may resolve to (default: public
        addresses only; ``EgressPolicy.from_settings`` for ``PRESSLINE_EGRESS_ALLOW``).
    """

    def __init__(self, client: redis.Redis, namespace: str, egress: EgressPolicy | None = None) -> None:
        self.client = client
        self.key = f"{namespace}.sites"
        self.egress = egress or EgressPolicy()

    def register(self, site: Site) -> None:
        """Add or replace ``site``; ValueError for a bad id, or a ``base_url`` that is malformed,
        does not resolve, or resolves to an address the egress policy refuses."""
        if not SITE_ID.match(site.site):
            raise ValueError(f"invalid site id {site.site!r}")
        if site.base_url is not None:
            if not re.match(r"^https?://[^/\s@]+(/\S*)?$", site.base_url):
                raise ValueError("base_url must be an http(s) URL without credentials")
            self._check_egress(site.base_url)
        self.client.hset(self.key, site.site, json.dumps(asdict(site)))

    def _check_egress(self, base_url: str) -> None:
        try:
            self.egress.check_url(base_url)
        except EgressRefused as error:
            raise ValueError(
                f"base_url resolves to a refused address: {error} "
                "(name it in PRESSLINE_EGRESS_ALLOW if this site is meant to be there)"
            ) from None
        except OSError as error:
            raise ValueError(f"base_url's host does not resolve ({error}); cannot check it") from None

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
    reg = sub.add_parser("register", help="add or change a site; a new site gets its webhook secret")
    reg.add_argument("--site", required=True)
    reg.add_argument("--tenant", required=True)
    reg.add_argument("--publish", action="store_true", help="jobs from this site's webhooks may publish")
    reg.add_argument("--base-url", help="the site's root URL, e.g. https://blog.example")
    reg.add_argument("--credentials-secret", help="Secrets Manager name of its Application Password JSON")
    reg.add_argument(
        "--move",
        action="store_true",
        help="give another tenant's site to --tenant (its webhook secret is replaced, without grace)",
    )
    rot = sub.add_parser("rotate-secret", help="replace a site's webhook secret; the old one keeps a grace")
    rot.add_argument("--site", required=True)
    rot.add_argument(
        "--grace-s",
        type=_seconds,
        help="how long the old secret is still accepted (default PRESSLINE_WEBHOOK_ROTATION_GRACE_S, "
        "24 h; 0: refused at once)",
    )
    sub.add_parser("list", help="every site, one JSON line each")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    registry = SiteRegistry(redis_client(settings), settings.namespace, EgressPolicy.from_settings(settings))
    if args.command == "register":
        site = Site(
            site=args.site,
            tenant=args.tenant,
            publish_allowed=args.publish,
            base_url=args.base_url,
            credentials_secret=args.credentials_secret,
        )
        return _register(settings, registry, site, move=args.move)
    if args.command == "rotate-secret":
        grace = settings.webhook_rotation_grace_s if args.grace_s is None else args.grace_s
        return _rotate(settings, registry, args.site, grace)
    for site in registry.all():
        print(json.dumps(asdict(site)))
    return 0


def _seconds(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _show_secret(value: str, what: str) -> None:
    """The one time a secret is shown: alone on stdout, so ``$(python -m shared.sites ...)`` takes it."""
    _say(f"{what}; it is shown only this once: give it to the site's sender.")
    print(value)


def _register(settings: Settings, registry: SiteRegistry, site: Site, *, move: bool) -> int:
    """Register (or change) ``site``, then make sure it has a webhook secret of its own.

    The registration comes first: should the secret not be created, the site refuses webhooks
    until ``rotate-secret`` makes one, rather than a secret existing that nobody was shown.
    """
    from shared.aws import aws_client
    from shared.webhooks import SiteSecretError, create_site_secret, rotate_site_secret

    existing = registry.get(site.site)
    if existing is not None and existing.tenant != site.tenant and not move:
        _say(
            f"error: site {site.site} belongs to tenant {existing.tenant}; --move gives it to "
            f"{site.tenant} and replaces its webhook secret at once (its sender must get the new one)"
        )
        return 2
    moving = existing is not None and existing.tenant != site.tenant
    name = settings.webhook_site_secret_pattern.replace("{site}", site.site)
    sm = aws_client("secretsmanager", settings)
    value: str | None = None
    if moving:  # replaced before the move: the previous tenant's sender never signs for the new one
        try:
            value = rotate_site_secret(sm, name, grace_s=0, now=time.time())[0]
        except SiteSecretError as error:
            _say(f"error: {error}; site {site.site} not moved")
            return 1
    try:
        registry.register(site)
    except ValueError as error:
        replaced = " (its webhook secret was replaced: run this again for a new one)" if moving else ""
        _say(f"error: site {site.site} not registered: {error}{replaced}")
        return 2
    _say(f"site {site.site} belongs to {site.tenant}")
    if not moving:
        try:
            value = create_site_secret(sm, name)
        except SiteSecretError as error:
            _say(f"error: {error}; site {site.site} refuses webhooks until it has a secret of its own")
            return 1
    if value is None:
        _say(f"webhook secret {name}: kept as it was (not shown; rotate-secret replaces it)")
        return 0
    _show_secret(value, f"webhook secret {name}: {'replaced' if moving else 'created'}")
    return 0


def _rotate(settings: Settings, registry: SiteRegistry, site_id: str, grace_s: int) -> int:
    """A new current secret for a registered site; the previous one is accepted ``grace_s`` longer."""
    from shared.aws import aws_client
    from shared.webhooks import SiteSecretError, rotate_site_secret

    if registry.get(site_id) is None:
        _say(f"error: no site {site_id!r} is registered")
        return 2
    name = settings.webhook_site_secret_pattern.replace("{site}", site_id)
    try:
        value, valid_until = rotate_site_secret(
            aws_client("secretsmanager", settings), name, grace_s=grace_s, now=time.time()
        )
    except SiteSecretError as error:
        _say(f"error: {error}")
        return 1
    if valid_until is None:
        _show_secret(value, f"webhook secret {name}: there was none; created")
        return 0
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(valid_until))
    _show_secret(
        value,
        f"webhook secret {name}: rotated; the previous one is accepted until {until} ({grace_s} s); "
        f"API processes take the new one within {settings.webhook_secret_cache_ttl_s:g} s (their cache)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
