"""Redis clients built one way for the whole project.

A blocking pool: when every connection is busy (hundreds of greenlets on one process), a caller
waits for a free one instead of failing with "Too many connections".
"""

from __future__ import annotations

import redis

from shared.config import Settings


def redis_client(settings: Settings) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        settings.broker_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
