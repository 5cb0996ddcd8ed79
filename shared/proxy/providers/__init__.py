"""Upstream LLM APIs, one small module each behind the :class:`~.base.Provider` interface."""

from .anthropic import AnthropicProvider
from .base import Provider, Wire
from .groq import GroqProvider
from .openai import OpenAIProvider

__all__ = ["AnthropicProvider", "GroqProvider", "OpenAIProvider", "Provider", "Wire"]
