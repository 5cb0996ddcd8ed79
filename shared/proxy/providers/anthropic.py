"""Anthropic's Messages API."""

from __future__ import annotations

from typing import Any

from .base import Provider, UpstreamRequest, Wire

API_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    name = "anthropic"
    wire: Wire = "anthropic"

    def request(self, body: dict[str, Any], api_key: str) -> UpstreamRequest:
        return UpstreamRequest(
            url=f"{self.base_url}/v1/messages",
            headers={
                "x-api-key": api_key,
                "anthropic-version": API_VERSION,
                "Content-Type": "application/json",
            },
            body=body,
        )
