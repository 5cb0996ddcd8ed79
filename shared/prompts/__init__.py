"""The versioned prompt library (store, and how a proxy request uses a prompt)."""

from .render import render
from .store import Prompt, PromptError, PromptStore, PromptVersion

__all__ = ["Prompt", "PromptError", "PromptStore", "PromptVersion", "render"]
