"""Pressline's WordPress client: Application Password credentials, idempotent post upserts keyed by
an external reference, retries with backoff, a circuit breaker and a rate limit per site.

One concept per module: ``credentials`` (the secret), ``errors``, ``refs`` (PostRef, meta keys),
``backoff``, ``lock`` (one writer per reference), ``breaker``, ``metrics``, ``client``.
"""

from .client import WordPressClient
from .credentials import CredentialsError, SiteCredentials, load_credentials, store_credentials
from .errors import AddressRefused, PermissionRefused, SiteUnavailable, WordPressError
from .refs import REF_META, TRACE_META, PostRef

__all__ = [
    "REF_META",
    "TRACE_META",
    "AddressRefused",
    "CredentialsError",
    "PermissionRefused",
    "PostRef",
    "SiteCredentials",
    "SiteUnavailable",
    "WordPressClient",
    "WordPressError",
    "load_credentials",
    "store_credentials",
]
