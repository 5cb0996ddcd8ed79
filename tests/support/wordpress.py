"""The ``wordpress`` fixture: a real local WordPress of the session's own, on free ports in a tmp dir.

Bootstrapped once per session with ``infra.wordpress`` (Debian's packages are installed with
apt-get when missing), purged at the end, including its ``/etc/wordpress`` symlink. Its instance
name is derived from its tmp dir, so it never clashes with ``make run``'s instance.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest

from infra import wordpress as wp
from infra.redis_server import free_port
from shared.egress import AllowRule
from shared.wordpress import SiteCredentials


@dataclass
class WordPressFixture:
    """The session's WordPress: its URL, users, and the knobs tests turn.

    Parameters:
      site(wp.LocalWordPress): What ``up`` returned.
    """

    site: wp.LocalWordPress

    @property
    def config(self) -> wp.WordPressConfig:
        return self.site.config

    @property
    def base_url(self) -> str:
        return self.site.base_url

    @property
    def egress_allow(self) -> tuple[AllowRule, ...]:
        """What ``PRESSLINE_EGRESS_ALLOW`` must name for Pressline to reach this WordPress: it
        listens on loopback, which the egress policy refuses by default. Only its address and port."""
        return (AllowRule.parse(f"127.0.0.1:{self.config.port}"),)

    @property
    def admin(self) -> SiteCredentials:
        return self.site.admin

    @property
    def author(self) -> SiteCredentials:
        return self.site.author

    @property
    def contributor(self) -> SiteCredentials:
        return self.site.contributor

    def set_webhook(self, url: str | None, secret: str | None) -> None:
        """Point the mu-plugin's webhooks at ``url`` (None: off). PHP rereads the config per request."""
        self.site = replace(self.site, config=replace(self.config, webhook_url=url, webhook_secret=secret))
        wp.write_config(self.site.config)

    def posts(self, **params: Any) -> list[dict[str, Any]]:
        """What WordPress itself holds, asked as its administrator (bypassing Pressline's client)."""
        response = httpx.get(
            f"{self.base_url}/wp-json/wp/v2/posts",
            params={"status": "any", "context": "edit", "per_page": 100, **params},
            auth=(self.admin.username, self.admin.app_password),
            timeout=15,
        )
        response.raise_for_status()
        posts: list[dict[str, Any]] = response.json()
        return posts

    def ask_for_a_draft(self, title: str, content: str) -> int:
        """An author saves a pending post, which makes the mu-plugin ask Pressline for a draft."""
        asked = httpx.post(
            f"{self.base_url}/wp-json/wp/v2/posts",
            json={"title": title, "content": content, "status": "pending"},
            auth=(self.author.username, self.author.app_password),
            timeout=15,
        )
        assert asked.status_code == 201, asked.text
        return int(asked.json()["id"])

    def generated_drafts(self, title: str, asked_id: int) -> list[dict[str, Any]]:
        """The posts Pressline wrote for the pending post ``asked_id`` (they carry a job ref)."""
        return [
            p
            for p in self.posts(search=title)
            if p["meta"].get("pressline_external_ref") and p["id"] != asked_id
        ]

    @contextlib.contextmanager
    def hooked_site(self, settings: Any, client: Any, tenant: str, api: str) -> Iterator[str]:
        """A drafts-only site of ``tenant`` whose mu-plugin sends its signed webhooks to ``api``,
        as ``make run`` sets it up; the webhooks are off again afterwards."""
        site = f"wp-hook-{uuid.uuid4().hex[:6]}"
        wp.register_site(
            replace(settings, egress_allow=(*settings.egress_allow, *self.egress_allow)),
            client,
            site=site,
            tenant=tenant,
            publish=False,
            webhook_url=f"{api}/v1/webhooks/wordpress/{site}",
            config=self.config,
            say=lambda _: None,
        )
        try:
            yield site
        finally:
            self.set_webhook(None, None)

    def restart(self) -> None:
        """``down`` then ``up`` (Application Passwords are re-issued; the new ones are used)."""
        wp.down(self.config, say=lambda _: None)
        self.site = wp.up(self.config, say=lambda _: None)


@pytest.fixture(scope="session")
def wordpress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WordPressFixture]:
    """A running WordPress for the session (its own MariaDB and php -S on free ports)."""
    wp.ensure_packages()
    config = wp.WordPressConfig(
        root=tmp_path_factory.mktemp("wordpress"),
        port=free_port(),
        db_port=free_port(),
        workers=4,
        site="test",
    )
    try:
        yield WordPressFixture(wp.up(config, say=lambda _: None))
    finally:
        wp.purge(config, say=lambda _: None)
