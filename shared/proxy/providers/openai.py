"""OpenAI's Chat Completions API."""

from __future__ import annotations

from typing import Any

from .base import Provider, UpstreamRequest, Wire


class OpenAIProvider(Provider):
    name = "openai"
    wire: Wire = "openai"

    def request(self, body: dict[str, Any], api_key: str) -> UpstreamRequest:
        body = dict(body)
        if body.get("stream"):
            # Always ask for the usage chunk: cost is counted from the provider's own figures.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return UpstreamRequest(
            url=f"{self.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            body=body,
        )
