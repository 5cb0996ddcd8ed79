"""Canary routing: a model alias maps to weighted targets, chosen stickily, with fallbacks.

The policy is a JSON file (``PRESSLINE_ROUTING_POLICY``; default ``routing.json`` beside this
module), reloaded when it changes::

    {"routes": {"fast": {"targets": [{"provider": "openai", "model": "gpt-4o-mini", "weight": 95},
                                     {"provider": "groq", "model": "llama-3.1-8b-instant", "weight": 5}],
                         "sticky": "tenant"}},
     "timeouts": {"default": {"connect_s": 5, "first_token_s": 30, "idle_s": 30, "total_s": 300},
                  "anthropic": {"first_token_s": 60}, "openai/gpt-4o": {"total_s": 600}}}

A request names an alias, or ``provider/model`` for one target.  The choice hashes the sticky key
(the tenant, or the request's ``x-pressline-route-key``) with the alias, so the same key always
lands on the same target while the weights hold across keys; the other targets follow in order of
weight as fallbacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_POLICY = Path(__file__).with_name("routing.json")
PROVIDERS = ("openai", "anthropic", "groq")


class RoutingError(ValueError):
    """The model is not routable (unknown alias, or a malformed policy)."""


@dataclass(frozen=True)
class Timeouts:
    """Per attempt: connect, wait for the first token, longest gap between chunks, whole stream."""

    connect_s: float = 5.0
    first_token_s: float = 30.0
    idle_s: float = 30.0
    total_s: float = 300.0


@dataclass(frozen=True)
class Target:
    provider: str
    model: str
    weight: int = 1
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class Route:
    alias: str
    targets: tuple[Target, ...]
    sticky: str = "tenant"  # or "request"

    def order(self, sticky_key: str) -> list[Target]:
        """The chosen target first, then the fallbacks (heaviest first)."""
        total = sum(t.weight for t in self.targets)
        digest = hashlib.sha256(f"{self.alias}\0{sticky_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
        chosen = self.targets[-1]
        for target in self.targets:
            if point < target.weight:
                chosen = target
                break
            point -= target.weight
        rest = sorted((t for t in self.targets if t is not chosen), key=lambda t: -t.weight)
        return [chosen, *rest]


class Router:
    """Routes model aliases by a policy file, reloading it when the file changes.

    Parameters:
      path(Path): The policy file.
      check_interval_s(float): How often the file's modification time is looked at.
    """

    def __init__(self, path: Path = DEFAULT_POLICY, check_interval_s: float = 2.0) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._checked = 0.0
        self._routes: dict[str, Route] = {}
        self._timeouts: dict[str, Timeouts] = {}
        self._reload(force=True)

    def route(self, model: str) -> Route:
        self._reload()
        if model in self._routes:
            return self._routes[model]
        provider, _, name = model.partition("/")
        if provider in PROVIDERS and name:
            return Route(model, (Target(provider, name, 1, self._timeouts_for(provider, name)),))
        raise RoutingError(f"unknown model {model!r}")

    def aliases(self) -> list[str]:
        self._reload()
        return sorted(self._routes)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.check_interval_s:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError as e:
                if force:
                    raise RoutingError(f"routing policy {self.path} is unreadable: {e}") from None
                return  # keep the last good policy
            if mtime == self._mtime and not force:
                return
            try:
                routes, timeouts = _parse(json.loads(self.path.read_text()))
            except (ValueError, KeyError, TypeError) as e:
                if force:
                    raise RoutingError(f"routing policy {self.path} is malformed: {e}") from None
                return
            self._routes, self._timeouts, self._mtime = routes, timeouts, mtime

    def _timeouts_for(self, provider: str, model: str) -> Timeouts:
        return _timeouts_for(self._timeouts, provider, model)


def _timeouts_for(table: dict[str, Timeouts], provider: str, model: str) -> Timeouts:
    return table.get(f"{provider}/{model}") or table.get(provider) or table.get("default") or Timeouts()


def _parse(policy: dict[str, Any]) -> tuple[dict[str, Route], dict[str, Timeouts]]:
    base = Timeouts(**policy.get("timeouts", {}).get("default", {}))
    timeouts = {"default": base}
    for key, values in policy.get("timeouts", {}).items():
        if key != "default":
            timeouts[key] = replace(base, **values)
    routes: dict[str, Route] = {}
    for alias, spec in policy.get("routes", {}).items():
        targets = []
        for t in spec["targets"]:
            if t["provider"] not in PROVIDERS:
                raise ValueError(f"route {alias}: unknown provider {t['provider']!r}")
            weight = int(t.get("weight", 1))
            if weight < 0:
                raise ValueError(f"route {alias}: negative weight")
            timeout = _timeouts_for(timeouts, t["provider"], t["model"])
            targets.append(Target(t["provider"], t["model"], weight, timeout))
        if not targets or sum(t.weight for t in targets) <= 0:
            raise ValueError(f"route {alias} has no weighted target")
        sticky = spec.get("sticky", "tenant")
        if sticky not in ("tenant", "request"):
            raise ValueError(f"route {alias}: sticky must be tenant or request")
        routes[alias] = Route(alias, tuple(targets), sticky)
    return routes, timeouts
