"""A WordPress site's Application Password credentials, kept in Secrets Manager as one JSON secret.

The secret holds ``{"base_url", "username", "app_password"}``. The password never appears in a
repr, a log line or an error message: errors name the secret and what went wrong, nothing more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from .errors import WordPressError

__all__ = ["CredentialsError", "SiteCredentials", "load_credentials", "store_credentials"]


class CredentialsError(WordPressError):
    """A site's credentials are missing, malformed or cannot be read (``retryable`` tells which)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(
            message, kind="credentials", retryable=retryable, retry_after_s=5.0 if retryable else None
        )


@dataclass(frozen=True)
class SiteCredentials:
    """Where a site is and who Pressline is there.

    Parameters:
      base_url(str): The site's root, e.g. ``http://127.0.0.1:8088`` (REST: ``base_url + "/wp-json"``).
      username(str): The WordPress login the Application Password belongs to.
      app_password(str): The Application Password (spaces optional); never in reprs.
    """

    base_url: str
    username: str
    app_password: str = field(repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("base_url must not carry credentials")
        if not self.username or not self.app_password:
            raise ValueError("username and app_password are required")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    @property
    def rest_root(self) -> str:
        return self.base_url + "/wp-json"

    def to_json(self) -> str:
        return json.dumps(
            {"base_url": self.base_url, "username": self.username, "app_password": self.app_password}
        )

    @classmethod
    def from_json(cls, raw: str) -> SiteCredentials:
        try:
            data: Any = json.loads(raw)
            return cls(
                base_url=str(data["base_url"]),
                username=str(data["username"]),
                app_password=str(data["app_password"]),
            )
        except (ValueError, KeyError, TypeError):
            raise ValueError("not a credentials object {base_url, username, app_password}") from None


def load_credentials(secrets_client: Any, secret_id: str) -> SiteCredentials:
    """The credentials in secret ``secret_id``; :class:`CredentialsError` when absent or unreadable."""
    try:
        response = secrets_client.get_secret_value(SecretId=secret_id)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        missing = code == "ResourceNotFoundException"
        raise CredentialsError(f"secret {secret_id}: {code or 'error'}", retryable=not missing) from None
    except BotoCoreError as error:
        raise CredentialsError(f"secret {secret_id}: {type(error).__name__}", retryable=True) from None
    raw = response.get("SecretString")
    if not isinstance(raw, str):
        raise CredentialsError(f"secret {secret_id}: no string value", retryable=False)
    try:
        return SiteCredentials.from_json(raw)
    except ValueError as error:
        raise CredentialsError(f"secret {secret_id}: {error}", retryable=False) from None


def store_credentials(secrets_client: Any, secret_id: str, creds: SiteCredentials) -> None:
    """Create secret ``secret_id`` with ``creds``, or put them as its new current version."""
    value = creds.to_json()
    try:
        secrets_client.put_secret_value(SecretId=secret_id, SecretString=value)
        return
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    secrets_client.create_secret(Name=secret_id, SecretString=value)
