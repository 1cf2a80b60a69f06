"""Reachability and latency of each server the app depends on."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.stores import cache, mongo, postgres

CHECKS: dict[str, Callable[[], float]] = {
    "mongodb": mongo.ping,
    "postgres": postgres.ping,
    "redis": cache.ping,
}


def _probe(check: Callable[[], float]) -> dict[str, Any]:
    try:
        return {"status": "up", "latency_ms": round(check(), 2)}
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}


def report() -> dict[str, Any]:
    """Probe every dependency at once; ``status`` is ``up`` only if all of them are."""
    with ThreadPoolExecutor(len(CHECKS)) as pool:
        results = dict(zip(CHECKS, pool.map(_probe, CHECKS.values()), strict=True))
    status = "up" if all(r["status"] == "up" for r in results.values()) else "down"
    return {"status": status, "dependencies": results}
