"""Provider API keys from Secrets Manager, cached in the process. They never leave it."""

from __future__ import annotations

import threading
import time
from typing import Any


class ProviderKeyError(Exception):
    """A provider's key could not be read (the message never contains the key)."""


class ProviderKeys:
    """Reads ``<prefix><provider>`` from Secrets Manager and keeps it for ``ttl_s``.

    Parameters:
      client: A boto3 Secrets Manager client.
      prefix(str): Secret name prefix, e.g. ``pressline/providers/``.
      ttl_s(float): How long a key is kept before it is read again (rotation).
    """

    def __init__(self, client: Any, prefix: str, ttl_s: float = 300.0) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, provider: str) -> str:
        now = time.monotonic()
        cached = self._cache.get(provider)
        if cached and now - cached[0] < self.ttl_s:
            return cached[1]
        with self._lock:
            try:
                value = self.client.get_secret_value(SecretId=f"{self.prefix}{provider}")["SecretString"]
            except Exception as e:
                if cached:
                    return cached[1]  # keep working on the last good key during an outage
                raise ProviderKeyError(
                    f"the {provider} API key is unavailable ({type(e).__name__})"
                ) from None
            self._cache[provider] = (now, str(value))
            return str(value)
