"""Groq: an OpenAI-compatible API (it also reports usage in ``x_groq``)."""

from __future__ import annotations

from .openai import OpenAIProvider


class GroqProvider(OpenAIProvider):
    name = "groq"
