"""The MongoDB client (Atlas in production, nx-27017 locally), through pymongo."""

from __future__ import annotations

import threading
import time

from pymongo import MongoClient
from pymongo.database import Database

from shared.settings import get_settings

_lock = threading.Lock()
_client: MongoClient | None = None


def client() -> MongoClient:
    """The process's MongoClient, created on first use with the configured timeouts."""
    global _client
    with _lock:
        if _client is None:
            settings = get_settings()
            timeout = settings.dependency_timeout_ms
            _client = MongoClient(
                settings.require("mongodb_uri"),
                tz_aware=True,
                serverSelectionTimeoutMS=timeout,
                connectTimeoutMS=timeout,
                socketTimeoutMS=timeout,
                appname="salespredict",
            )
        return _client


def database() -> Database:
    """The app's database (``MONGODB_DATABASE``)."""
    return client()[get_settings().mongodb_database]


def ping() -> float:
    """Round-trip a ``ping`` command; returns the latency in milliseconds."""
    start = time.perf_counter()
    client().admin.command("ping")
    return (time.perf_counter() - start) * 1000


def reset() -> None:
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
