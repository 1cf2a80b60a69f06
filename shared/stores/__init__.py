"""The clients of the three servers, created once per process, lazily, with timeouts set."""

from shared.stores import cache, mongo, postgres


def reset() -> None:
    """Close every client so the next use builds a new one from the current settings."""
    for store in (mongo, postgres, cache):
        store.reset()
