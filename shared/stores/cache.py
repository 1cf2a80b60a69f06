"""The Redis client (prediction cache), through redis-py."""

from __future__ import annotations

import threading
import time

import redis

from shared.settings import get_settings

_lock = threading.Lock()
_client: redis.Redis | None = None


def client() -> redis.Redis:
    """The process's Redis client, created on first use with short timeouts (a slow cache is
    skipped, never waited for)."""
    global _client
    with _lock:
        if _client is None:
            settings = get_settings()
            timeout = settings.cache_timeout_ms / 1000
            _client = redis.Redis.from_url(
                settings.require("redis_url"),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
            )
        return _client


def ping() -> float:
    """Round-trip a PING; returns the latency in milliseconds."""
    start = time.perf_counter()
    client().ping()
    return (time.perf_counter() - start) * 1000


def reset() -> None:
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
