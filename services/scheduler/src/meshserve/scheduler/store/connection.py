"""The scheduler's Redis clients: one set of connection settings for all of them.

May import: redis only.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect(url: str, *, decode: bool, max_connections: int) -> aioredis.Redis:
    """A client on a blocking pool (a burst of commands waits for a connection instead of
    failing) that reconnects and retries a command when Redis restarts; `decode`: replies
    as text, else bytes."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=decode,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=15,
    )
    return aioredis.Redis(connection_pool=pool)
