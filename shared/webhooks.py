"""Inbound webhooks signed the Standard Webhooks way (HMAC-SHA256, ``v1`` signatures).

A sender signs ``<webhook-id>.<webhook-timestamp>.<raw body>`` with a shared secret and sends
``webhook-signature: v1,<base64> [v1,<base64> ...]``. Several signatures let a sender roll its key
without downtime; several *secrets* on our side let us roll ours (the previous one is still
accepted). A valid signature proves the sender; the timestamp tolerance bounds how long a captured
request stays usable, and :class:`ReplayGuard` refuses it a second time within that window.

Secrets never appear in exceptions, logs or reprs: errors carry only a machine-readable reason.
Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, get_args

import redis
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from shared.config import Settings

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "ReplayGuard",
    "SecretsUnavailableError",
    "WebhookSecrets",
    "WebhookVerificationError",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

#: The reference libraries' tolerance: 5 minutes either way.
DEFAULT_TOLERANCE_S = 300

Reason = Literal[
    "missing_headers", "bad_timestamp", "timestamp_too_old", "timestamp_too_new", "bad_signature", "no_secret"
]
REASONS: frozenset[str] = frozenset(get_args(Reason))

_SECRET_PREFIX = "whsec_"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


class WebhookVerificationError(Exception):
    """The request is not an authentic, fresh webhook. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


def _key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (the prefix is optional, base64 padding may be missing).

    Raises ValueError (without the secret in it) for a value that is not base64: that is a
    configuration error, to be seen by an operator rather than passed off as a bad request.
    """
    text = secret.strip().removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = b"%s.%s.%s" % (msg_id.encode("utf-8"), timestamp.encode("ascii"), body)
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value (``v1,<base64>``) for one message."""
    if "." in msg_id:
        raise ValueError("a webhook id must not contain '.' (it would make the signed content ambiguous)")
    digest = _digest(_key(secret), msg_id, str(int(timestamp)), body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def _candidates(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a header; other versions and undecodable entries are skipped."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Return when ``body`` with ``headers`` is a fresh webhook signed with one of ``secrets``.

    ``body`` must be the raw bytes as received: re-serialised JSON no longer matches. Header names
    are matched case-insensitively. Raises :class:`WebhookVerificationError`.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    timestamp = lowered.get("webhook-timestamp", "").strip()
    signature = lowered.get("webhook-signature", "")
    if not (msg_id and timestamp and signature):
        raise WebhookVerificationError("missing_headers")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookVerificationError("bad_timestamp")
    sent_at = int(timestamp)
    if sent_at < now - tolerance_s:
        raise WebhookVerificationError("timestamp_too_old")
    if sent_at > now + tolerance_s:
        raise WebhookVerificationError("timestamp_too_new")
    if not secrets:
        raise WebhookVerificationError("no_secret")
    candidates = _candidates(signature)
    matched = False
    for secret in secrets:
        expected = _digest(_key(secret), msg_id, timestamp, body)
        for candidate in candidates:
            # No early exit: the time taken does not tell which secret or entry matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("bad_signature")


class ReplayGuard:
    """Remembers webhook ids so an authentic message is accepted only once.

    One ``SET key 1 NX EX ttl`` per message. ``ttl_s`` must outlast the timestamp tolerance
    (default: twice the default tolerance): after the id is forgotten, the timestamp check
    rejects the message anyway.

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      ttl_s(int): How long an id is remembered.
    """

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int = 2 * DEFAULT_TOLERANCE_S) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s

    def key(self, msg_id: str, scope: str = "") -> str:
        return f"{self.namespace}.webhook-seen.{scope}.{msg_id}"

    def first_seen(self, msg_id: str, scope: str = "") -> bool:
        """True the first time ``msg_id`` is seen within ``scope`` (a site: ids are per sender)."""
        return bool(self.client.set(self.key(msg_id, scope), 1, nx=True, ex=self.ttl_s))

    def forget(self, msg_id: str, scope: str = "") -> None:
        """Forget ``msg_id``, so the sender's retry gets in when handling the first delivery failed."""
        self.client.delete(self.key(msg_id, scope))


class SecretsUnavailableError(Exception):
    """Secrets Manager could not be read and no earlier value is cached (answer 503, not 401)."""


#: Secrets Manager's rule for names, narrowed: a site name becomes part of one.
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DEFAULT = object()


class WebhookSecrets:
    """Each WordPress site's webhook secrets, from Secrets Manager, cached for ``ttl_s`` seconds.

    A site's own secret is named by ``name_pattern`` (``{site}`` replaced). A site without one
    falls back to ``override`` (``HMAC_WEBHOOK_SECRET``, for local use) or else to the secret named
    ``default_name``. Both the ``AWSCURRENT`` and the ``AWSPREVIOUS`` version are returned, current
    first, so a rotation does not reject messages signed a moment before it.

    Thread-safe. Cache misses are fetched one at a time, so a burst of requests after expiry costs
    one Secrets Manager call, not one each. When Secrets Manager fails, the last known value is kept.

    Parameters:
      client(BaseClient): A ``secretsmanager`` client (see :func:`shared.aws.aws_client`).
      name_pattern(str): e.g. ``pressline/sites/{site}/webhook``.
      default_name(str | None): The secret for sites without their own.
      override(str | None): A literal secret used instead of ``default_name``.
      ttl_s(float): How long a fetched value is reused.
      max_sites(int): Cache size bound (unknown site names are cached too, as misses).
      clock: A monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        client: BaseClient,
        *,
        name_pattern: str,
        default_name: str | None = None,
        override: str | None = None,
        ttl_s: float = 60.0,
        max_sites: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if "{site}" not in name_pattern:
            raise ValueError("name_pattern must contain {site}")
        self.client = client
        self.name_pattern = name_pattern
        self.default_name = default_name
        self._override = override
        self.ttl_s = ttl_s
        self.max_sites = max_sites
        self._clock = clock
        self._cache: OrderedDict[object, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, client: BaseClient) -> WebhookSecrets:
        return cls(
            client,
            name_pattern=settings.webhook_site_secret_pattern,
            default_name=settings.webhook_secret_name,
            override=settings.hmac_webhook_secret,
            ttl_s=settings.webhook_secret_cache_ttl_s,
        )

    def __repr__(self) -> str:
        return f"WebhookSecrets(name_pattern={self.name_pattern!r}, default_name={self.default_name!r})"

    def for_site(self, site: str) -> tuple[str, ...]:
        """The secrets to try for ``site``: its own, else the default; empty when there are none."""
        if not _SITE.fullmatch(site):
            return ()
        own = self._cached(site, lambda: self._fetch(self.name_pattern.replace("{site}", site)))
        if own:
            return own
        if self._override:
            return (self._override,)
        if self.default_name is None:
            return ()
        name = self.default_name
        return self._cached(_DEFAULT, lambda: self._fetch(name))

    def invalidate(self, site: str | None = None) -> None:
        """Drop cached values (one site's, or all), e.g. right after rotating a secret."""
        with self._lock:
            if site is None:
                self._cache.clear()
            else:
                self._cache.pop(site, None)

    def _lookup(self, key: object) -> tuple[float, tuple[str, ...]] | None:
        with self._lock:
            return self._cache.get(key)

    def _store(self, key: object, value: tuple[str, ...]) -> None:
        with self._lock:
            self._cache[key] = (self._clock() + self.ttl_s, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_sites:
                self._cache.popitem(last=False)

    def _cached(self, key: object, fetch: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        entry = self._lookup(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        with self._fetch_lock:
            entry = self._lookup(key)  # another thread may have fetched it meanwhile
            if entry is not None and entry[0] > self._clock():
                return entry[1]
            try:
                value = fetch()
            except SecretsUnavailableError:
                if entry is None:
                    raise
                log.warning("webhook secret fetch failed; keeping the cached value")
                value = entry[1]
            self._store(key, value)
            return value

    def _version(self, name: str, stage: str) -> str | None:
        try:
            response = self.client.get_secret_value(SecretId=name, VersionStage=stage)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code == "ResourceNotFoundException":
                return None
            raise SecretsUnavailableError(f"secret {name}: {code}") from None
        except BotoCoreError as error:
            raise SecretsUnavailableError(f"secret {name}: {type(error).__name__}") from None
        value = response.get("SecretString")
        return value.strip() if isinstance(value, str) and value.strip() else None

    def _fetch(self, name: str) -> tuple[str, ...]:
        current = self._version(name, "AWSCURRENT")
        if current is None:
            return ()
        previous = self._version(name, "AWSPREVIOUS")
        return (current,) if previous is None or previous == current else (current, previous)
