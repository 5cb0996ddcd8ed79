"""The LLM proxy. ``sse`` and ``translate`` are pure wire-format code, so they are tested alone."""
