"""Reachability and latency of each server the app depends on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.stores import cache, mongo, postgres

log = logging.getLogger(__name__)

CHECKS: dict[str, Callable[[], float]] = {
    "mongodb": mongo.ping,
    "postgres": postgres.ping,
    "redis": cache.ping,
}


def _probe(name: str, check: Callable[[], float]) -> dict[str, Any]:
    try:
        return {"status": "up", "latency_ms": round(check(), 2)}
    except Exception as exc:  # the details (host names, addresses) go to the log, not the caller
        log.warning("Health check of %s failed: %s", name, exc)
        return {"status": "down", "error": type(exc).__name__}


def report() -> dict[str, Any]:
    """Probe every dependency at once; ``status`` is ``up`` only if all of them are."""
    with ThreadPoolExecutor(len(CHECKS)) as pool:
        results = dict(zip(CHECKS, pool.map(_probe, CHECKS, CHECKS.values()), strict=True))
    status = "up" if all(r["status"] == "up" for r in results.values()) else "down"
    return {"status": status, "dependencies": results}
