"""The MongoDB client (Atlas in production, nx-27017 locally), through pymongo."""

from __future__ import annotations

import threading
import time

from pymongo import MongoClient
from pymongo.database import Database

from shared.settings import get_settings

_lock = threading.Lock()
_clients: dict[int, MongoClient] = {}


def client(socket_timeout_ms: int | None = None) -> MongoClient:
    """The process's MongoClient, created on first use with the configured timeouts.

    Requests use ``DEPENDENCY_TIMEOUT_MS`` for every wait; batch work (the ETL's long sorted
    reads) asks for a client whose socket waits ``socket_timeout_ms`` instead.
    """
    settings = get_settings()
    timeout = settings.dependency_timeout_ms
    socket_timeout = socket_timeout_ms or timeout
    with _lock:
        if socket_timeout not in _clients:
            _clients[socket_timeout] = MongoClient(
                settings.require("mongodb_uri"),
                tz_aware=True,
                serverSelectionTimeoutMS=timeout,
                connectTimeoutMS=timeout,
                socketTimeoutMS=socket_timeout,
                appname="salespredict",
            )
        return _clients[socket_timeout]


def database(socket_timeout_ms: int | None = None) -> Database:
    """The app's database (``MONGODB_DATABASE``)."""
    return client(socket_timeout_ms)[get_settings().mongodb_database]


def ping() -> float:
    """Round-trip a ``ping`` command; returns the latency in milliseconds."""
    start = time.perf_counter()
    client().admin.command("ping")
    return (time.perf_counter() - start) * 1000


def reset() -> None:
    with _lock:
        for each in _clients.values():
            each.close()
        _clients.clear()
