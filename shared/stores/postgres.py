"""The PostgreSQL connection pool (reporting database), through psycopg2."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg2.extensions import connection as Connection
from psycopg2.pool import ThreadedConnectionPool

from shared.settings import get_settings

_lock = threading.Lock()
_pool: ThreadedConnectionPool | None = None


def pool() -> ThreadedConnectionPool:
    """The process's pool, created on first use; connections time out instead of hanging."""
    global _pool
    with _lock:
        if _pool is None:
            settings = get_settings()
            timeout_ms = settings.dependency_timeout_ms
            _pool = ThreadedConnectionPool(
                0,
                8,
                settings.require("postgres_dsn"),
                connect_timeout=max(1, timeout_ms // 1000),
                options=f"-c statement_timeout={timeout_ms * 30} -c timezone=UTC",
                application_name="salespredict",
            )
        return _pool


@contextmanager
def connection() -> Iterator[Connection]:
    """A pooled connection inside a transaction: committed on success, rolled back on error."""
    p = pool()
    conn = p.getconn()
    try:
        with conn:
            yield conn
    finally:
        p.putconn(conn, close=bool(conn.closed))


def ping() -> float:
    """Run ``SELECT 1``; returns the latency in milliseconds."""
    start = time.perf_counter()
    with connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
    return (time.perf_counter() - start) * 1000


def reset() -> None:
    global _pool
    with _lock:
        if _pool is not None:
            _pool.closeall()
        _pool = None
