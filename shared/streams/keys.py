"""Redis key names for one queue, all under one hash tag so every script stays in one slot.

For namespace ``pressline`` and queue ``ingest``::

    {pressline:ingest}.stream    the queue: a stream read by the consumer group ``GROUP``
    {pressline:ingest}.delayed   delayed messages: a sorted set scored by ETA (ms since the epoch)
    {pressline:ingest}.dead      the dead-letter stream
    pressline.consumer.<name>    a live consumer's heartbeat (expires when the process dies)
    pressline.delayed-notify     pub/sub channel: "a delayed message was added"
"""

from __future__ import annotations

from dataclasses import dataclass

#: The consumer group every worker joins; one group per queue stream.
GROUP = "workers"


@dataclass(frozen=True)
class QueueKeys:
    """The Redis keys of one queue."""

    namespace: str
    queue_name: str

    @property
    def tag(self) -> str:
        return f"{{{self.namespace}:{self.queue_name}}}"

    @property
    def stream(self) -> str:
        return self.tag + ".stream"

    @property
    def delayed(self) -> str:
        return self.tag + ".delayed"

    @property
    def dead(self) -> str:
        return self.tag + ".dead"


def heartbeat_key(namespace: str, consumer_name: str) -> str:
    return f"{namespace}.consumer.{consumer_name}"


def notify_channel(namespace: str) -> str:
    return f"{namespace}.delayed-notify"
