"""Dramatiq on Redis Streams: the broker, its consumer and the operator's view of queues."""

from .admin import DeadLetter, QueueAdmin, QueueStats
from .broker import RedisStreamsBroker
from .consumer import StreamConsumer, StreamMessageProxy

__all__ = [
    "DeadLetter",
    "QueueAdmin",
    "QueueStats",
    "RedisStreamsBroker",
    "StreamConsumer",
    "StreamMessageProxy",
]
