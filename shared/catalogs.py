"""Catalogs of allowed codes for the categorical opportunity fields, kept in MongoDB.

The first start seeds every code found in the prototype's data (``catalogs.json``); codes are
added later without a deploy (``salespredict catalog add FIELD CODE``). Each process keeps a copy
for ``CACHE_SECONDS`` so that validating a capture does not cost a round trip.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pymongo.database import Database

DEFAULTS_FILE = Path(__file__).with_name("catalogs.json")
COLLECTION = "catalogs"
CACHE_SECONDS = 30.0

Catalogs = dict[str, frozenset[str]]


def default_catalogs() -> dict[str, list[str]]:
    """The codes every new database starts with, by field name."""
    data: dict[str, list[str]] = json.loads(DEFAULTS_FILE.read_text(encoding="utf-8"))
    return data


FIELDS: tuple[str, ...] = tuple(default_catalogs())


def seed(db: Database) -> None:
    """Create the catalogs that do not exist yet; existing ones (and additions) are kept."""
    now = datetime.now(UTC)
    for name, codes in default_catalogs().items():
        db[COLLECTION].update_one(
            {"_id": name}, {"$setOnInsert": {"codes": codes, "updated_at": now}}, upsert=True
        )


def add_codes(db: Database, name: str, codes: list[str]) -> list[str]:
    """Add ``codes`` to catalog ``name``; returns the catalog's codes afterwards."""
    if name not in FIELDS:
        raise KeyError(f"No catalog named {name!r}; catalogs: {', '.join(FIELDS)}.")
    db[COLLECTION].update_one(
        {"_id": name},
        {"$addToSet": {"codes": {"$each": codes}}, "$set": {"updated_at": datetime.now(UTC)}},
        upsert=True,
    )
    _cache.clear()
    return sorted(load(db)[name])


def load(db: Database) -> Catalogs:
    """Every catalog in ``db``, by field name."""
    return {doc["_id"]: frozenset(doc.get("codes", [])) for doc in db[COLLECTION].find()}


class _CatalogCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, str], tuple[float, Catalogs]] = {}

    def get(self, db: Database) -> Catalogs:
        key = (id(db.client), db.name)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry and now - entry[0] < CACHE_SECONDS:
                return entry[1]
        catalogs = load(db)
        with self._lock:
            self._entries[key] = (now, catalogs)
        return catalogs

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _CatalogCache()


def current(db: Database) -> Catalogs:
    """The catalogs of ``db``, at most ``CACHE_SECONDS`` old."""
    return _cache.get(db)
