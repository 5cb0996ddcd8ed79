"""Inbound webhooks signed the Standard Webhooks way (HMAC-SHA256, ``v1`` signatures).

A sender signs ``<webhook-id>.<webhook-timestamp>.<raw body>`` with a shared secret and sends
``webhook-signature: v1,<base64> [v1,<base64> ...]``. Several signatures let a sender roll its key
without downtime; several *secrets* on our side let us roll ours (the previous one is still
accepted, for a grace period). Each site has a secret of its own: one secret for all sites would
let whoever holds it sign for every tenant. A valid signature proves the sender; the timestamp
tolerance bounds how long a captured request stays usable, and :class:`ReplayGuard` refuses it a
second time within that window.

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
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from secrets import token_bytes
from typing import Literal, get_args

import redis
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from shared.config import Settings

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "ReplayGuard",
    "SecretsUnavailableError",
    "SiteSecretError",
    "WebhookSecrets",
    "WebhookVerificationError",
    "check_headers",
    "create_site_secret",
    "new_secret",
    "rotate_site_secret",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

#: The reference libraries' tolerance: 5 minutes either way.
DEFAULT_TOLERANCE_S = 300

Reason = Literal[
    "missing_headers",
    "bad_timestamp",
    "timestamp_too_old",
    "timestamp_too_new",
    "bad_signature",
    "no_secret",
    "unknown_site",
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


def check_headers(
    headers: Mapping[str, str], *, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> tuple[str, str, str]:
    """``(webhook-id, webhook-timestamp, webhook-signature)`` when all three are present and the
    timestamp is well-formed and fresh; raises :class:`WebhookVerificationError` otherwise.

    Needs no secret, so a receiver runs it before looking a site or its secret up: a request that
    cannot verify costs nothing and tells nothing about the site it names.
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
    return msg_id, timestamp, signature


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
    msg_id, timestamp, signature = check_headers(headers, now=now, tolerance_s=tolerance_s)
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
_SHARED = object()

#: Tags :func:`rotate_site_secret` puts on a site's secret: until when (epoch seconds) the version
#: it rotated out (``AWSPREVIOUS``) is still accepted, and which rotation that is about (the ids of
#: the versions it made current and previous). Secrets Manager keeps no expiry for ``AWSPREVIOUS``.
PREVIOUS_VALID_UNTIL_TAG = "pressline:previous-valid-until"
ROTATED_TO_TAG = "pressline:rotated-to"
ROTATED_FROM_TAG = "pressline:rotated-from"


def new_secret() -> str:
    """A fresh Standard Webhooks signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return _SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode("ascii")


class SiteSecretError(Exception):
    """A site's webhook secret cannot be created or rotated. The message names the secret, never its value."""


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def create_site_secret(client: BaseClient, name: str) -> str | None:
    """Create secret ``name`` with a fresh value and return that value, or None when it exists.

    An existing secret is neither read nor replaced: re-registering a site keeps the secret its
    sender already holds (:func:`rotate_site_secret` replaces one on purpose).
    """
    value = new_secret()
    try:
        client.create_secret(
            Name=name, SecretString=value, Description="Pressline: a WordPress site's webhook signing secret"
        )
    except ClientError as error:
        code = _code(error)
        if code == "ResourceExistsException":
            return None
        if code == "InvalidRequestException":
            raise SiteSecretError(
                f"secret {name} is scheduled for deletion: restore it (secretsmanager restore-secret) "
                "and rotate it, or wait until it is gone"
            ) from None
        raise SiteSecretError(f"secret {name}: {code or 'error'}") from None
    except BotoCoreError as error:
        raise SiteSecretError(f"secret {name}: {type(error).__name__}") from None
    return value


def rotate_site_secret(
    client: BaseClient, name: str, *, grace_s: float, now: float
) -> tuple[str, int | None]:
    """Make a fresh value current; the one it replaces stays valid ``grace_s`` seconds from ``now``.

    Returns the new value and the epoch second the previous one stops being accepted (None when
    there was no secret yet: it is created). The tags are written before the value, so a reader
    never sees the new version without its grace; in between, a reader sees the rotation under way
    (the current version named as rotated from) and accepts no previous version at all.
    """
    if grace_s < 0:
        raise ValueError("grace_s must not be negative")
    created = create_site_secret(client, name)
    if created is not None:
        return created, None
    value = new_secret()
    version = str(uuid.uuid4())
    valid_until = int(now + grace_s)
    try:
        stages = client.describe_secret(SecretId=name).get("VersionIdsToStages") or {}
        current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), "")
        client.tag_resource(
            SecretId=name,
            Tags=[
                {"Key": ROTATED_TO_TAG, "Value": version},
                {"Key": ROTATED_FROM_TAG, "Value": current},
                {"Key": PREVIOUS_VALID_UNTIL_TAG, "Value": str(valid_until)},
            ],
        )
        client.put_secret_value(SecretId=name, SecretString=value, ClientRequestToken=version)
    except ClientError as error:
        raise SiteSecretError(f"secret {name}: {_code(error) or 'error'}") from None
    except BotoCoreError as error:
        raise SiteSecretError(f"secret {name}: {type(error).__name__}") from None
    return value, valid_until


@dataclass(frozen=True)
class _Version:
    value: str = field(repr=False)
    version_id: str
    created: float | None  # epoch seconds


@dataclass(frozen=True)
class _Versions:
    """One secret as fetched: its current value, and the previous one until ``previous_valid_until``."""

    current: str | None = field(default=None, repr=False)
    previous: str | None = field(default=None, repr=False)
    previous_valid_until: float = float("-inf")

    def usable(self, now: float) -> tuple[str, ...]:
        if self.current is None:
            return ()
        if self.previous is None or now >= self.previous_valid_until:
            return (self.current,)
        return (self.current, self.previous)


class WebhookSecrets:
    """Each WordPress site's webhook secrets, from Secrets Manager, cached for ``ttl_s`` seconds.

    A site's own secret is named by ``name_pattern`` (``{site}`` replaced). Its ``AWSCURRENT``
    version is returned first, then its ``AWSPREVIOUS`` one while that is within its grace: until
    the time :func:`rotate_site_secret` tagged the secret with, or, for a rotation made otherwise,
    ``default_grace_s`` after the current version was created. After that it is refused, even
    while cached; so it is while a rotation is half written, or when its tag cannot be read.

    A site without its own secret gets none (its webhooks are refused) unless a shared secret is
    given: ``override`` or else the secret named ``default_name``. That is for single-tenant
    development only (:meth:`from_settings` passes them only with
    ``PRESSLINE_WEBHOOK_SHARED_SECRET_DEV``): whoever holds a shared secret signs for every site.

    Thread-safe. Cache misses are fetched one at a time, so a burst of requests after expiry costs
    one Secrets Manager call, not one each; a site without a secret is cached too (as a miss). When
    Secrets Manager fails, the last known value is kept.

    Parameters:
      client(BaseClient): A ``secretsmanager`` client (see :func:`shared.aws.aws_client`).
      name_pattern(str): e.g. ``pressline/sites/{site}/webhook``.
      default_name(str | None): The shared secret (development only).
      override(str | None): A literal shared secret used instead of ``default_name``.
      ttl_s(float): How long a fetched value is reused.
      max_sites(int): Cache size bound.
      default_grace_s(float): How long a previous version is accepted when no rotation tag says.
      clock: A monotonic clock (the cache), replaceable in tests.
      wall_clock: Epoch seconds (the grace), replaceable in tests.
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
        default_grace_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if "{site}" not in name_pattern:
            raise ValueError("name_pattern must contain {site}")
        self.client = client
        self.name_pattern = name_pattern
        self.default_name = default_name
        self._override = override
        self.ttl_s = ttl_s
        self.max_sites = max_sites
        self.default_grace_s = default_grace_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: OrderedDict[object, tuple[float, _Versions]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, client: BaseClient) -> WebhookSecrets:
        shared = settings.webhook_shared_secret_dev
        if shared:
            log.warning(
                "PRESSLINE_WEBHOOK_SHARED_SECRET_DEV is on: sites without their own webhook secret "
                "accept the shared one (single-tenant development only)"
            )
        return cls(
            client,
            name_pattern=settings.webhook_site_secret_pattern,
            default_name=settings.webhook_secret_name if shared else None,
            override=settings.hmac_webhook_secret if shared else None,
            ttl_s=settings.webhook_secret_cache_ttl_s,
            default_grace_s=settings.webhook_rotation_grace_s,
        )

    def __repr__(self) -> str:
        return f"WebhookSecrets(name_pattern={self.name_pattern!r}, default_name={self.default_name!r})"

    def site_secret_name(self, site: str) -> str:
        return self.name_pattern.replace("{site}", site)

    def for_site(self, site: str) -> tuple[str, ...]:
        """The secrets to try for ``site``: its own; else the shared one, when given; else none."""
        if not _SITE.fullmatch(site):
            return ()
        now = self._wall_clock()
        name = self.site_secret_name(site)
        own = self._cached(site, lambda: self._fetch(name)).usable(now)
        if own:
            return own
        if self._override:
            return (self._override,)
        if self.default_name is None:
            return ()
        shared = self.default_name
        return self._cached(_SHARED, lambda: self._fetch(shared)).usable(now)

    def invalidate(self, site: str | None = None) -> None:
        """Drop cached values (one site's, or all), e.g. right after rotating a secret."""
        with self._lock:
            if site is None:
                self._cache.clear()
            else:
                self._cache.pop(site, None)

    def _lookup(self, key: object) -> tuple[float, _Versions] | None:
        with self._lock:
            return self._cache.get(key)

    def _store(self, key: object, value: _Versions) -> None:
        with self._lock:
            self._cache[key] = (self._clock() + self.ttl_s, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_sites:
                self._cache.popitem(last=False)

    def _cached(self, key: object, fetch: Callable[[], _Versions]) -> _Versions:
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

    def _version(self, name: str, stage: str) -> _Version | None:
        try:
            response = self.client.get_secret_value(SecretId=name, VersionStage=stage)
        except ClientError as error:
            code = _code(error)
            if code == "ResourceNotFoundException":
                return None
            raise SecretsUnavailableError(f"secret {name}: {code}") from None
        except BotoCoreError as error:
            raise SecretsUnavailableError(f"secret {name}: {type(error).__name__}") from None
        value = response.get("SecretString")
        if not isinstance(value, str) or not value.strip():
            return None
        created = response.get("CreatedDate")
        return _Version(
            value.strip(),
            str(response.get("VersionId", "")),
            created.timestamp() if isinstance(created, datetime) else None,
        )

    def _previous_valid_until(self, name: str, current: _Version) -> float:
        """Until when ``name``'s previous version is accepted; minus infinity when unknown."""
        try:
            tags = self.client.describe_secret(SecretId=name).get("Tags") or []
        except ClientError as error:
            code = _code(error)
            if code == "ResourceNotFoundException":
                return float("-inf")
            raise SecretsUnavailableError(f"secret {name}: {code}") from None
        except BotoCoreError as error:
            raise SecretsUnavailableError(f"secret {name}: {type(error).__name__}") from None
        found = {tag.get("Key"): tag.get("Value") for tag in tags}
        if current.version_id and found.get(ROTATED_TO_TAG) == current.version_id:
            try:
                return float(found[PREVIOUS_VALID_UNTIL_TAG])
            except (KeyError, TypeError, ValueError):
                log.warning(
                    "secret %s: unreadable %s tag; the previous version is refused",
                    name,
                    PREVIOUS_VALID_UNTIL_TAG,
                )
                return float("-inf")
        if current.version_id and found.get(ROTATED_FROM_TAG) == current.version_id:
            # A rotation is under way (tagged, its value not yet written): the previous version's
            # grace was in the tags just replaced, so for these few moments it is refused.
            return float("-inf")
        # Rotated outside Pressline: the previous version gets the default grace.
        if current.created is None:
            return float("-inf")
        return current.created + self.default_grace_s

    def _fetch(self, name: str) -> _Versions:
        current = self._version(name, "AWSCURRENT")
        if current is None:
            return _Versions()
        previous = self._version(name, "AWSPREVIOUS")
        if previous is None or previous.value == current.value:
            return _Versions(current.value)
        return _Versions(current.value, previous.value, self._previous_valid_until(name, current))
