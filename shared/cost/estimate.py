"""Token counts when the provider never reported usage (a stream cut before its usage chunk).

What works offline (checked on this machine, no internet): ``tiktoken`` does NOT — it downloads
its BPE files (``o200k_base.tiktoken``) on first use and fails with a connection error.
``bpe-openai`` (MIT, a Rust tokenizer, ~75 MB wheel) bundles ``o200k_base``/``cl100k_base`` and
works offline for the OpenAI models; it is used when installed and the model is one it knows.
Claude's and Llama 3's (Groq) tokenizers are not available offline.

Otherwise the documented estimate: ``ceil(UTF-8 bytes / 4)`` per text — about 4 characters per
token for English, and it errs high rather than low for non-Latin scripts, whose characters
take 2-4 bytes — plus :data:`MESSAGE_OVERHEAD_TOKENS` per chat message and
:data:`REPLY_PRIMING_TOKENS` for the reply (OpenAI's documented chat-format overhead).  Either
way the result is marked ``estimated=True``: it was counted here, not reported upstream.  Both
paths are linear and cheap, so recounting a cut stream cannot stall the proxy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from shared.cost.prices import Usage, canonical_model

BYTES_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3


def estimate_tokens(text: str) -> int:
    """``ceil(UTF-8 bytes / 4)``: the fallback count of one text."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


def prompt_overhead(message_count: int) -> int:
    """Tokens the chat format adds around ``message_count`` messages and the reply."""
    return MESSAGE_OVERHEAD_TOKENS * max(message_count, 1) + REPLY_PRIMING_TOKENS


def max_input_tokens(prompt_text: str, message_count: int = 1) -> int:
    """An upper bound on a prompt's tokens: byte-level BPE tokens are at least one byte each.

    Used for budget holds, where guessing low could let a tenant pass its hard limit.
    """
    return len(prompt_text.encode("utf-8")) + prompt_overhead(message_count)


@lru_cache(maxsize=32)
def _tokenizer(model: str | None) -> Callable[[str], int] | None:
    """An offline tokenizer for ``model`` when ``bpe-openai`` is installed and knows it."""
    if not model:
        return None
    try:
        import bpe_openai
    except ImportError:
        return None
    try:
        encoding = bpe_openai.encoding_for_model(model)
    except Exception:  # an unknown model: fall back to the byte estimate
        return None
    return lambda text: len(encoding.encode_ordinary(text))


def count_tokens(text: str, model: str | None = None) -> int:
    """The model's own count when a tokenizer works offline, else :func:`estimate_tokens`."""
    counter = _tokenizer(model)
    return counter(text) if counter is not None else estimate_tokens(text)


def estimate_usage(
    prompt_messages_text: str, completion_text: str, *, message_count: int = 1, model: str | None = None
) -> Usage:
    """Usage of an attempt whose provider never said: all input at full price, ``estimated=True``.

    ``prompt_messages_text`` is every message's text (and tool definitions) joined;
    ``completion_text`` what was received before the cut (text and tool-call arguments).
    """
    name = canonical_model(model) if model else None
    input_tokens = count_tokens(prompt_messages_text, name) + prompt_overhead(message_count)
    output_tokens = count_tokens(completion_text, name) if completion_text else 0
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, estimated=True)
