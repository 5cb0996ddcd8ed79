"""Token usage, prices and exact cost, all in integer pico-dollars (10^-12 USD).

A price of $X per 1M tokens is X x 10^6 pico-dollars per token, so every token x price product
and every sum of them is an exact integer; dollars appear only for display, as exact Decimals.

Usage keeps its three kinds of input tokens apart — ``input_tokens`` (full price),
``cached_input_tokens`` (cache reads, cached price) and ``cache_write_tokens`` (Anthropic cache
creation) — so no token is billed twice.  The two wire shapes differ: OpenAI's (and Groq's)
``prompt_tokens`` INCLUDES ``prompt_tokens_details.cached_tokens``, so :meth:`Usage.from_openai`
subtracts them; Anthropic's ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
``cache_creation_input_tokens``, so :meth:`Usage.from_anthropic` takes them as they are.
Always normalise from the provider's own shape, not from a translated one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

PICO_PER_USD = 10**12
#: Prices are quoted per this many tokens; per token that is X * 10^6 pico-dollars.
PER_TOKENS = 10**6

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


class UnknownModel(LookupError):
    """No price for this provider/model (at this date): cost cannot be computed, so refuse."""


class PriceTableError(ValueError):
    """The price table is malformed, or a price is not a whole number of pico-dollars per token."""


def to_dollars(pico: int) -> Decimal:
    """Exact Decimal dollars of a pico-dollar amount."""
    return Decimal(pico).scaleb(-12)


def format_usd(pico: int) -> str:
    """Exact dollars for people: 31_800_000 -> "0.0000318", 5 * 10**12 -> "5", 0 -> "0"."""
    text = format(to_dollars(pico), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_usd(raw: str | Decimal | int) -> int:
    """Dollars ("5.00") to pico-dollars, refusing fractions of a pico-dollar or negative amounts."""
    try:
        value = Decimal(str(raw).strip().lstrip("$"))
    except InvalidOperation:
        raise ValueError(f"not a dollar amount: {raw!r}") from None
    pico = value.scaleb(12)
    if not value.is_finite() or pico != pico.to_integral_value() or pico < 0:
        raise ValueError(f"{raw!r} is not a non-negative whole number of pico-dollars")
    return int(pico)


def per_million_to_pico(raw: object, *, what: str = "price") -> int:
    """USD per 1M tokens -> pico-dollars per token; refuses what is not a whole pico-dollar."""
    if isinstance(raw, float):
        raise PriceTableError(f"{what}: write prices as strings, not floats ({raw!r})")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise PriceTableError(f"{what}: not a number: {raw!r}") from None
    pico = value * PICO_PER_USD / PER_TOKENS
    if not value.is_finite() or pico < 0 or pico != pico.to_integral_value():
        raise PriceTableError(f"{what}: ${raw}/1M is not a whole number of pico-dollars per token")
    return int(pico)


def _count(raw: Any, name: str) -> int:
    """A token count from a provider's usage dict: missing or null is 0, anything else must be an int."""
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"usage {name} must be an integer, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Usage:
    """Tokens one upstream attempt consumed; ``estimated`` when counted here, not reported upstream."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Usage.{name} must be a non-negative int, got {value!r}")

    @property
    def total_input_tokens(self) -> int:
        """All prompt tokens, whatever their price (OpenAI's ``prompt_tokens``)."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any]) -> Usage:
        """OpenAI/Groq usage (Chat Completions or Responses shape); cached tokens come out of prompt."""
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")), "prompt_tokens")
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = _count(details.get("cached_tokens"), "cached_tokens")
        if cached > prompt:
            raise ValueError(f"cached_tokens {cached} > prompt_tokens {prompt}")
        output = _count(usage.get("completion_tokens", usage.get("output_tokens")), "completion_tokens")
        return cls(input_tokens=prompt - cached, output_tokens=output, cached_input_tokens=cached)

    @classmethod
    def from_anthropic(cls, usage: Mapping[str, Any]) -> Usage:
        """Anthropic usage; cache reads and writes are already outside ``input_tokens``.

        In a stream, ``message_start`` carries the input counts and ``message_delta`` the
        cumulative ``output_tokens``: merge the dicts (later keys win) and call this once.
        """
        return cls(
            input_tokens=_count(usage.get("input_tokens"), "input_tokens"),
            output_tokens=_count(usage.get("output_tokens"), "output_tokens"),
            cached_input_tokens=_count(usage.get("cache_read_input_tokens"), "cache_read"),
            cache_write_tokens=_count(usage.get("cache_creation_input_tokens"), "cache_creation"),
        )

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI usage object for a client (cache writes count as ordinary prompt tokens there)."""
        return {
            "prompt_tokens": self.total_input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_input_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_input_tokens},
        }

    def to_anthropic(self) -> dict[str, int]:
        """The Anthropic usage object for a client."""
        return {
            "input_tokens": self.input_tokens,
            "cache_read_input_tokens": self.cached_input_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True)
class Price:
    """One model's prices in pico-dollars per token, valid from ``effective_from`` (UTC)."""

    provider: str
    model: str
    effective_from: date
    input: int
    output: int
    cached_input: int
    cache_write: int

    @property
    def version(self) -> str:
        """What the ledger records, so a cost can be recomputed after the table changes."""
        return self.effective_from.isoformat()

    def cost(self, usage: Usage) -> int:
        """Exact cost in pico-dollars; each token is billed once, at its own kind's price."""
        return (
            usage.input_tokens * self.input
            + usage.cached_input_tokens * self.cached_input
            + usage.cache_write_tokens * self.cache_write
            + usage.output_tokens * self.output
        )


def canonical_model(model: str) -> str:
    """Lower-case, no ``-latest`` or date suffix: ``claude-3-5-haiku-20241022`` -> ``claude-3-5-haiku``."""
    name = model.strip().lower()
    name = name.removesuffix("-latest")
    return _DATE_SUFFIX.sub("", name)


class PriceTable:
    """Versioned prices per (provider, model); load the packaged table or an operator's file."""

    def __init__(self, versions: Mapping[tuple[str, str], list[Price]], *, source: str = "") -> None:
        self._versions = {k: sorted(prices, key=lambda p: p.effective_from) for k, prices in versions.items()}
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The table at ``path`` (``Settings.price_table_path``), else the packaged ``prices.json``."""
        if path:
            text, source = Path(path).read_text(encoding="utf-8"), str(path)
        else:
            text = resources.files("shared.cost").joinpath("prices.json").read_text(encoding="utf-8")
            source = "shared/cost/prices.json"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PriceTableError(f"{source}: {error}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "") -> PriceTable:
        models = data.get("models")
        if not isinstance(models, Mapping):
            raise PriceTableError(f"{source}: want a 'models' object of provider -> model -> versions")
        versions: dict[tuple[str, str], list[Price]] = {}
        for provider, by_model in models.items():
            for model, rows in by_model.items():
                key = (provider.lower(), canonical_model(model))
                if key in versions:
                    raise PriceTableError(f"{source}: {provider}/{model} listed twice")
                versions[key] = [cls._price(key, row, source) for row in rows]
                dates = [p.effective_from for p in versions[key]]
                if not dates or len(set(dates)) != len(dates):
                    raise PriceTableError(f"{source}: {provider}/{model} needs versions with distinct dates")
        return cls(versions, source=source)

    @staticmethod
    def _price(key: tuple[str, str], row: Mapping[str, Any], source: str) -> Price:
        what = f"{source}: {key[0]}/{key[1]}"
        try:
            effective = date.fromisoformat(str(row["effective_from"]))
            full = per_million_to_pico(row["input"], what=f"{what} input")
            output = per_million_to_pico(row["output"], what=f"{what} output")
        except (KeyError, ValueError) as error:
            raise PriceTableError(f"{what}: {error}") from None
        cached = row.get("cached_input")
        write = row.get("cache_write")
        return Price(
            provider=key[0],
            model=key[1],
            effective_from=effective,
            input=full,
            output=output,
            cached_input=full if cached is None else per_million_to_pico(cached, what=f"{what} cached_input"),
            cache_write=full if write is None else per_million_to_pico(write, what=f"{what} cache_write"),
        )

    def models(self) -> list[tuple[str, str]]:
        return sorted(self._versions)

    def versions(self, provider: str, model: str) -> list[Price]:
        return list(self._versions.get((provider.lower(), canonical_model(model)), []))

    def price(self, provider: str, model: str, at: datetime | None = None) -> Price:
        """The price in force at ``at`` (default now; naive means UTC); raises UnknownModel."""
        prices = self._versions.get((provider.lower(), canonical_model(model)))
        if not prices:
            raise UnknownModel(f"no price for {provider}/{model} in {self.source or 'the price table'}")
        when = datetime.now(UTC) if at is None else at
        day = (when if when.tzinfo is None else when.astimezone(UTC)).date()
        valid = [p for p in prices if p.effective_from <= day]
        if not valid:
            raise UnknownModel(f"no price for {provider}/{model} before {prices[0].effective_from}")
        return valid[-1]
