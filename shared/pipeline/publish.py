"""Publish: the article becomes a WordPress post, exactly one per job, whatever is retried.

The post's external reference is the job id, stable across retries, redeliveries and requeues, so
the client's idempotent upsert (look the reference up in post meta, then create or update) writes
the same post every time.  The status is ``publish`` only when both gates agree: the job's own
(its token had ``content:publish``, or its site's webhook asked and the site allowed it) and the
site's gate read *now* from the registry, so revoking a site's right to publish holds for jobs
already queued.  A credential that may not publish (a contributor's) is not a failure: the post
falls back to ``pending`` (then ``draft``) and the run records ``publish_refused``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import PermanentError
from shared.sites import Site
from shared.wordpress import AddressRefused, PermissionRefused, WordPressError

from .errors import RetryLater

log = logging.getLogger("pressline.pipeline.publish")

#: Tried in order when WordPress refuses to let the credential publish.
FALLBACK_STATUSES = ("pending", "draft")


class PostWriter(Protocol):
    """What publish needs of :class:`shared.wordpress.WordPressClient`."""

    def upsert_post(
        self,
        *,
        external_ref: str,
        title: str,
        content_html: str,
        status: str = "draft",
        trace_id: str | None = None,
        meta: dict[str, str] | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class Published:
    """Where the article went: the post, its status, and whether publishing was refused."""

    post_id: int
    link: str
    status: str
    requested_status: str
    publish_refused: bool = False


def check_site(site: Site | None, *, site_id: str, tenant: str) -> Site:
    """The job's site, which must exist and belong to the job's tenant."""
    if site is None:
        raise PermanentError(f"site {site_id!r} is not registered")
    if site.tenant != tenant:
        raise PermanentError(f"site {site_id!r} does not belong to this job's tenant")
    return site


def wanted_status(*, job_may_publish: Any, site: Site) -> str:
    """``publish`` only when the job's gate (exactly ``True``) and the site's gate both allow it."""
    return "publish" if job_may_publish is True and site.publish_allowed else "draft"


def publish_article(
    writer: PostWriter,
    article: dict[str, Any],
    *,
    job_id: str,
    status: str,
    trace_id: str | None,
) -> Published:
    """Upsert the job's post; PermanentError or RetryLater when WordPress says so (PermanentError
    too when the site's URL resolves to an address the egress policy refuses)."""

    def upsert(with_status: str) -> Any:
        return writer.upsert_post(
            external_ref=job_id,
            title=article["title"],
            content_html=article["html"],
            status=with_status,
            trace_id=trace_id,
        )

    try:
        try:
            ref = upsert(status)
            return Published(int(ref.id), str(ref.link), str(ref.status), status)
        except PermissionRefused:
            if status != "publish":
                raise
            log.warning("publish refused; falling back", extra={"job_id": job_id})
        for fallback in FALLBACK_STATUSES:
            try:
                ref = upsert(fallback)
            except PermissionRefused:
                continue
            return Published(int(ref.id), str(ref.link), str(ref.status), status, publish_refused=True)
        raise PermanentError("WordPress refused the site's credentials for any post status")
    except PermissionRefused as error:
        raise PermanentError(f"WordPress refused the site's credentials ({error.status})") from None
    except AddressRefused as error:  # nothing was sent; only a new URL or an allow-list entry helps
        raise PermanentError(f"the site's URL resolves to a refused address ({error.reason})") from None
    except WordPressError as error:
        if error.retryable:
            hint = error.retry_after_s
            raise RetryLater(f"WordPress is unavailable ({error.kind})", delay_s=hint) from None
        raise PermanentError(f"WordPress refused the post ({error.kind}, {error.status})") from None
