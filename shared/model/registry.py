"""The model registry in PostgreSQL: every trained version with its card and artifact, and the
activations that say which one serves.

An artifact is the joblib dump of a ``Model``; it is loaded only after its SHA-256 matches the
one recorded when it was stored. The active version is the top of a stack: ``activate`` pushes
a version, ``rollback`` pops the top and serves the one below again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import joblib
import numpy as np
import psycopg2
from psycopg2.extensions import connection as Connection

from shared.errors import ArtifactTampered, Conflict, NotFound, NothingToRollBack
from shared.model.features import DEFAULT_SPEC
from shared.model.predictor import Model
from shared.model.training import Trained, fit_prior
from shared.stores import postgres

log = logging.getLogger(__name__)

# Columns of the card: everything but the artifact
CARD_COLUMNS = (
    "version", "created_at", "kind", "is_prior", "spec_version", "feature_spec", "data_from",
    "data_to", "n_won", "n_lost", "metrics", "calibration", "importance", "candidates", "decision",
    "sha256",
)  # fmt: skip
REFRESH_SECONDS = 5.0
LOCK_KEY = 0x5A1E_5002  # pg_advisory_xact_lock key of registry changes


@dataclass(frozen=True)
class Served:
    """The model that answers, with its registry version (0: the empty prior, no registry)."""

    version: int
    model: Model
    card: dict[str, Any]

    @property
    def key(self) -> str:
        """Version and artifact hash: unique even across registries sharing one Redis."""
        return f"{self.version}-{self.card.get('sha256', 'none')[:16]}"


def _dump(model: Model) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=3)
    return buffer.getvalue()


def save(
    conn: Connection,
    trained: Trained,
    window: tuple[datetime | None, datetime | None],
    counts: tuple[int, int],
    decision: str,
) -> int:
    """Store a trained model; returns its version."""
    artifact = _dump(trained.model)
    spec = trained.model.spec
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO model_version (kind, is_prior, spec_version, feature_spec, data_from,
                   data_to, n_won, n_lost, metrics, calibration, importance, candidates,
                   decision, artifact, sha256)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               RETURNING version""",
            (
                trained.model.kind, trained.model.is_prior, spec.version,
                json.dumps(spec.as_json()), *window, *counts,
                json.dumps(trained.evaluation.metrics, allow_nan=False),
                json.dumps(trained.evaluation.calibration),
                json.dumps(trained.importance), json.dumps(trained.candidates), decision,
                psycopg2.Binary(artifact), hashlib.sha256(artifact).hexdigest(),
            ),
        )  # fmt: skip
        return int(cur.fetchone()[0])


def _stack(conn: Connection) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT version, action FROM model_activation ORDER BY activation_id")
        stack: list[int] = []
        for version, action in cur.fetchall():
            if action == "rollback":
                stack.pop()
            else:
                stack.append(int(version))
        return stack


def active_version(conn: Connection) -> int | None:
    stack = _stack(conn)
    return stack[-1] if stack else None


def load(conn: Connection, version: int) -> Model:
    """The model of ``version``, after its artifact's SHA-256 is checked."""
    with conn.cursor() as cur:
        cur.execute("SELECT artifact, sha256 FROM model_version WHERE version = %s", (version,))
        found = cur.fetchone()
    if found is None:
        raise NotFound(f"There is no model version {version}; `salespredict models list`.")
    artifact, recorded = bytes(found[0]), found[1]
    if hashlib.sha256(artifact).hexdigest() != recorded:
        raise ArtifactTampered(
            f"Model version {version}'s artifact does not match its SHA-256; it was changed after "
            "it was stored and will not be loaded. Activate another version or train a new one."
        )
    model = joblib.load(io.BytesIO(artifact))
    if not isinstance(model, Model):
        raise ArtifactTampered(f"Model version {version}'s artifact is not a model.")
    return model


def push(conn: Connection, version: int, action: str, reason: str) -> None:
    """Record an activation (``activate``) or a rollback to ``version`` (``rollback``)."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO model_activation (version, action, reason) VALUES (%s, %s, %s)",
            (version, action, reason),
        )


def serialise(conn: Connection) -> None:
    """Hold the registry's lock until ``conn``'s transaction ends: activations, rollbacks and
    the activation step of training happen one at a time."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))


def activate(version: int, reason: str = "activated by hand") -> None:
    """Make ``version`` the active model (its artifact is checked first)."""
    with postgres.connection() as conn:
        serialise(conn)
        if active_version(conn) == version:
            raise Conflict(f"Model version {version} is already active.")
        load(conn, version)
        push(conn, version, "activate", reason)
    forget()


def rollback(reason: str = "rolled back by hand") -> int:
    """Deactivate the active model and serve the one active before it; returns that version."""
    with postgres.connection() as conn:
        serialise(conn)
        stack = _stack(conn)
        if len(stack) < 2:
            raise NothingToRollBack("There is no earlier active model to roll back to.")
        previous = stack[-2]
        load(conn, previous)
        push(conn, previous, "rollback", reason)
    forget()
    return previous


def cards(conn: Connection) -> list[dict[str, Any]]:
    """Every version's card, newest first, with whether it is active."""
    active = active_version(conn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(CARD_COLUMNS)} FROM model_version ORDER BY version DESC")
        rows = [dict(zip(CARD_COLUMNS, row, strict=True)) for row in cur.fetchall()]
    for row in rows:
        row["active"] = row["version"] == active
    return rows


def card(conn: Connection, version: int) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {', '.join(CARD_COLUMNS)} FROM model_version WHERE version = %s", (version,)
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"There is no model version {version}.")
    return dict(zip(CARD_COLUMNS, row, strict=True))


# ---------------------------------------------------------------------- the served model


def empty_prior() -> Served:
    """What answers before any model is trained: the prior of an empty history (0.5)."""
    model = fit_prior(DEFAULT_SPEC, [], np.empty(0, dtype=int))
    return Served(0, model, {"version": 0, "kind": model.kind, "is_prior": True,
                             "decision": "no model trained yet"})  # fmt: skip


@dataclass(frozen=True)
class _Lookup:
    """The last look-up of the active model: from which pool, when, and what it found."""

    pool: object = None
    checked_at: float = -math.inf
    served: Served | None = None
    error: Exception | None = None


_lock = threading.Lock()
_last = _Lookup()


def served() -> Served:
    """The active model, looked up at most every ``REFRESH_SECONDS`` and loaded once a version.

    Before the first ETL run has created the registry, or when no version is active, the prior
    of an empty history answers. While a model is loaded, one thread looks the active version up
    again and the others keep answering with it; if PostgreSQL cannot be reached, the loaded
    model keeps serving. With none loaded, the error (503) is remembered for the same interval,
    so an outage answers at once instead of queueing on timeouts.
    """
    pool = postgres.pool()  # new settings, new pool: a new look-up
    found = _recent(pool)
    if found is not None:
        return found
    loaded = _last.served if _last.pool is pool else None
    if not _lock.acquire(blocking=loaded is None):
        return loaded  # type: ignore[return-value]  # another thread is looking it up
    try:
        return _recent(pool) or _refresh(pool)  # another thread may have done it meanwhile
    finally:
        _lock.release()


def _recent(pool: object) -> Served | None:
    """The last look-up's answer if it is recent and from ``pool`` (its error is raised)."""
    last = _last
    if last.pool is not pool or time.monotonic() - last.checked_at >= REFRESH_SECONDS:
        return None
    if last.error is not None:
        raise last.error.with_traceback(None)
    return last.served


def _refresh(pool: object) -> Served:
    global _last
    current = _last.served if _last.pool is pool else None
    try:
        found = _lookup(current)
    except psycopg2.Error as exc:
        if current is None:
            _last = _Lookup(pool, time.monotonic(), None, exc)
            raise
        log.warning("Model look-up failed (%s); version %s keeps serving", exc, current.version)
        found = current
    except Exception as exc:  # a tampered or unreadable artifact: never serve a stale model
        _last = _Lookup(pool, time.monotonic(), None, exc)
        raise
    _last = _Lookup(pool, time.monotonic(), found)
    return found


def _lookup(current: Served | None) -> Served:
    with postgres.connection() as conn:
        try:
            version = active_version(conn)
        except psycopg2.errors.UndefinedTable:
            return empty_prior()  # the ETL has not created the registry yet
        if version is None:
            return empty_prior()
        if current is not None and current.version == version:
            return current
        return Served(version, load(conn, version), card(conn, version))


def forget() -> None:
    """Look the active version up again on the next prediction (the loaded model stays until
    the look-up succeeds)."""
    global _last
    with _lock:
        _last = dataclasses.replace(_last, checked_at=-math.inf, error=None)
