"""Skip messages whose idempotency key is already done (the redelivery of a finished job)."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from shared.idempotency import IdempotencyStore
from shared.streams.consumer import must_redeliver

OPTION = "idempotency_key"


class Idempotency(Middleware):
    """Applies each message's effect at most once per ``options["idempotency_key"]``.

    Before a message runs, a done key skips it; after it succeeds, its key is recorded as done.
    Actors whose effect lives in Redis make it exactly-once with ``IdempotencyStore.apply_once``.

    Parameters:
      store(IdempotencyStore)
    """

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    @property
    def actor_options(self) -> set[str]:
        return {OPTION}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        key = message.options.get(OPTION)
        if key and self.store.is_done(key):
            raise SkipMessage(f"idempotency key {key!r} is already done")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        key = message.options.get(OPTION)
        if key and exception is None and not must_redeliver(message):  # a redelivery must run
            self.store.mark_done(key)
